"""Light and dark themes from one set of colour properties, picked before the first paint
(the skip link, landmarks and the chat drawer are in test_theme_pages.py).

The stylesheets are read as text: a colour written outside app.css's theme blocks would not
change in dark mode, and a dark block missing a property would keep the light value there.
"""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings
from django.urls import reverse

CSS_DIR = Path(settings.BASE_DIR) / "static" / "css"
APP_CSS = CSS_DIR / "app.css"
THEME_JS = Path(settings.BASE_DIR) / "static" / "js" / "theme.js"

LIGHT = ":root {"
DARK_MEDIA = "@media (prefers-color-scheme: dark) {"
DARK_SYSTEM = ':root:not([data-theme="light"]) {'
DARK_CHOSEN = ':root[data-theme="dark"] {'

COMMENT = re.compile(r"/\*.*?\*/", re.S)
DECLARATION = re.compile(r"(--[\w-]+)\s*:\s*([^;]+);")
COLOUR_LITERAL = re.compile(
    r"#[0-9a-fA-F]{3,8}\b|\b(?:rgba?|hsla?|hwb|lab|lch|oklab|oklch)\("
    r"|:\s*[^;{}]*\b(?:white|black|red|blue|green|gray|grey|orange|yellow|purple|pink)\b"
)
# Set by scripts at run time (a persona's own colour, persona-color.js), always with a fallback.
RUNTIME_PROPERTIES = {"--persona"}


def themed_stylesheets() -> list[Path]:
    """Our stylesheets; the API docs pages are Redoc's and Swagger UI's own look."""
    return sorted(p for p in CSS_DIR.glob("*.css") if not p.name.startswith("api-docs-"))


def block(css: str, opener: str, start: int = 0) -> tuple[str, int, int]:
    """The text inside the braces that follow ``opener``, and where the block starts and ends."""
    begin = css.index(opener, start)
    opening = css.index("{", begin)
    depth = 0
    for index in range(opening, len(css)):
        depth += {"{": 1, "}": -1}.get(css[index], 0)
        if depth == 0:
            return css[opening + 1 : index], begin, index + 1
    raise AssertionError(f"unclosed block: {opener}")


def properties(text: str) -> dict[str, str]:
    return {name: " ".join(value.split()) for name, value in DECLARATION.findall(text)}


def app_css() -> str:
    return COMMENT.sub("", APP_CSS.read_text())


def themes() -> dict[str, dict[str, str]]:
    css = app_css()
    light, *_ = block(css, LIGHT)
    media, *_ = block(css, DARK_MEDIA)
    dark_system, *_ = block(media, DARK_SYSTEM)
    dark_chosen, *_ = block(css, DARK_CHOSEN)
    return {
        "light": properties(light),
        "dark (system)": properties(dark_system),
        "dark (chosen)": properties(dark_chosen),
    }


def test_it_gives_every_colour_a_dark_value_and_both_dark_blocks_agree():
    found = themes()
    light = set(found["light"]) - {"--radius", "--mono"}  # not colours

    assert set(found["dark (system)"]) == light
    assert found["dark (system)"] == found["dark (chosen)"]


def test_it_writes_colours_only_in_the_theme_blocks():
    css = app_css()
    for opener in (DARK_MEDIA, DARK_CHOSEN, LIGHT):
        _, begin, end = block(css, opener)
        css = css[:begin] + css[end:]
    stray = {APP_CSS.name: COLOUR_LITERAL.findall(css)}
    for path in themed_stylesheets():
        if path != APP_CSS:
            stray[path.name] = COLOUR_LITERAL.findall(COMMENT.sub("", path.read_text()))

    assert {name: found for name, found in stray.items() if found} == {}


def test_every_property_a_stylesheet_reads_is_defined():
    defined = set(themes()["light"]) | RUNTIME_PROPERTIES
    used = {
        path.name: set(re.findall(r"var\((--[\w-]+)", COMMENT.sub("", path.read_text())))
        for path in themed_stylesheets()
    }

    assert {name: names - defined for name, names in used.items() if names - defined} == {}


def test_the_theme_script_runs_in_the_head_before_the_stylesheets(client):
    html = client.get(reverse("login")).content.decode()
    head = html[: html.index("</head>")]

    script = re.search(r'<script src="/static/js/theme\.js"([^>]*)></script>', head)
    assert script, "theme.js is not in <head>"
    assert "defer" not in script.group(1)
    assert "async" not in script.group(1)
    assert script.start() < head.index('rel="stylesheet"')
    assert '<html lang="en">' in html  # i18n decides lang later; the theme never touches it


def test_the_theme_script_keeps_the_choice_in_local_storage_and_sets_data_theme():
    script = THEME_JS.read_text()

    assert 'const KEY = "theme"' in script
    assert "localStorage.getItem(KEY)" in script
    assert "localStorage.setItem(KEY" in script
    assert "root.dataset.theme = choice" in script
    assert 'root.classList.add("js")' in script
    assert "eval(" not in script
    assert "innerHTML" not in script


def test_the_header_offers_system_light_and_dark(client):
    html = client.get(reverse("login")).content.decode()

    picker = re.search(r'<select id="theme-choice">(.*?)</select>', html, re.S)
    assert picker
    assert re.findall(r'<option value="(\w+)"', picker.group(1)) == ["system", "light", "dark"]
    assert '<label for="theme-choice">Theme</label>' in html
