"""A newcomer's first chat, as a person lives it: sign up, open the project, send a message and
watch the reply arrive token by token, stop one, regenerate it, and reload the page while a
reply streams (it carries on and completes)."""

import pytest
from playwright.sync_api import Locator, Page, expect

from accounts.models import Project
from tests.browser.conftest import (
    DESKTOP,
    growth,
    orm,
    samples,
    screenshot,
    use_fake_models,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WORDS = 60  # what the fake upstream's @words60 answers: 60 lorem-ipsum words


def new_reply(page: Page, seen: set[str]) -> Locator:
    """The latest reply, once it is none of the replies ``seen`` (whose ids it adds to them)."""
    page.wait_for_function(
        """(seen) => {
          const last = [...document.querySelectorAll('#msgs .msg--assistant')].pop();
          return last && last.dataset.id && !seen.includes(last.dataset.id);
        }""",
        arg=sorted(seen),
    )
    reply_id = page.locator("#msgs .msg--assistant").last.get_attribute("data-id") or ""
    seen.add(reply_id)
    return page.locator(f'#msgs .msg--assistant[data-id="{reply_id}"]')


def send(page: Page, text: str, seen: set[str]) -> Locator:
    """Types ``text`` in the composer and sends it with Enter; the reply it gets."""
    page.get_by_label("Your message").fill(text)
    page.get_by_label("Your message").press("Enter")
    return new_reply(page, seen)


def streamed_in_steps(page: Page, reply: Locator, *, at_least: int = 5) -> list[int]:
    """The reply, once complete, was seen growing in ``at_least`` steps while it streamed."""
    expect(reply).to_have_attribute("data-state", "complete")
    steps = growth(samples(page), reply.get_attribute("data-id") or "")
    assert len(steps) >= at_least, f"the reply grew in {len(steps)} steps: {steps}"
    return steps


def wait_until_streaming_with_text(page: Page) -> None:
    page.wait_for_function(
        """() => {
          const reply = [...document.querySelectorAll('#msgs .msg--assistant')].pop();
          return reply && reply.dataset.state === 'streaming'
            && reply.querySelector('.msg-body').textContent.length > 20;
        }"""
    )


def test_sign_up_chat_stop_regenerate_and_reload_mid_stream(open_page, fake_upstream):
    page = open_page(viewport=DESKTOP).page
    page.goto("/signup/")
    page.get_by_label("Your name").fill("Dana")
    page.get_by_label("E-mail").fill("dana@example.com")
    page.get_by_label("Password").fill("a-long-browser-password-42")
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Your organizations")).to_be_visible()
    expect(page.get_by_text("Welcome! Your workspace is ready.")).to_be_visible()

    # The new workspace's project talks to the fake upstream (slow enough to watch).
    orm(
        lambda: use_fake_models(
            Project.objects.get(organization__memberships__user__email="dana@example.com"),
            fake_upstream,
        )
    )
    page.get_by_role("link", name="Default", exact=True).click()
    page.get_by_role("button", name="+ New chat").first.click()
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")

    # The first reply streams in, token by token, then is whole.
    seen: set[str] = set()
    first = send(page, "Hello there", seen)
    expect(page.locator("#msgs .msg--user .msg-body").last).to_have_text("Hello there")
    steps = streamed_in_steps(page, first)
    expect(first.locator(".msg-body")).to_contain_text("lorem ipsum dolor")
    whole = len(first.locator(".msg-body").inner_text())
    assert steps[-1] <= whole
    screenshot(page, "chat-desktop-1280")

    # Stop while the second reply streams: it keeps what came and says it was stopped.
    second = send(page, "Tell me more", seen)
    wait_until_streaming_with_text(page)
    page.get_by_role("button", name="Stop").click()
    expect(second).to_have_attribute("data-state", "stopped")
    expect(second.locator(".msg-status")).to_have_text("Stopped")
    stopped = second.locator(".msg-body").inner_text()
    assert 0 < len(stopped) < whole
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()

    # Regenerate it: a new reply replaces it, streams, and this time is whole.
    stopped_id = second.get_attribute("data-id")
    second.get_by_role("button", name="Regenerate").click()
    regenerated = new_reply(page, seen)
    expect(page.locator(f'#msgs .msg[data-id="{stopped_id}"]')).to_have_count(0)
    streamed_in_steps(page, regenerated)
    assert len(regenerated.locator(".msg-body").inner_text()) == whole

    # Reload while the next reply streams: the page shows what came so far, and the rest keeps
    # arriving, in steps, until the reply is whole.
    resumed = send(page, "And once more", seen)
    wait_until_streaming_with_text(page)
    page.reload()
    expect(page.locator("#msgs .msg--user .msg-body").last).to_have_text("And once more")
    streamed_in_steps(page, resumed, at_least=3)
    assert len(resumed.locator(".msg-body").inner_text()) == whole
    expect(page.locator("#msgs .msg--assistant")).to_have_count(3)
