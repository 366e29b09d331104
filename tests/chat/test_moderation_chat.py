"""Moderation in the chat: a flagged message is kept (flagged, for its author and the managers)
but never sent to a model; a reply the project checks is held back until it passes.

The fake upstream's /v1/moderations flags texts with words like "kill" (violence)."""

import pytest
from channels.db import database_sync_to_async

from billing.models import UsageRecord
from chat.models import ChatSettings, Message, ModerationFlag
from providers.models import ProviderConnection
from tests.chat.test_socket import create

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def moderate(project, *, connection: bool = True, replies: bool = False, patterns: str = ""):
    ChatSettings.objects.update_or_create(
        project=project,
        defaults={
            "moderation_enabled": True,
            "moderation_check_replies": replies,
            "moderation_patterns": patterns,
        },
    )
    ProviderConnection.objects.filter(project=project).update(supports_moderation=connection)
    # update() sends no signal: what is kept in memory is forgotten by hand.
    from core import config_cache

    config_cache.invalidate()


@database_sync_to_async
def rows(**filters) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(**filters).order_by("id"))


@database_sync_to_async
def messages_of(conversation) -> list[Message]:
    return list(conversation.messages.order_by("id"))


@database_sync_to_async
def flags() -> list[ModerationFlag]:
    return list(ModerationFlag.objects.order_by("id"))


async def test_a_flagged_message_is_kept_refused_and_never_sent(
    open_socket, make_conversation, alice, project_a, fake_upstream
):
    conversation = await create(make_conversation, alice, project_a)
    await moderate(project_a)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="I will kill him")
    # The refusal (to this socket) and the kept message (to every tab) may come either way.
    got = {e["type"]: e for e in [await socket.receive(), await socket.receive()]}
    shown, refused = got["message"], got["error"]

    assert shown["type"] == "message"
    assert (shown["message"]["flagged"], shown["message"]["content"]) == (True, "I will kill him")
    assert (refused["type"], refused["code"]) == ("error", "content_flagged")
    assert "violence" in refused["message"]
    assert fake_upstream.request_counts.get("fake-gpt", 0) == 0  # nothing went to the model
    # Billed: the moderation call alone (free), one row.
    [row] = await rows(conversation_id=conversation.pk)
    assert (row.source, row.model, row.status) == ("moderation", "omni-moderation-latest", "ok")
    assert row.cost == 0
    [flag] = await flags()
    assert (flag.source, flag.target, flag.categories) == ("chat", "input", ["violence"])
    assert flag.checked_by == "connection:omni-moderation-latest"
    assert flag.message_id == shown["message"]["id"]

    # The next message is answered, and the flagged one is not in what the model reads.
    await socket.send(type="message", content="hello")
    done = (await socket.until("done"))[-1]
    assert done["message"]["content"] == "Echo: hello"
    [chat_call] = [b for b in fake_upstream.requests if b.get("messages")][:1]
    assert "kill" not in str(chat_call["messages"])


async def test_the_pattern_list_decides_where_the_connection_has_no_moderation(
    open_socket, make_conversation, alice, project_a, fake_upstream
):
    conversation = await create(make_conversation, alice, project_a)
    await moderate(project_a, connection=False, patterns="secrets: \\bpassword\\b")
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="my Password is hunter2")
    got = {e["type"]: e for e in [await socket.receive(), await socket.receive()]}

    assert got["message"]["message"]["flagged"] is True
    assert got["error"]["code"] == "content_flagged"
    assert "secrets" in got["error"]["message"]
    assert fake_upstream.requests == []  # no moderation call, no chat call
    assert await rows(conversation_id=conversation.pk) == []
    [flag] = await flags()
    assert flag.checked_by == "patterns"


async def test_a_checked_reply_is_held_back_then_shown_whole(
    open_socket, make_conversation, alice, project_a, fake_upstream
):
    conversation = await create(make_conversation, alice, project_a)
    await moderate(project_a, replies=True)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="they said: knife")
    events = await socket.until("done", "error")

    assert "delta" not in [e["type"] for e in events]  # held back while written
    assert events[-1]["type"] == "done"
    assert events[-1]["message"]["content"] == "Echo: they said: knife"
    # Both the input and the reply were checked: two moderation rows, one chat row.
    sources = [r.source for r in await rows(conversation_id=conversation.pk)]
    assert sorted(sources)[:3] == ["chat", "moderation", "moderation"]


async def test_a_flagged_reply_is_not_shown_and_is_billed(
    open_socket, make_conversation, alice, project_a, fake_upstream
):
    # The input is checked by the pattern list (nothing in it), the reply by the same list:
    # the echo carries the word.
    conversation = await create(make_conversation, alice, project_a)
    await moderate(project_a, connection=False, replies=True, patterns="secrets: ^Echo: bomb")
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="bomb")
    events = await socket.until("done", "error")

    assert "delta" not in [e["type"] for e in events]
    error = events[-1]
    assert (error["type"], error["code"]) == ("error", "reply_flagged")
    assert "secrets" in error["message"]
    assert error["reply"]["content"] == ""
    _, reply = await messages_of(conversation)
    assert (reply.content, reply.state) == ("", "error")
    [row] = await rows(message_id=reply.pk)
    assert row.completion_tokens > 0  # generated, so billed
    [flag] = await flags()
    assert (flag.target, flag.message_id, flag.excerpt) == ("reply", reply.pk, "Echo: bomb")
