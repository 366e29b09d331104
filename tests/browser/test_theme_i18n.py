"""Dark mode follows the system (``prefers-color-scheme: dark``), and a Korean browser gets the
interface in Korean (``<html lang="ko">``)."""

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PHONE, chat_url, conversation, screenshot, use_fake_models

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def background_luminance(page: Page) -> float:
    """The relative luminance (0 black .. 1 white) of what the page is painted on: the body's
    background, else the root's, else the canvas's white."""
    colors = page.evaluate(
        "[document.body, document.documentElement]"
        ".map((el) => getComputedStyle(el).backgroundColor)"
    )
    for color in colors:
        red, green, blue, *alpha = (float(n) for n in re.findall(r"[\d.]+", color))
        if not alpha or alpha[0] > 0:
            channels = [c / 255 for c in (red, green, blue)]
            linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
            return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return 1.0


@pytest.mark.parametrize("path", ["/login/", "/"])
def test_a_dark_system_gets_a_dark_page(open_page, alice, path):
    page = open_page(user=alice if path == "/" else None, color_scheme="dark").page
    page.goto(path)
    luminance = background_luminance(page)
    assert luminance < 0.1, f"the background of {path} is light (luminance {luminance:.2f})"


def test_the_chat_is_dark_too(open_page, alice, project_a, fake_upstream):
    use_fake_models(project_a, fake_upstream, "fake-gpt")
    chat = conversation(alice, project_a, model="fake-gpt", title="Dark mode")
    page = open_page(user=alice, color_scheme="dark").page
    page.goto(chat_url(chat))
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")
    page.get_by_label("Your message").fill("Hello in the dark")
    page.get_by_label("Your message").press("Enter")
    expect(page.locator("#msgs .msg--assistant").last).to_have_attribute("data-state", "complete")
    screenshot(page, "chat-dark")
    assert background_luminance(page) < 0.1


@pytest.mark.parametrize("path", ["/login/", "/signup/"])
def test_a_korean_browser_gets_korean_pages(open_page, path):
    page = open_page(locale="ko-KR", extra_http_headers={"Accept-Language": "ko"}).page
    page.goto(path)
    screenshot(page, f"korean-{path.strip('/').replace('/', '-')}")
    expect(page.locator("html")).to_have_attribute("lang", "ko")


def test_a_korean_member_chats_in_korean(open_page, alice, project_a, fake_upstream):
    use_fake_models(project_a, fake_upstream, "fake-gpt")
    chat = conversation(alice, project_a, model="fake-gpt", title="안녕하세요")
    page = open_page(
        user=alice, viewport=PHONE, locale="ko-KR", extra_http_headers={"Accept-Language": "ko"}
    ).page
    page.goto(chat_url(chat))
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")
    screenshot(page, "korean-chat-phone")
    expect(page.locator("html")).to_have_attribute("lang", "ko")
