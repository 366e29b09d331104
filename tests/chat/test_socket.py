"""The conversation socket end to end: real ASGI app, real SDK, the fake upstream over HTTP."""

import asyncio
from collections.abc import Callable
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async

from billing.models import UsageRecord
from chat.actors import Actor
from chat.models import Conversation, Message
from core.money import decimal_text
from tests.conftest import wait_for_background

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def messages_of(conversation: Conversation) -> list[Message]:
    return list(conversation.messages.order_by("id"))


@database_sync_to_async
def create(make_conversation, *args, **kwargs) -> Conversation:
    return make_conversation(*args, **kwargs)


def deltas_text(events) -> str:
    return "".join(e["text"] for e in events if e["type"] == "delta")


async def last_message_once(
    conversation: Conversation, saved: Callable[[Message], bool], within: float = 30
) -> Message:
    """The conversation's last message as soon as ``saved(message)`` holds, read again and again
    for at most ``within`` seconds: for writes that no event announces (a flush)."""
    async with asyncio.timeout(within):
        while True:
            message = (await messages_of(conversation))[-1]
            if saved(message):
                return message
            await asyncio.sleep(0.02)


async def test_it_streams_a_reply_and_saves_both_messages(
    open_socket, make_conversation, alice, project_a, fake_upstream
):
    conversation = await create(make_conversation, alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="hello there")
    events = await socket.until("done")

    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["message", "assistant.started"]
    assert kinds.count("delta") == 3  # "Echo: ", "hello ", "there"
    assert deltas_text(events) == "Echo: hello there"
    done = events[-1]["message"]
    assert done["state"] == "complete"
    assert done["html"] == "<p>Echo: hello there</p>\n"
    user, reply = await messages_of(conversation)
    assert (user.role, user.content, user.pk) == ("user", "hello there", events[0]["message"]["id"])
    assert (reply.role, reply.state, reply.content) == (
        "assistant",
        "complete",
        "Echo: hello there",
    )
    assert reply.finish_reason == "stop"
    assert reply.completion_tokens == 3
    assert reply.prompt_tokens > 0
    assert not reply.usage_estimated
    assert fake_upstream.request_counts["fake-gpt"] >= 1


async def test_delta_offsets_describe_the_reply(open_socket, make_conversation, alice, project_a):
    conversation = await create(make_conversation, alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="naïve café 한국어 😀 ok")
    events = await socket.until("done")

    text = ""
    for delta in (e for e in events if e["type"] == "delta"):
        assert delta["offset"] == len(text)
        text += delta["text"]
    assert text == events[-1]["message"]["content"]


async def test_a_second_tab_sees_the_same_stream(open_socket, make_conversation, alice, project_a):
    conversation = await create(make_conversation, alice, project_a, model="fake-gpt@slow20")
    _, first = await open_socket(alice, conversation.pk)
    _, second = await open_socket(alice, conversation.pk)

    await first.send(type="message", content="one two three four")
    seen_first = await first.until("done")
    seen_second = await second.until("done")

    assert deltas_text(seen_second) == deltas_text(seen_first) == "Echo: one two three four"
    assert seen_second[0]["type"] == "message"


async def test_a_tab_opened_mid_stream_gets_the_text_so_far_then_the_rest(
    open_socket, make_conversation, alice, project_a
):
    # 2,000 words 40 ms apart: still streaming when the late tab opens, however slowly this
    # machine runs; a stop ends it once the late tab has seen the rest coming.
    conversation = await create(
        make_conversation, alice, project_a, model="fake-gpt@slow40@words2000"
    )
    _, first = await open_socket(alice, conversation.pk)
    await first.send(type="message", content="go")
    await first.until("assistant.started")
    for _ in range(5):
        assert (await first.receive())["type"] == "delta"

    _, late = await open_socket(alice, conversation.pk)
    events = await late.until("snapshot")
    for _ in range(5):
        events += await late.until("delta")
    await first.send(type="stop")
    events += await late.until("done")

    # What chat.js does: deltas that came before the snapshot are covered by it; after it,
    # text is placed by offset (a delta may overlap what the snapshot gave) and none is missing.
    kinds = [e["type"] for e in events]
    assert "snapshot" in kinds
    snapshot = events[kinds.index("snapshot")]
    assert 0 < len(snapshot["text"]) == snapshot["offset"]
    text = snapshot["text"]
    for delta in events[kinds.index("snapshot") + 1 :]:
        if delta["type"] != "delta" or delta["offset"] + len(delta["text"]) <= len(text):
            continue
        assert delta["offset"] <= len(text), "a gap after the snapshot"
        text += delta["text"][len(text) - delta["offset"] :]
    assert text == events[-1]["message"]["content"]
    assert events[-1]["message"]["state"] == "stopped"
    assert len(text) > len(snapshot["text"])  # the rest came after the snapshot


async def test_stop_cuts_the_reply_short_and_keeps_it(
    open_socket, make_conversation, alice, project_a
):
    # Ten of the 100 words, then nothing until the call is closed: only the stop ends it.
    conversation = await create(
        make_conversation, alice, project_a, model="fake-gpt@slow50@words100@stall10"
    )
    _, socket = await open_socket(alice, conversation.pk)
    await socket.send(type="message", content="go")
    await socket.until("assistant.started")
    await socket.until("delta")
    await socket.until("delta")

    await socket.send(type="stop")
    events = await socket.until("done")

    reply = events[-1]["message"]
    assert reply["state"] == "stopped"
    assert 2 <= len(reply["content"].split()) < 100
    saved = (await messages_of(conversation))[-1]
    assert saved.state == "stopped"
    assert saved.content == reply["content"]
    assert saved.usage_estimated
    assert saved.completion_tokens > 0


async def test_closing_the_tab_does_not_lose_the_reply(
    open_socket, make_conversation, alice, project_a
):
    conversation = await create(
        make_conversation, alice, project_a, model="fake-gpt@slow10@words20"
    )
    _, socket = await open_socket(alice, conversation.pk)
    await socket.send(type="message", content="go")
    await socket.until("assistant.started")

    await socket.close()
    await wait_for_background()

    reply = (await messages_of(conversation))[-1]
    assert reply.state == "complete"
    assert len(reply.content.split()) == 20


@pytest.mark.parametrize(("interval", "saved_words"), [(60, range(0, 1)), (0.2, range(1, 13))])
async def test_the_reply_is_flushed_at_intervals_not_per_token(
    open_socket, make_conversation, alice, project_a, settings, interval, saved_words
):
    settings.CHAT_FLUSH_INTERVAL = interval
    settings.CHAT_HEARTBEAT_INTERVAL = 600  # only the flushes write the reply here
    # 12 words 50 ms apart (600 ms: past the short interval), then nothing until the stop:
    # the reply is still streaming, with 12 words at most, whenever it is read.
    conversation = await create(
        make_conversation, alice, project_a, model="fake-gpt@slow50@words40@stall12"
    )
    _, socket = await open_socket(alice, conversation.pk)
    await socket.send(type="message", content="go")
    await socket.until("assistant.started")
    for _ in range(12):
        await socket.until("delta")

    if 0 in saved_words:
        # Per token, a flush would have been written before the next token went out.
        reply = (await messages_of(conversation))[-1]
    else:  # a flush is written on its own time: wait for it (or fail after a bound)
        reply = await last_message_once(conversation, lambda message: bool(message.content))
    assert reply.state == "streaming"
    assert len(reply.content.split()) in saved_words
    await socket.send(type="stop")
    assert (await socket.until("done"))[-1]["message"]["content"].startswith(reply.content)


@database_sync_to_async
def branch_of(conversation: Conversation) -> list[Message]:
    return list(conversation.messages.on_branch().order_by("id"))


async def test_regenerate_replaces_the_last_reply_and_keeps_it_as_a_version(
    open_socket, make_conversation, alice, project_a
):
    conversation = await create(make_conversation, alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)
    await socket.send(type="message", content="first")
    await socket.until("done")
    old_reply = (await messages_of(conversation))[-1]

    await socket.send(type="regenerate")
    events = await socket.until("done")

    assert events[0] == {"type": "truncate", "from": old_reply.pk}
    shown = await branch_of(conversation)
    assert [(m.role, m.content) for m in shown] == [
        ("user", "first"),
        ("assistant", "Echo: first"),
    ]
    assert shown[-1].pk != old_reply.pk
    assert old_reply.pk in [m.pk for m in await messages_of(conversation)]  # kept, a version


async def test_editing_an_earlier_message_replaces_the_later_turns_on_the_branch(
    open_socket, make_conversation, alice, project_a
):
    conversation = await create(make_conversation, alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)
    for text in ("one", "two"):
        await socket.send(type="message", content=text)
        await socket.until("done")
    first = (await messages_of(conversation))[0]

    await socket.send(type="edit", message_id=first.pk, content="uno")
    events = await socket.until("done")

    assert events[0] == {"type": "truncate", "from": first.pk}
    assert events[1]["type"] == "message"
    assert events[1]["message"]["content"] == "uno"
    assert [(m.role, m.content) for m in await branch_of(conversation)] == [
        ("user", "uno"),
        ("assistant", "Echo: uno"),
    ]
    assert len(await messages_of(conversation)) == 6  # the earlier branch is kept


async def test_a_second_message_while_one_streams_is_refused(
    open_socket, make_conversation, alice, project_a
):
    # Five words, then nothing until the call is closed: the first reply is still streaming
    # when the second message comes, however slowly this machine runs.
    conversation = await create(
        make_conversation, alice, project_a, model="fake-gpt@slow30@words20@stall5"
    )
    _, socket = await open_socket(alice, conversation.pk)
    await socket.send(type="message", content="first")
    await socket.until("assistant.started")

    await socket.send(type="message", content="second")
    error = (await socket.until("error"))[-1]

    assert error["code"] == "busy"
    await socket.send(type="stop")
    await socket.until("done")
    assert [m.content for m in await messages_of(conversation) if m.role == "user"] == ["first"]


async def test_the_history_goes_into_the_prompt(open_socket, make_conversation, alice, project_a):
    conversation = await create(make_conversation, alice, project_a, system_prompt="Be brief.")
    _, socket = await open_socket(alice, conversation.pk)
    await socket.send(type="message", content="one")
    first = (await socket.until("done"))[-1]["message"]
    await socket.send(type="message", content="two")
    second = (await socket.until("done"))[-1]["message"]

    assert second["prompt_tokens"] > first["prompt_tokens"]
    assert second["omitted_messages"] == 0


async def test_a_long_history_is_trimmed_and_the_reply_says_how_much(
    open_socket, make_conversation, alice, project_a
):
    # fake-gpt-mini has a 2,048-token window; with max_tokens 1,500 little history fits.
    conversation = await create(
        make_conversation, alice, project_a, model="fake-gpt-mini", max_tokens=1500
    )
    _, socket = await open_socket(alice, conversation.pk)
    replies = []
    for n in range(6):
        await socket.send(type="message", content=f"message {n} " + "lorem ipsum " * 30)
        replies.append((await socket.until("done"))[-1]["message"])

    # The first reply that had to leave turns out says so (then they are summarized:
    # tests/chat/test_summaries.py).
    done = next(reply for reply in replies if reply["omitted_messages"] > 0)
    saved = next(m for m in await messages_of(conversation) if m.pk == done["id"])
    assert saved.omitted_messages == done["omitted_messages"]
    assert saved.prompt_tokens <= 2048 - 1500


async def test_the_first_exchange_names_the_conversation(
    open_socket, make_conversation, alice, project_a, fake_price
):
    conversation = await create(make_conversation, alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="Plan a trip to Jeju")
    events = await socket.until("title")  # open tabs are told, no reload needed
    await wait_for_background()

    await database_sync_to_async(conversation.refresh_from_db)()
    assert conversation.title == "Echo: Plan a trip to Jeju"
    # The title's call is billed to the conversation too: its total, with it, comes along.
    rows = [row async for row in UsageRecord.objects.filter(conversation=conversation)]
    assert len(rows) == 2  # the reply and the title
    total = sum((row.cost for row in rows), Decimal(0))
    assert total > 0
    assert events[-1] == {
        "type": "title",
        "conversation_id": conversation.pk,
        "title": "Echo: Plan a trip to Jeju",
        "conversation_cost": decimal_text(total),
    }


async def test_chat_still_works_after_the_encryption_keys_rotate(
    open_socket, make_conversation, alice, project_a, settings
):
    from cryptography.fernet import Fernet
    from django.core.management import call_command

    conversation = await create(make_conversation, alice, project_a)
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, *settings.FIELD_ENCRYPTION_KEYS]
    await database_sync_to_async(call_command)("rotate_encryption_keys")
    settings.FIELD_ENCRYPTION_KEYS = [new_key]  # the old key is gone

    _, socket = await open_socket(alice, conversation.pk)
    await socket.send(type="message", content="still here")
    done = (await socket.until("done", "error"))[-1]

    assert done["type"] == "done"
    assert done["message"]["content"] == "Echo: still here"


# --- the built-in local model, for real --------------------------------------------------------


@database_sync_to_async
def local_conversation(user, project, **fields) -> Conversation:
    from chat import services

    conversation = services.conversation_create(actor=Actor(user=user), project=project)
    Conversation.objects.filter(pk=conversation.pk).update(title="Local", **fields)
    conversation.refresh_from_db()
    return conversation


async def test_a_reply_streams_from_the_local_model(open_socket, alice, project_a):
    conversation = await local_conversation(alice, project_a, max_tokens=12, temperature=0)
    assert conversation.model == "smollm2-135m-instruct"  # the default, with no key at all
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="Say hello.")
    events = await socket.until("done", "error", within=60)

    done = events[-1]
    assert done["type"] == "done", done
    reply = done["message"]
    assert reply["content"].strip()
    assert reply["content"] == deltas_text(events)
    assert 0 < reply["completion_tokens"] <= 12
    assert reply["prompt_tokens"] > 0
    assert reply["usage_estimated"] is False  # the model's own tokenizer counted


async def test_a_second_reply_waits_for_the_local_model_and_says_so(open_socket, alice, project_a):
    # A long story (1,000 tokens) holds the model until it is stopped, however fast it runs.
    first = await local_conversation(alice, project_a, max_tokens=1000, temperature=0)
    second = await local_conversation(alice, project_a, max_tokens=5, temperature=0)
    _, socket_one = await open_socket(alice, first.pk)
    _, socket_two = await open_socket(alice, second.pk)

    await socket_one.send(type="message", content="Write a long story about a lighthouse keeper.")
    await socket_one.until("delta", within=60)
    await socket_two.send(type="message", content="Hi")
    queued = await socket_two.until("waiting", "done", "error", within=60)

    assert (queued[-1]["type"], queued[-1].get("position")) == ("waiting", 1)
    await socket_one.send(type="stop")  # the model is free: the second reply runs
    stopped = (await socket_one.until("done", within=60))[-1]["message"]
    events = await socket_two.until("done", "error", within=60)

    assert stopped["state"] == "stopped"
    assert events[-1]["type"] == "done"
    assert events[-1]["message"]["content"] == deltas_text(events)


async def test_tokens_close_together_share_a_frame(
    open_socket, make_conversation, alice, project_a, settings
):
    settings.CHAT_DELTA_INTERVAL = 0.5
    # 40 tokens sent at once, then nothing until the stop.
    conversation = await create(
        make_conversation, alice, project_a, model="fake-gpt@words60@stall40"
    )
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="go")
    events = await socket.until("delta")  # the first token goes out at once
    # The others came within the interval: they are held, then sent together by the timer,
    # though no token follows them.
    while len(deltas_text(events).split()) < 40:
        events.append(await socket.receive())
    await socket.send(type="stop")
    events += await socket.until("done")

    deltas = [e for e in events if e["type"] == "delta"]
    text = ""
    for delta in deltas:
        assert delta["offset"] == len(text)
        text += delta["text"]
    assert text == events[-1]["message"]["content"]
    assert len(text.split()) == 40
    assert 2 <= len(deltas) < 10  # not a frame per token
