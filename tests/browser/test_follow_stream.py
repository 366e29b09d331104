"""The transcript follows a growing reply: after a long message the view stays at the end as
the reply streams in below. A reader who scrolled up to read is left where they are, and is
offered a way back to the new text (``[data-new-messages]``)."""

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import DESKTOP, chat_url, conversation, samples, use_fake_models

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# A reply several screens long, one word every 20 ms.
LONG_REPLY_MODEL = "fake-gpt@slow20@words240"
LONG_MESSAGE = "\n".join(
    f"Line {n} of a long question about the quarterly report." for n in range(40)
)
# How far from the end a rendered frame may be and still count as following: a word or two
# may arrive between the frame and the sample (chat.js calls 80 px "near the bottom").
SLACK_PX = 80

# The box that scrolls the latest reply: the transcript on wide screens, else the page.
SCROLLER = """(() => {
  const reply = [...document.querySelectorAll('#msgs .msg--assistant')].pop();
  for (let box = reply.parentElement; box; box = box.parentElement) {
    const overflow = getComputedStyle(box).overflowY;
    if ((overflow === 'auto' || overflow === 'scroll') && box.scrollHeight > box.clientHeight) {
      return box;
    }
  }
  return document.scrollingElement;
})"""
AT_THE_END = f"""() => {{
  const box = {SCROLLER}();
  return box.scrollHeight - box.scrollTop - box.clientHeight <= 1;
}}"""


@pytest.fixture
def long_chat(alice, project_a, fake_upstream):
    use_fake_models(project_a, fake_upstream, LONG_REPLY_MODEL)
    return conversation(alice, project_a, model=LONG_REPLY_MODEL)


def send(page: Page, text: str) -> str:
    """Sends ``text``; the id of the reply it gets."""
    replies = page.locator("#msgs .msg--assistant")
    before = replies.count()
    page.get_by_label("Your message").fill(text)
    page.get_by_label("Your message").press("Enter")
    expect(replies).to_have_count(before + 1)
    expect(replies.last).to_have_attribute("data-id", re.compile(r"\d+"))
    return replies.last.get_attribute("data-id") or ""


def test_the_transcript_follows_the_reply_after_a_long_message(open_page, alice, long_chat):
    page = open_page(user=alice, viewport=DESKTOP).page
    page.goto(chat_url(long_chat))
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")

    # A first story fills the transcript: it scrolls, and is scrolled to its end.
    first = send(page, "Write me a long story.")
    expect(page.locator(f'#msgs .msg[data-id="{first}"]')).to_have_attribute(
        "data-state", "complete"
    )
    page.wait_for_function(AT_THE_END)
    # A long message: the composer grows with it (the transcript gets shorter) until it is sent.
    reply_id = send(page, LONG_MESSAGE)
    reply = page.locator(f'#msgs .msg[data-id="{reply_id}"]')
    expect(reply).to_have_attribute("data-state", "complete")

    frames = [
        s
        for s in samples(page)
        if s["id"] == reply_id and s["state"] == "streaming" and s["seen"] == "painted"
    ]
    # The view moved down with the reply, frame after frame, and kept its end in view.
    positions = sorted({s["scrollTop"] for s in frames})
    assert len(positions) >= 5, f"the view moved {len(positions)} times while the reply grew"
    behind = [s for s in frames if s["gap"] > SLACK_PX]
    assert not behind, (
        f"{len(behind)} of {len(frames)} frames left the reply's end out of view: {behind[:3]}"
    )
    page.wait_for_function(AT_THE_END)


def test_a_reader_who_scrolled_up_stays_put_and_is_offered_the_new_text(
    open_page, alice, long_chat
):
    page = open_page(user=alice, viewport=DESKTOP).page
    page.goto(chat_url(long_chat))
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")
    first = send(page, "Write me a long story.")
    expect(page.locator(f'#msgs .msg[data-id="{first}"]')).to_have_attribute(
        "data-state", "complete"
    )

    reply_id = send(page, "Another one, please.")
    page.wait_for_function(
        f"""() => {{
          const reply = document.querySelector('#msgs .msg[data-id="{reply_id}"]');
          return reply.dataset.state === 'streaming'
            && reply.querySelector('.msg-body').textContent.length > 20;
        }}"""
    )
    # The reader scrolls back up to the first story, with the mouse wheel, while the second
    # one streams; from the moment they are at the top, the view must stay there.
    page.locator("#transcript").hover()
    page.mouse.wheel(0, -100_000)
    page.wait_for_function(f"() => {SCROLLER}().scrollTop === 0")
    since = len(samples(page))
    reply = page.locator(f'#msgs .msg[data-id="{reply_id}"]')
    expect(reply).to_have_attribute("data-state", "complete")

    later = [s for s in samples(page)[since:] if s["id"] == reply_id]
    assert later, "nothing arrived after the reader scrolled up"
    assert max(s["length"] for s in later) > min(s["length"] for s in later)
    moved = [s for s in later if s["scrollTop"] != 0]
    assert not moved, f"the view jumped while the reader was reading above: {moved[:3]}"
    # New text came below: a button offers it, and takes the reader there.
    new_messages = page.locator("[data-new-messages]")
    expect(new_messages).to_be_visible()
    new_messages.click()
    page.wait_for_function(AT_THE_END)
    expect(new_messages).to_be_hidden()
