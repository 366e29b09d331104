"""Images in the chat: uploaded first, sent with a message to a model that reads them (as data
URLs the fake upstream checks are real images), refused for one that does not."""

import base64
import io

import pytest
from channels.db import database_sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from billing.models import UsageRecord
from chat.actors import Actor
from chat.attachments import attachment_create
from chat.models import Attachment, Message
from providers.models import ConnectionModel
from tests.chat.test_socket import create

pytestmark = pytest.mark.django_db(transaction=True)


def png(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@database_sync_to_async
def upload(user, conversation, data: bytes) -> Attachment:
    return attachment_create(
        actor=Actor(user=user),
        conversation=conversation,
        upload=SimpleUploadedFile("red.png", data, "image/png"),
    )


@database_sync_to_async
def vision(model: str, on: bool = True) -> None:
    ConnectionModel.objects.filter(name=model).update(supports_vision=on)


async def test_an_image_goes_to_a_vision_model_as_a_data_url(
    open_socket, make_conversation, alice, project_a, fake_upstream
):
    conversation = await create(make_conversation, alice, project_a)
    await vision("fake-gpt")
    data = png()
    image = await upload(alice, conversation, data)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="What is this?", attachments=[image.pk])
    events = await socket.until("done")

    sent = events[0]["message"]
    assert [a["id"] for a in sent["attachments"]] == [image.pk]
    done = events[-1]["message"]
    # The fake upstream decoded the data URL and found a PNG of these bytes.
    assert done["content"] == f"Echo: What is this? [image/png {len(data)} B]"
    [body] = [b for b in fake_upstream.requests if isinstance(b["messages"][-1]["content"], list)]
    text, part = body["messages"][-1]["content"]
    assert text == {"type": "text", "text": "What is this?"}
    assert part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(data).decode()
    saved = await database_sync_to_async(Attachment.objects.get)(pk=image.pk)
    assert saved.message_id == sent["id"]
    rows = UsageRecord.objects.filter(message_id=done["id"])
    assert await database_sync_to_async(rows.count)() == 1


async def test_a_model_without_vision_refuses_the_image_and_keeps_nothing(
    open_socket, make_conversation, alice, project_a, fake_upstream
):
    conversation = await create(make_conversation, alice, project_a)
    image = await upload(alice, conversation, png())
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="What is this?", attachments=[image.pk])
    event = await socket.receive()

    assert event["type"] == "error"
    assert event["code"] == "model_lacks_vision"
    assert "cannot read images" in event["message"]
    assert await database_sync_to_async(Message.objects.count)() == 0
    saved = await database_sync_to_async(Attachment.objects.get)(pk=image.pk)
    assert saved.message_id is None  # still the composer's, to send elsewhere
    assert fake_upstream.request_counts.get("fake-gpt", 0) == 0


async def test_someone_elses_upload_cannot_be_sent(
    open_socket, make_conversation, alice, bob, project_a
):
    theirs = await create(make_conversation, bob, project_a)
    foreign = await upload(bob, theirs, png())
    conversation = await create(make_conversation, alice, project_a)
    await vision("fake-gpt")
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="look", attachments=[foreign.pk])
    event = await socket.receive()

    assert (event["type"], event["code"]) == ("error", "invalid_attachments")
    assert await database_sync_to_async(Message.objects.count)() == 0
