"""The REST API's messages carry what the socket's do: whether a JSON reply is that JSON, the
tools a reply called (with what they answered), moderation's flag, and a user message's images;
a message is posted with the ids of images uploaded for it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from PIL import Image

from chat.actors import Actor
from chat.attachments import attachment_create, attachments_link
from chat.models import Conversation, Message, ToolCall
from providers.models import ConnectionModel
from tests.chat.conftest import serve


@pytest.fixture(autouse=True)
def media(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def messages_url(project, conversation_id: int) -> str:
    return reverse(
        "api-messages", kwargs={"project_id": project.pk, "conversation_id": conversation_id}
    )


def png(size: tuple[int, int] = (64, 48)) -> SimpleUploadedFile:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buffer, "PNG")
    return SimpleUploadedFile("sunset.png", buffer.getvalue(), content_type="image/png")


def exchange(conversation: Conversation, user, *, calls: int = 2) -> tuple[Message, Message]:
    """A question and a JSON reply that called a tool ``calls`` times, as the reply path saves
    them."""
    parent = conversation.messages.order_by("-id").first()
    question = Message.objects.create(
        conversation=conversation, parent=parent, role="user", content="How far?", author=user
    )
    reply = Message.objects.create(
        conversation=conversation,
        parent=question,
        role="assistant",
        content='{"km": 12',
        author=user,
        json_valid=False,
        json_error="Not valid JSON: Expecting ',' delimiter at line 1 column 10",
        tool_rounds=calls + 1,
    )
    for index in range(calls):
        ToolCall.objects.create(
            message=reply,
            round=index + 1,
            call_id=f"call_{index}",
            name="calculator",
            arguments=json.dumps({"expression": f"{index}+1"}),
            result=str(index + 1),
            is_error=index == 1,
            duration_ms=3,
        )
    return question, reply


@pytest.mark.django_db
def test_the_list_carries_json_checks_tool_calls_flags_and_images(
    make_conversation, alice, project_a, client_for
):
    conversation = make_conversation(alice, project_a)
    question, reply = exchange(conversation, alice)
    image = attachment_create(actor=Actor(user=alice), conversation=conversation, upload=png())
    attachments_link(attachments=[image], message=question)
    flagged = Message.objects.create(
        conversation=conversation, parent=reply, role="user", content="(refused)", flagged=True
    )

    listed = client_for(alice).get(messages_url(project_a, conversation.pk))

    assert listed.status_code == 200
    by_id = {m["id"]: m for m in listed.json()["results"]}
    asked, answered, refused = by_id[question.pk], by_id[reply.pk], by_id[flagged.pk]
    assert (answered["json_valid"], answered["json_error"]) == (
        False,
        "Not valid JSON: Expecting ',' delimiter at line 1 column 10",
    )
    assert answered["tool_rounds"] == 3
    assert answered["tool_calls"] == [
        {
            "id": call.pk,
            "round": call.round,
            "call_id": call.call_id,
            "name": "calculator",
            "arguments": call.arguments,
            "result": call.result,
            "is_error": call.is_error,
            "duration_ms": 3,
        }
        for call in reply.tool_calls.order_by("id")
    ]
    assert answered["attachments"] == []
    assert (asked["json_valid"], asked["json_error"], asked["flagged"]) == (None, "", False)
    assert asked["tool_calls"] == []
    [shown] = asked["attachments"]
    assert {k: shown[k] for k in ("id", "name", "content_type", "width", "height")} == {
        "id": image.pk,
        "name": "sunset.png",
        "content_type": "image/png",
        "width": 64,
        "height": 48,
    }
    assert shown["size"] == image.size
    assert shown["url"].endswith(f"/{image.pk}/")
    assert shown["thumbnail_url"] != shown["url"]
    assert client_for(alice).get(shown["url"]).status_code == 200  # the reader may see it
    assert refused["flagged"] is True


@pytest.mark.django_db
def test_the_list_reads_tool_calls_and_images_in_one_query_each(
    make_conversation, alice, project_a, client_for
):
    conversation = make_conversation(alice, project_a)
    client = client_for(alice)
    url = messages_url(project_a, conversation.pk)
    exchange(conversation, alice)
    client.get(url)  # warm up: the session, the project, the price table

    with CaptureQueriesContext(connection) as few:
        client.get(url)
    for _ in range(4):
        question, _reply = exchange(conversation, alice, calls=3)
        image = attachment_create(actor=Actor(user=alice), conversation=conversation, upload=png())
        attachments_link(attachments=[image], message=question)
    with CaptureQueriesContext(connection) as many:
        listed = client.get(url).json()

    assert listed["count"] == 10
    assert len(many.captured_queries) == len(few.captured_queries)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "attachments", [["one"], "7", [0], {"id": 3}], ids=["words", "text", "zero", "object"]
)
def test_attachments_are_a_list_of_ids(
    make_conversation, alice, project_a, client_for, fake_upstream, attachments
):
    conversation = make_conversation(alice, project_a)

    refused = client_for(alice).post(
        messages_url(project_a, conversation.pk),
        data=json.dumps({"content": "hi", "attachments": attachments}),
        content_type="application/json",
    )

    assert refused.status_code == 400
    assert refused.json()["error"]["param"].startswith("attachments")
    assert fake_upstream.request_counts == {}
    assert not conversation.messages.exists()


@pytest.mark.django_db(transaction=True)
def test_a_message_is_posted_with_its_images(alice, project_a, client_for, fake_upstream):
    serve(project_a, fake_upstream, "fake-gpt")
    model = ConnectionModel.objects.get(name="fake-gpt", connection__project=project_a)
    model.supports_vision = True
    model.save()
    client = client_for(alice)
    created = client.post(
        reverse("api-conversations", kwargs={"project_id": project_a.pk}),
        data=json.dumps({"model": "fake-gpt"}),
        content_type="application/json",
    ).json()
    conversation = Conversation.objects.get(pk=created["id"])
    image = attachment_create(actor=Actor(user=alice), conversation=conversation, upload=png())

    answer = client.post(
        messages_url(project_a, conversation.pk),
        data=json.dumps({"content": "What is in this picture?", "attachments": [image.pk]}),
        content_type="application/json",
    )

    assert answer.status_code == 201, answer.content
    assert answer.json()["role"] == "assistant"
    # (The reply's request; a title may have been asked for after it.)
    [sent] = [
        body["messages"][-1]["content"]
        for body in fake_upstream.requests
        if isinstance(body["messages"][-1]["content"], list)
    ]
    assert sorted(part["type"] for part in sent) == ["image_url", "text"]
    image.refresh_from_db()
    question = Message.objects.get(conversation=conversation, role="user")
    assert image.message_id == question.pk
    listed = client.get(messages_url(project_a, conversation.pk)).json()["results"]
    assert [a["id"] for a in listed[0]["attachments"]] == [image.pk]


@pytest.mark.django_db
def test_an_outsider_gets_404(make_conversation, alice, charlie, project_a, client_for):
    conversation = make_conversation(alice, project_a)
    exchange(conversation, alice)
    client = client_for(charlie)

    listed = client.get(messages_url(project_a, conversation.pk))
    posted = client.post(
        messages_url(project_a, conversation.pk),
        data=json.dumps({"content": "hi", "attachments": [1]}),
        content_type="application/json",
    )

    assert (listed.status_code, posted.status_code) == (404, 404)
