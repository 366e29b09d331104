"""Syntax highlighting in model Markdown: Pygments on the server, as classes the sanitizer lets
through on spans and nothing else; whatever the model writes in a fence stays text."""

import re

from chat.markdown import HIGHLIGHT_CLASSES, MAX_HIGHLIGHT_CHARS, render_markdown

SPAN = re.compile(r"<span\b([^>]*)>")


def fence(language: str, code: str) -> str:
    return f"```{language}\n{code}\n```"


def span_classes(html: str) -> list[str]:
    classes = []
    for attributes in SPAN.findall(html):
        match = re.fullmatch(r' class="([^"]*)"', attributes)
        assert match, f"a span with more than a class: <span{attributes}>"
        classes.append(match.group(1))
    return classes


def test_it_highlights_a_python_block_with_token_classes():
    html = render_markdown(fence("python", 'def greet(name):\n    return "hi " + name  # why'))

    assert '<pre><code class="language-python">' in html
    assert '<span class="k">def</span>' in html
    assert '<span class="nf">greet</span>' in html
    assert '<span class="s2">' in html
    assert '<span class="c1"># why</span>' in html
    assert set(span_classes(html)) <= HIGHLIGHT_CLASSES
    assert "style=" not in html  # classes only: the CSP refuses inline styles


def test_the_language_name_is_not_case_sensitive():
    html = render_markdown(fence("Python", "import os"))

    assert '<span class="kn">import</span>' in html


def test_html_inside_code_stays_escaped_when_highlighted():
    code = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    html = render_markdown(fence("html", code))

    assert '<span class="nt">script</span>' in html  # highlighted as a tag name…
    assert '<span class="na">onerror</span>' in html
    assert "<script" not in html  # …and still text
    assert "<img" not in html
    assert html.count("&lt;") == code.count("<")


def test_a_hostile_language_name_stays_escaped_and_plain():
    html = render_markdown(fence('"><script>alert(1)</script>', "<b>not bold</b>"))

    assert "<script" not in html
    assert "<b>" not in html
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html
    assert "<span" not in html  # no lexer by that name: plain text


def test_an_unknown_language_or_none_is_plain_text():
    for source in (fence("no-such-language", "x = 1"), fence("", "x = 1"), "    x = 1"):
        html = render_markdown(source)

        assert "<span" not in html
        assert "x = 1" in html


def test_spans_the_model_writes_itself_are_text():
    # Raw HTML is off: a span with a Pygments class typed by the model is shown, not applied.
    html = render_markdown('<span class="k" style="color:red">x</span> and `<span class="k">`')

    assert "<span" not in html
    assert "&lt;span" in html


def test_a_very_long_block_is_left_plain():
    code = "x = 1\n" * (MAX_HIGHLIGHT_CHARS // 6 + 1)

    html = render_markdown(fence("python", code))

    assert "<span" not in html
    assert html.count("x = 1") == code.count("x = 1")


def test_highlighted_code_keeps_every_character():
    code = "a = '<&>'\n\n\tb = [1, 2]  \n"
    html = render_markdown(fence("python", code))

    text = re.sub(r"</?span[^>]*>", "", html)
    assert "a = '&lt;&amp;&gt;'\n\n\tb = [1, 2]  \n" in text
