"""Every way a turn can fail: the user's message is kept, the partial reply is saved, the
client gets an ``error`` event with a code, and retries happen only where they can help."""

from datetime import datetime, timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from chat import services
from chat.actors import Actor
from chat.models import Conversation, Message
from providers.models import ProviderConnection
from tests.chat.test_socket import create, last_message_once, messages_of

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("marker", "code", "retryable"),
    [
        ("401", "upstream_auth_failed", True),
        ("429", "rate_limit_exceeded", True),
        ("quota", "insufficient_quota", False),
        ("500", "upstream_error", True),
        ("context", "context_length_exceeded", False),
    ],
)
async def test_an_upstream_error_keeps_the_message_and_says_what_happened(
    open_socket, make_conversation, alice, project_a, fake_upstream, marker, code, retryable
):
    model = f"fake-gpt@{marker}"
    conversation = await create(make_conversation, alice, project_a, model=model)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="hello")
    events = await socket.until("error")

    error = events[-1]
    assert error["code"] == code
    assert error["retryable"] is retryable
    assert error["message"]
    assert error["message_id"] == events[1]["message"]["id"]
    user, reply = await messages_of(conversation)
    assert (user.role, user.content) == ("user", "hello")
    assert (reply.state, reply.error_code, reply.content) == ("error", code, "")
    assert reply.error_message == error["message"]
    assert "sk-test" not in error["message"]
    assert "5f3a9c0e" not in reply.error_message
    assert fake_upstream.request_counts[model] == 1  # the test connection does not retry


async def test_a_rate_limit_says_when_to_try_again(
    open_socket, make_conversation, alice, project_a
):
    conversation = await create(make_conversation, alice, project_a, model="fake-gpt@429")
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="hello")
    error = (await socket.until("error"))[-1]

    assert error["retry_after"] == 1.0
    assert "Try again in 1 s" in error["message"]


@pytest.mark.parametrize(("marker", "requests"), [("500", 2), ("401", 1), ("quota", 1)])
async def test_retries_are_bounded_and_only_where_they_can_help(
    open_socket, make_conversation, alice, project_a, fake_upstream, marker, requests
):
    model = f"fake-gpt@{marker}"
    conversation = await create(make_conversation, alice, project_a, model=model)
    await database_sync_to_async(ProviderConnection.objects.filter(project=project_a).update)(
        max_retries=1
    )
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="hello")
    await socket.until("error")

    assert fake_upstream.request_counts[model] == requests


async def test_a_hung_upstream_times_out(open_socket, make_conversation, alice, project_a):
    conversation = await create(make_conversation, alice, project_a, model="fake-gpt@hang")
    await database_sync_to_async(ProviderConnection.objects.filter(project=project_a).update)(
        timeout=0.5
    )
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="hello")
    error = (await socket.until("error"))[-1]

    assert (error["code"], error["retryable"]) == ("upstream_timeout", True)
    assert (await messages_of(conversation))[-1].state == "error"


async def test_a_stream_dropped_midway_saves_what_arrived_as_incomplete(
    open_socket, make_conversation, alice, project_a
):
    conversation = await create(make_conversation, alice, project_a, model="fake-gpt@drop3")
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="one two three four five")
    events = await socket.until("error")

    assert [e["text"] for e in events if e["type"] == "delta"] == ["Echo: ", "one ", "two "]
    error = events[-1]
    assert error["code"] == "upstream_error"
    assert error["reply"]["content"] == "Echo: one two "
    reply = (await messages_of(conversation))[-1]
    assert (reply.state, reply.content) == ("incomplete", "Echo: one two ")
    assert reply.usage_estimated
    assert reply.completion_tokens > 0


async def test_a_stream_without_usage_is_counted_here(
    open_socket, make_conversation, alice, project_a
):
    conversation = await create(make_conversation, alice, project_a, model="fake-gpt@nousage")
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="hello")
    done = (await socket.until("done"))[-1]["message"]

    assert done["state"] == "complete"
    assert done["usage_estimated"] is True
    assert done["completion_tokens"] > 0
    assert done["prompt_tokens"] > 0


# --- refused before anything is sent upstream ----------------------------------------------


@pytest.mark.parametrize(
    ("content", "code"),
    [
        ("", "empty_message"),
        ("   \n", "empty_message"),
        (None, "empty_message"),
        (42, "empty_message"),
        ("x" * 32_001, "message_too_long"),
    ],
)
async def test_a_bad_message_is_refused_and_nothing_is_sent(
    open_socket, make_conversation, alice, project_a, fake_upstream, content, code
):
    conversation = await create(make_conversation, alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content=content)
    error = await socket.receive()

    assert (error["type"], error["code"]) == ("error", code)
    assert await messages_of(conversation) == []
    assert sum(fake_upstream.request_counts.values()) == 0


async def test_the_size_limit_is_a_setting(
    open_socket, make_conversation, alice, project_a, settings
):
    settings.CHAT_MAX_MESSAGE_CHARS = 10
    conversation = await create(make_conversation, alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="x" * 11)
    error = await socket.receive()

    assert error["code"] == "message_too_long"
    assert "limit is 10" in error["message"]


async def test_a_model_the_project_does_not_allow_is_refused(
    open_socket, make_conversation, alice, project_a, fake_upstream
):
    conversation = await create(make_conversation, alice, project_a)
    await database_sync_to_async(Conversation.objects.filter(pk=conversation.pk).update)(
        model="gpt-nope"
    )
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="hello")
    error = await socket.receive()

    assert (error["type"], error["code"]) == ("error", "model_not_found")
    assert "gpt-nope" in error["message"]
    assert await messages_of(conversation) == []
    assert sum(fake_upstream.request_counts.values()) == 0


async def test_a_message_too_long_for_the_context_window_is_refused(
    open_socket, make_conversation, alice, project_a, fake_upstream
):
    conversation = await create(make_conversation, alice, project_a, model="fake-gpt-mini")
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="word " * 3000)
    error = await socket.receive()

    assert error["code"] == "context_length_exceeded"
    assert sum(fake_upstream.request_counts.values()) == 0


@pytest.mark.parametrize(
    "frame",
    ["not json", "[1, 2]", '{"no": "type"}', '{"type": 5}', '{"type": "dance"}'],
)
async def test_a_malformed_frame_gets_an_error_and_the_socket_stays_usable(
    open_socket, make_conversation, alice, project_a, frame
):
    conversation = await create(make_conversation, alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.communicator.send_to(text_data=frame)
    error = await socket.receive()
    assert (error["type"], error["code"]) == ("error", "bad_frame")

    await socket.send(type="message", content="still here?")
    assert (await socket.until("done"))[-1]["message"]["content"] == "Echo: still here?"


async def test_edit_of_a_message_that_is_not_yours_is_refused(
    open_socket, make_conversation, alice, project_a, bob
):
    conversation = await create(make_conversation, alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)
    await socket.send(type="message", content="hi")
    reply_id = (await socket.until("done"))[-1]["message"]["id"]

    for message_id in (reply_id, 999_999, "1"):
        await socket.send(type="edit", message_id=message_id, content="x")
        assert (await socket.receive())["code"] == "invalid_message"


# --- who may open the socket ----------------------------------------------------------------


async def test_a_socket_without_a_session_is_refused(
    open_socket, make_conversation, alice, project_a
):
    conversation = await create(make_conversation, alice, project_a)

    connected, _ = await open_socket(None, conversation.pk)

    assert not connected


async def test_an_outsider_is_refused(open_socket, make_conversation, alice, project_a, charlie):
    conversation = await create(make_conversation, alice, project_a)

    connected, _ = await open_socket(charlie, conversation.pk)

    assert not connected


async def test_another_member_of_the_project_is_refused(
    open_socket, make_conversation, alice, bob, project_a
):
    conversation = await create(make_conversation, alice, project_a)

    connected, _ = await open_socket(bob, conversation.pk)

    assert not connected


async def test_a_missing_conversation_is_refused(open_socket, alice):
    connected, _ = await open_socket(alice, 424242)

    assert not connected


async def test_a_foreign_origin_is_refused(open_socket, make_conversation, alice, project_a):
    conversation = await create(make_conversation, alice, project_a)

    connected, _ = await open_socket(alice, conversation.pk, origin="https://evil.example")

    assert not connected


async def test_a_member_removed_while_connected_can_no_longer_send(
    open_socket, make_conversation, bob, project_a, org_a, fake_upstream
):
    conversation = await create(make_conversation, bob, project_a)
    _, socket = await open_socket(bob, conversation.pk)

    await database_sync_to_async(lambda: org_a.memberships.filter(user=bob).delete())()
    await socket.send(type="message", content="hello?")
    error = await socket.receive()

    assert error["code"] == "not_found"
    assert await database_sync_to_async(Message.objects.count)() == 0
    assert sum(fake_upstream.request_counts.values()) == 0


async def test_a_reply_left_streaming_by_a_dead_process_does_not_block_the_chat(
    open_socket, make_conversation, alice, project_a
):
    conversation = await create(make_conversation, alice, project_a)

    @database_sync_to_async
    def orphan() -> Message:
        message = Message.objects.create(
            conversation=conversation, role="assistant", state="streaming", content="half"
        )
        Message.objects.filter(pk=message.pk).update(
            updated_at=timezone.now() - timedelta(minutes=10)
        )
        return message

    orphaned = await orphan()
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="hello")
    assert (await socket.until("done"))[-1]["message"]["state"] == "complete"

    await database_sync_to_async(orphaned.refresh_from_db)()
    assert (orphaned.state, orphaned.content, orphaned.error_code) == (
        "incomplete",
        "half",
        "interrupted",
    )


async def test_stop_closes_a_reply_whose_process_died(
    open_socket, make_conversation, alice, project_a, settings
):
    settings.CHAT_ORPHAN_GRACE = 0.2
    conversation = await create(make_conversation, alice, project_a)
    orphan = await database_sync_to_async(Message.objects.create)(
        conversation=conversation, role="assistant", state="streaming", content="half a"
    )
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="stop")
    done = (await socket.until("done"))[-1]["message"]

    assert (done["id"], done["state"], done["content"]) == (orphan.pk, "stopped", "half a")
    await socket.send(type="message", content="hello again")
    assert (await socket.until("done"))[-1]["message"]["content"] == "Echo: hello again"


async def test_a_live_reply_is_not_taken_for_an_orphan(
    open_socket, make_conversation, alice, project_a, settings
):
    # A reply is taken for an orphan when it has not been written for this long: minutes,
    # so that only the heartbeat's writes decide, never how fast this machine runs.
    settings.CHAT_ORPHAN_GRACE = 60
    settings.CHAT_STALE_STREAM_SECONDS = 60
    settings.CHAT_HEARTBEAT_INTERVAL = 0.1
    conversation = await create(make_conversation, alice, project_a, model="fake-gpt@hang")
    _, socket = await open_socket(alice, conversation.pk)
    await socket.send(type="message", content="hello")
    await socket.until("assistant.started")

    @database_sync_to_async
    def written_long_ago() -> datetime:
        """The reply as a dead process leaves it: not written for 10 minutes."""
        long_ago = timezone.now() - timedelta(minutes=10)
        conversation.messages.filter(role="assistant").update(updated_at=long_ago)
        return long_ago

    # No token arrives (the upstream hangs); the heartbeat writes the reply all the same.
    long_ago = await written_long_ago()
    await last_message_once(conversation, lambda reply: reply.updated_at > long_ago)

    @database_sync_to_async
    def expire_and_close_orphans() -> tuple[int, Message | None]:
        expired = services.streams_expire_stale(conversation=conversation)
        closed = services.reply_close_orphan(
            actor=Actor(user=alice), conversation_id=conversation.pk
        )
        return expired, closed

    assert await expire_and_close_orphans() == (0, None)
    assert (await messages_of(conversation))[-1].state == "streaming"
    await socket.send(type="stop")
    done = (await socket.until("done"))[-1]["message"]
    assert done["state"] == "stopped"
    assert await socket.nothing_more()
