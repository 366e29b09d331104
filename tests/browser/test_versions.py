"""Every version of a turn is kept and can be browsed (< 2/3 >): regenerating a reply adds a
version of it, editing a message adds a version of the message (with its own replies), and the
version one picked is the one shown after a reload.

The contract with the page: a message's ``[data-version-label]`` reads ``index/count``, and
``[data-version-prev]`` / ``[data-version-next]`` step through its versions."""

import re

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import chat_url, conversation, use_fake_models

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MODEL = "fake-gpt"  # answers "Echo: <the message>" at once


def reply(page: Page) -> Locator:
    return page.locator("#msgs .msg--assistant").last


def question(page: Page) -> Locator:
    return page.locator("#msgs .msg--user").last


def complete_reply_id(page: Page, *, other_than: set[str]) -> str:
    """The id of the latest reply, once it is complete and is not one of ``other_than``."""
    page.wait_for_function(
        """(seen) => {
          const last = [...document.querySelectorAll('#msgs .msg--assistant')].pop();
          return last && last.dataset.state === 'complete' && !seen.includes(last.dataset.id);
        }""",
        arg=sorted(other_than),
    )
    return reply(page).get_attribute("data-id") or ""


def test_regenerated_and_edited_turns_keep_every_version(
    open_page, alice, project_a, fake_upstream
):
    use_fake_models(project_a, fake_upstream, MODEL)
    chat = conversation(alice, project_a, model=MODEL)
    page = open_page(user=alice).page
    page.goto(chat_url(chat))
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")
    page.get_by_label("Your message").fill("Hello")
    page.get_by_label("Your message").press("Enter")
    versions = [complete_reply_id(page, other_than=set())]

    # Two regenerations: three versions of the reply, the newest shown.
    for count in (2, 3):
        reply(page).get_by_role("button", name="Regenerate").click()
        versions.append(complete_reply_id(page, other_than=set(versions)))
        expect(reply(page).locator("[data-version-label]")).to_have_text(f"{count}/{count}")
    expect(page.locator("#msgs .msg--assistant")).to_have_count(1)

    # Back through them, and forward again: each is the message it was.
    for index, expected in ((2, versions[1]), (1, versions[0])):
        reply(page).locator("[data-version-prev]").click()
        expect(reply(page).locator("[data-version-label]")).to_have_text(f"{index}/3")
        expect(reply(page)).to_have_attribute("data-id", expected)
        expect(reply(page).locator(".msg-body")).to_have_text("Echo: Hello")
    reply(page).locator("[data-version-next]").click()
    expect(reply(page).locator("[data-version-label]")).to_have_text("2/3")
    expect(reply(page)).to_have_attribute("data-id", versions[1])

    # The version picked is the one the conversation goes on from, after a reload too.
    page.reload()
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")
    expect(reply(page)).to_have_attribute("data-id", versions[1])
    expect(reply(page).locator("[data-version-label]")).to_have_text("2/3")

    # Editing the message makes a second version of it, answered anew.
    question(page).get_by_role("button", name="Edit").click()
    page.get_by_label("Edit your message").fill("Hello again")
    page.get_by_role("button", name=re.compile("Save")).click()
    complete_reply_id(page, other_than=set(versions))
    expect(question(page).locator(".msg-body")).to_have_text("Hello again")
    expect(question(page).locator("[data-version-label]")).to_have_text("2/2")
    expect(reply(page).locator(".msg-body")).to_have_text("Echo: Hello again")

    # The first version of the message still has its replies.
    question(page).locator("[data-version-prev]").click()
    expect(question(page).locator("[data-version-label]")).to_have_text("1/2")
    expect(question(page).locator(".msg-body")).to_have_text("Hello")
    expect(reply(page).locator(".msg-body")).to_have_text("Echo: Hello")
    expect(reply(page).locator("[data-version-label]")).to_have_text("2/3")
