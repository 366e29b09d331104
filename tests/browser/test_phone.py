"""On a phone (375 x 812), a long conversation title (titles are generated, so usually long)
never makes the page wider than the screen, and Send stays on screen."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import PHONE, chat_url, conversation, screenshot, use_fake_models

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LONG_TITLE = (
    "Comparing the long-term total cost of ownership of three cloud GPU providers for a small "
    "research team that trains models every night"
)


def test_a_long_title_never_widens_the_page_on_a_phone(open_page, alice, project_a, fake_upstream):
    use_fake_models(project_a, fake_upstream)
    conversation(alice, project_a, title="Lunch ideas")
    chat = conversation(alice, project_a, title=LONG_TITLE)
    page = open_page(user=alice, viewport=PHONE, is_mobile=True, has_touch=True).page

    page.goto(chat_url(chat))
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")

    screenshot(page, "chat-phone-375")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px screen"
    expect(page.get_by_role("button", name="Send")).to_be_in_viewport(ratio=1)
