"""What models can do, seen in the browser: a tool call the server runs (collapsible, with its
arguments and result), a reply asked for as JSON (a formatted block, or marked invalid with its
raw text), and an image sent with a message (a thumbnail, read by a vision model; the attach
button off, with its reason, for a model without vision). Screenshots in var/screenshots/."""

import io
import json

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from providers.models import ConnectionModel
from tests.browser.conftest import PHONE, chat_url, conversation, orm, screenshot, use_fake_models

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def able(name: str, **flags: bool) -> None:
    orm(lambda: ConnectionModel.objects.filter(name=name).update(**flags))


def send(page: Page, text: str) -> None:
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")
    page.get_by_label("Your message").fill(text)
    page.get_by_label("Your message").press("Enter")


def last_reply(page: Page):
    reply = page.locator("#msgs .msg--assistant").last
    expect(reply).to_have_attribute("data-state", "complete")
    return reply


def test_a_tool_call_is_shown_with_its_arguments_and_result(
    open_page, alice, project_a, fake_upstream
):
    use_fake_models(project_a, fake_upstream, "fake-gpt@tool")
    able("fake-gpt@tool", supports_tools=True)
    chat = orm(lambda: conversation(alice, project_a, model="fake-gpt@tool", tools=["calculator"]))
    page = open_page(user=alice).page
    page.goto(chat_url(chat))

    send(page, json.dumps({"expression": "6 * 7"}))

    reply = last_reply(page)
    call = reply.locator(".tool-call")
    expect(call).to_have_count(1)
    expect(call.locator(".tool-call-name")).to_have_text("calculator")
    expect(call.locator(".tool-call-result")).not_to_be_visible()  # collapsed at first
    call.locator("summary").click()
    expect(call.locator(".tool-call-arguments")).to_have_text('{"expression": "6 * 7"}')
    expect(call.locator(".tool-call-result")).to_contain_text("42")
    expect(reply.locator(".msg-body")).to_contain_text("42")
    screenshot(page, "capabilities-tool-call")

    # After a reload the call is there as saved.
    page.reload()
    saved = page.locator("#msgs .msg--assistant").last.locator(".tool-call")
    expect(saved.locator(".tool-call-name")).to_have_text("calculator")
    expect(saved.locator(".tool-call-meta")).to_contain_text("ms")

    # The conversation's settings say which tools it may call.
    page.locator("summary", has_text="Settings").click()
    expect(page.get_by_role("checkbox", name="Calculator")).to_be_checked()
    expect(page.get_by_role("checkbox", name="Unit conversion")).not_to_be_checked()
    page.get_by_role("checkbox", name="Calculator").scroll_into_view_if_needed()
    screenshot(page, "capabilities-settings-tools")


def test_json_replies_are_formatted_or_marked_invalid(open_page, alice, project_a, fake_upstream):
    use_fake_models(project_a, fake_upstream, "fake-gpt@json", "fake-gpt")
    able("fake-gpt@json", supports_json=True)
    able("fake-gpt", supports_json=True)
    good = orm(lambda: conversation(alice, project_a, model="fake-gpt@json", json_mode=True))
    page = open_page(user=alice).page
    page.goto(chat_url(good))

    send(page, "hello there")

    reply = last_reply(page)
    block = reply.locator(".msg-body pre code")
    expect(block).to_contain_text('"echo": "hello there"')
    expect(reply.locator(".msg-body")).to_contain_text("JSON")
    expect(reply.locator(".msg-body button", has_text="Copy")).to_have_count(1)
    screenshot(page, "capabilities-json-reply")

    # The plain echo is not JSON: the reply says so and keeps the text as it came.
    bad = orm(lambda: conversation(alice, project_a, model="fake-gpt", json_mode=True))
    page.goto(chat_url(bad))
    send(page, "not json")
    reply = last_reply(page)
    expect(reply.locator(".msg-body")).to_contain_text("Not valid JSON")
    expect(reply.locator(".msg-body pre")).to_contain_text("Echo: not json")
    screenshot(page, "capabilities-json-invalid")


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 200), (30, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def test_an_image_goes_with_a_message_to_a_vision_model(
    open_page, alice, project_a, fake_upstream, tmp_path
):
    use_fake_models(project_a, fake_upstream, "fake-gpt", "fake-gpt-mini")
    able("fake-gpt", supports_vision=True)
    chat = orm(lambda: conversation(alice, project_a, model="fake-gpt"))
    data = png()
    picture = tmp_path / "blue.png"
    picture.write_bytes(data)
    page = open_page(user=alice, viewport=PHONE).page
    page.goto(chat_url(chat))
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")

    page.locator("#composer-files").set_input_files(str(picture))
    expect(page.locator(".composer-attachment img")).to_have_count(1)
    send(page, "What is this?")

    question = page.locator("#msgs .msg--user").last
    expect(question.locator(".msg-attachment img")).to_have_count(1)
    reply = last_reply(page)
    expect(reply.locator(".msg-body")).to_have_text(
        f"Echo: What is this? [image/png {len(data)} B]"
    )
    expect(page.locator(".composer-attachment")).to_have_count(0)  # sent with it
    # The thumbnail loads (it is served to the conversation's reader).
    loaded = question.locator(".msg-attachment img").evaluate("img => img.naturalWidth > 0")
    assert loaded
    screenshot(page, "capabilities-image-phone")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]  # nothing wider than the phone

    # A model without vision: the attach button is off and says why.
    page.locator("#chat-model").select_option("fake-gpt-mini")
    attach = page.locator(".attach-button")
    expect(attach).to_be_disabled()
    expect(attach).to_have_attribute(
        "title", "fake-gpt-mini cannot read images: pick a model that can."
    )
