"""Keyboard only: from the moment the chat page loads, the composer is a keystroke or two away
(not 22 Tab presses past the sidebar), through a skip link that is the page's first Tab stop,
and a message is sent and answered without touching the mouse."""

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import chat_url, conversation, use_fake_models

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MODEL = "fake-gpt"
# The elements the Tab key stops at, in document order.
FIRST_TAB_STOP = """() => [...document.querySelectorAll(
    'a[href], button, input, select, textarea, summary, [tabindex]')]
  .find((el) => el.tabIndex >= 0 && !el.disabled && !el.closest('[hidden], template'))
  ?.outerHTML"""


def focused(page: Page) -> str:
    """What has the focus: ``#id``, or its tag and classes."""
    return page.evaluate(
        """() => {
          const el = document.activeElement;
          return el.id ? '#' + el.id : [el.tagName.toLowerCase(), ...el.classList].join('.');
        }"""
    )


@pytest.fixture
def chat(alice, project_a, fake_upstream):
    use_fake_models(project_a, fake_upstream, MODEL)
    conversation(alice, project_a, model=MODEL, title="Earlier chat")
    return conversation(alice, project_a, model=MODEL)


def test_the_composer_is_a_keystroke_away_and_sends_without_a_mouse(open_page, alice, chat):
    page = open_page(user=alice).page
    page.goto(chat_url(chat))
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")

    # The composer has the focus already, or Tab reaches the skip link and Enter follows it.
    keys = []
    while focused(page) != "#composer-input" and len(keys) < 3:
        keys.append("Enter" if focused(page).startswith("a.skip-link") else "Tab")
        page.keyboard.press(keys[-1])
    assert focused(page) == "#composer-input", f"focus on {focused(page)} after {keys}"

    page.keyboard.type("Sent with the keyboard only")
    page.keyboard.press("Enter")

    expect(page.locator("#msgs .msg--user .msg-body").last).to_have_text(
        "Sent with the keyboard only"
    )
    reply = page.locator("#msgs .msg--assistant").last
    expect(reply).to_have_attribute("data-state", "complete")
    expect(reply.locator(".msg-body")).to_have_text("Echo: Sent with the keyboard only")
    expect(page.get_by_label("Your message")).to_be_focused()


def test_the_first_tab_stop_skips_to_the_composer(open_page, alice, chat):
    page = open_page(user=alice).page
    page.goto(chat_url(chat))
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")

    skip = page.locator("a.skip-link")
    expect(skip).to_have_attribute("href", "#composer")
    first = page.evaluate(FIRST_TAB_STOP)
    assert "skip-link" in first, f"the first Tab stop is {first}"
    skip.focus()
    expect(skip).to_be_in_viewport()  # hidden until focused, then shown to sighted users
    page.keyboard.press("Enter")
    if focused(page) != "#composer-input":
        page.keyboard.press("Tab")
    assert focused(page) == "#composer-input"
