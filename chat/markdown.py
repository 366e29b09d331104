"""Markdown from the model, rendered on the server and sanitized before it reaches a page.

markdown-it-py renders with raw HTML disabled (so the model's own tags come out as text), and
nh3 then keeps only a small allow-list of tags, attributes and URL schemes as a second wall.
A table column's alignment comes out as a class, not a style="" attribute, which the
Content-Security-Policy would refuse.
"""

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore

ALLOWED_TAGS = {
    "p", "br", "hr", "strong", "em", "s", "del", "code", "pre", "blockquote",
    "ul", "ol", "li", "a", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},  # language-xxx from fenced blocks, for the copy button's label
    "ol": {"start"},
}
ALIGNMENTS = {"left", "center", "right"}
# Only the classes _alignment_as_class sets; the model's text cannot add others (raw HTML is off).
ALLOWED_CLASSES = {cell: {f"align-{side}" for side in ALIGNMENTS} for cell in ("th", "td")}


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
    parser = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(
        ["table", "strikethrough"]
    )
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
