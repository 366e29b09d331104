"""Markdown from the model, rendered on the server and sanitized before it reaches a page.

markdown-it-py renders with raw HTML disabled (so the model's own tags come out as text), and
nh3 then keeps only a small allow-list of tags, attributes and URL schemes as a second wall.
A table column's alignment comes out as a class, not a style="" attribute, which the
Content-Security-Policy would refuse.

Fenced code with a language Pygments knows is highlighted here, on the server, as spans with
Pygments' short token classes (``<span class="k">``); static/css/chat.css colours them with a
light and a dark palette. Classes, never Pygments' inline styles: the CSP refuses style="". The
sanitizer still runs over the result and keeps only those classes on spans.

A reply asked for as JSON (``chat.structured``) is not Markdown: ``render_reply_html`` shows a
valid one pretty-printed in a highlighted block (the page gives it a copy button, as it does
every code block) and an invalid one as its raw text, under a note saying what is wrong.
"""

import html
import json
import re
from functools import lru_cache

import nh3
from django.utils.translation import gettext as _
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

from .structured import reason_text

ALLOWED_TAGS = {
    "p", "br", "hr", "strong", "em", "s", "del", "code", "pre", "blockquote",
    "ul", "ol", "li", "a", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td", "span",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},  # language-xxx from fenced blocks, for the copy button's label
    "ol": {"start"},
}
ALIGNMENTS = {"left", "center", "right"}
# Only the classes _alignment_as_class sets; the model's text cannot add others (raw HTML is off).
ALLOWED_CLASSES = {cell: {f"align-{side}" for side in ALIGNMENTS} for cell in ("th", "td")}
# Every class Pygments' HTML formatter gives a token ("k" keyword, "s2" string…); a span can
# carry nothing else.
HIGHLIGHT_CLASSES = {name for name in STANDARD_TYPES.values() if name}
ALLOWED_CLASSES["span"] = HIGHLIGHT_CLASSES

# A language name as people write them (python, c++, objective-c, c#, shell-session); anything
# else, and names Pygments does not know, stay plain text.
LANGUAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+#.-]{0,39}")
# Longer blocks stay plain: highlighting is done on every page view, and a lexer's time grows
# with its input.
MAX_HIGHLIGHT_CHARS = 20_000
_FORMATTER = HtmlFormatter(nowrap=True)  # bare spans: markdown-it writes the <pre><code>


@lru_cache(maxsize=256)
def _lexer(language: str) -> Lexer | None:
    if not LANGUAGE.fullmatch(language):
        return None
    try:
        # stripnl/ensurenl off: the code comes out exactly as the model wrote it.
        return get_lexer_by_name(language.lower(), stripnl=False, ensurenl=False)
    except ClassNotFound:
        return None


def _highlight(code: str, language: str, _attrs: str) -> str:
    """Highlighted HTML for a fenced block, or "" to let markdown-it escape it as plain text."""
    lexer = _lexer(language) if language and len(code) <= MAX_HIGHLIGHT_CHARS else None
    if lexer is None:
        return ""
    return str(highlight(code, lexer, _FORMATTER))


def _alignment_as_class(state: StateCore) -> None:
    # markdown-it writes a column's alignment as style="text-align:…" on each cell.
    for token in state.tokens:
        if token.type in ("th_open", "td_open"):
            style = token.attrs.pop("style", None)
            side = str(style).removeprefix("text-align:") if style else ""
            if side in ALIGNMENTS:
                token.attrSet("class", f"align-{side}")


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    parser = MarkdownIt(
        "commonmark", {"html": False, "breaks": True, "highlight": _highlight}
    ).enable(["table", "strikethrough"])
    parser.core.ruler.push("alignment_as_class", _alignment_as_class)
    return parser


def render_markdown(text: str) -> str:
    """Safe HTML for a message's Markdown; never contains script, styles or event handlers."""
    html = _parser().render(text)
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        allowed_classes=ALLOWED_CLASSES,
    )


# What render_reply_html adds around a JSON reply: a note (the label, or why it is not valid).
_REPLY_CLASSES = {
    **ALLOWED_CLASSES,
    "p": {"msg-note", "msg-error"},
    "span": HIGHLIGHT_CLASSES | {"badge"},
}


def _clean_reply(markup: str) -> str:
    return nh3.clean(
        markup,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        allowed_classes=_REPLY_CLASSES,
    )


def render_reply_html(content: str, *, json_valid: bool | None, json_error: str = "") -> str:
    """Safe HTML for a reply: its Markdown (``json_valid`` None: JSON was not asked for), or,
    for a reply asked for as JSON, the JSON pretty-printed (valid) or the raw text under a
    note saying what is wrong with it (invalid)."""
    if json_valid is None:
        return render_markdown(content)
    if json_valid:
        try:
            data = json.loads(content)
        except (ValueError, RecursionError):  # marked valid, yet it is not: show it as is
            json_valid, json_error = False, ""
    if json_valid:
        pretty = json.dumps(data, indent=2, ensure_ascii=False)
        # The same markup as a fenced ```json block, so the page's copy button finds it.
        code = _highlight(pretty, "json", "") or html.escape(pretty, quote=False)
        markup = (
            f'<p class="msg-note"><span class="badge">{html.escape(_("JSON"))}</span>'
            f'</p><pre><code class="language-json">{code}</code></pre>'
        )
    else:
        markup = (
            f'<p class="msg-error">{html.escape(reason_text(json_error))}</p>'
            f"<pre><code>{html.escape(content, quote=False)}</code></pre>"
        )
    return _clean_reply(markup)
