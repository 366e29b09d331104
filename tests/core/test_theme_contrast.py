"""WCAG AA contrast (4.5:1 for normal text) of every text colour on the grounds it is drawn on,
in both themes: badges, message states, links, buttons, banners and highlighted code.

The pairs are the ones the stylesheets draw (app.css, chat.css, usage.css, personas.css); the
colours come from app.css's theme blocks, so a palette change that fails a pair fails here.
"""

from __future__ import annotations

import pytest

from tests.core.test_theme import themes

AA = 4.5

# (text, ground, where it is drawn)
PAIRS = [
    ("--text", "--bg", "page text"),
    ("--text", "--surface", "card text"),
    ("--text", "--surface-2", "hovered rows, inline code"),
    ("--text", "--input-bg", "form fields"),
    ("--text", "--user-bubble-bg", "your message"),
    ("--text", "--warn-soft", "warning banner"),
    ("--text", "--ok-soft", "success message"),
    ("--text", "--info-soft", "notice"),
    ("--text", "--code-bg", "code"),
    ("--muted", "--bg", "breadcrumbs, help on the page"),
    ("--muted", "--surface", "muted text in cards"),
    ("--muted", "--surface-2", "muted text on hover"),
    ("--muted", "--surface-3", "plain badge, room badge, code bar, message status"),
    ("--muted", "--input-bg", "placeholders"),
    ("--accent", "--bg", "links on the page"),
    ("--accent", "--surface", "links in cards"),
    ("--accent-soft-text", "--accent-soft", "owner badge, current chat, streaming status"),
    ("--warn-text", "--warn-soft", "admin badge, stopped / incomplete status"),
    ("--danger", "--danger-soft", "error status, error messages, danger badge"),
    ("--danger", "--surface", "danger links and outlined buttons"),
    ("--ok-text", "--ok-soft", "ok badge, persona on"),
    ("--on-accent", "--accent-bg", "primary buttons, skip link"),
    ("--on-danger", "--danger-bg", "danger buttons"),
]
HIGHLIGHT = [
    "--hl-comment", "--hl-keyword", "--hl-string", "--hl-number", "--hl-function", "--hl-class",
    "--hl-builtin", "--hl-name-tag", "--hl-attribute", "--hl-operator", "--hl-inserted",
    "--hl-deleted", "--hl-error",
]  # fmt: skip


def luminance(colour: str) -> float:
    hex_digits = colour.lstrip("#")
    assert len(hex_digits) == 6, f"expected #rrggbb, got {colour}"

    def channel(index: int) -> float:
        value = int(hex_digits[index : index + 2], 16) / 255
        return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(0) + 0.7152 * channel(2) + 0.0722 * channel(4)


def contrast(first: str, second: str) -> float:
    lighter, darker = sorted((luminance(first), luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_the_formula_matches_known_ratios():
    assert contrast("#000000", "#ffffff") == pytest.approx(21)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)


@pytest.mark.parametrize("theme", ["light", "dark (system)"])
def test_text_on_its_ground_passes_aa(theme):
    palette = themes()[theme]

    failing = {
        f"{text} on {ground} ({where})": round(contrast(palette[text], palette[ground]), 2)
        for text, ground, where in PAIRS
        if contrast(palette[text], palette[ground]) < AA
    }

    assert failing == {}


@pytest.mark.parametrize("theme", ["light", "dark (system)"])
def test_highlighted_code_passes_aa_on_the_code_ground(theme):
    palette = themes()[theme]

    failing = {
        name: round(contrast(palette[name], palette["--code-bg"]), 2)
        for name in HIGHLIGHT
        if contrast(palette[name], palette["--code-bg"]) < AA
    }

    assert failing == {}
