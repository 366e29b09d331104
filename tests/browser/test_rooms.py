"""Two people in a room, each in a browser of their own: what one says the other sees, one is
offered the personas' @tags and the other sees them typing, a persona called by one answers
both (streaming to both), and an unknown @tag gets a notice instead of a reply."""

import pytest
from playwright.sync_api import Page, expect

from chat import rooms
from chat.actors import Actor
from tests.browser.conftest import chat_url, growth, samples, screenshot, use_fake_models

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MODEL = "fake-gpt@slow20"  # answers "Echo: <the message>", a word every 20 ms


@pytest.fixture
def room(alice, bob, project_a, fake_upstream):
    use_fake_models(project_a, fake_upstream, MODEL)
    return rooms.room_create(
        actor=Actor(user=alice),
        project=project_a,
        title="Study group",
        sharing="members",
        member_ids=[bob.pk],
        model=MODEL,
    )


def enter(page: Page, room) -> Page:
    page.goto(chat_url(room))
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")
    return page


def test_two_people_and_a_persona_in_a_room(open_page, alice, bob, room):
    alice_page = enter(open_page(user=alice).page, room)
    bob_page = enter(open_page(user=bob).page, room)

    alice_page.get_by_label("Your message").fill("Hi Bob! My name is Alice, not Ali.")
    alice_page.get_by_label("Your message").press("Enter")
    expect(bob_page.locator("#msgs .msg--user .msg-body").last).to_have_text(
        "Hi Bob! My name is Alice, not Ali."
    )

    # Bob starts a message with "@": he is offered the personas, Alice sees him typing.
    bob_page.get_by_label("Your message").press_sequentially("@cha")
    suggestions = bob_page.get_by_role("listbox", name="Personas")
    expect(suggestions).to_be_visible()
    expect(suggestions.get_by_role("option").first).to_contain_text("@chatbot")
    expect(alice_page.locator("#typing")).to_contain_text("Bob is typing")
    screenshot(bob_page, "room-tag-suggestions")
    bob_page.get_by_label("Your message").press("Enter")  # picks the tag, sends nothing
    expect(bob_page.get_by_label("Your message")).to_have_value("@chatbot ")
    bob_page.get_by_label("Your message").press_sequentially("what is my friend's name?")
    bob_page.get_by_label("Your message").press("Enter")

    # The persona answers both of them, word by word.
    for page in (alice_page, bob_page):
        reply = page.locator("#msgs .msg--assistant").last
        expect(reply).to_have_attribute("data-state", "complete")
        expect(reply.locator(".msg-author")).to_contain_text("@chatbot")
        expect(reply.locator(".msg-body")).to_contain_text("what is my friend's name?")
        steps = growth(samples(page), reply.get_attribute("data-id") or "")
        assert len(steps) >= 3, f"the reply grew in {len(steps)} steps: {steps}"
    screenshot(alice_page, "room-desktop")

    # A tag no persona has: a notice, and no reply.
    replies = bob_page.locator("#msgs .msg--assistant")
    bob_page.get_by_label("Your message").fill("@nobody hello?")
    bob_page.get_by_label("Your message").press("Enter")
    expect(bob_page.locator("#composer-notice")).to_be_visible()
    expect(bob_page.locator("#composer-notice")).to_contain_text("@nobody")
    expect(bob_page.locator("#msgs .msg--user .msg-body").last).to_have_text("@nobody hello?")
    expect(replies).to_have_count(1)
