"""The reply task and its control group over Redis, the channel layer production runs on.

In production several Daphne processes share one Redis: the socket (or REST call) that asks
for a stop or a snapshot may live in another process than the reply's task. Here the reply
runs on this process's layer and the "other process" is a second RedisChannelLayer with its
own connections: what it sends reaches the task only through Redis. Both are the layer production
runs (``settings.REDIS_CHANNEL_LAYER``). `make test` starts the
Redis (scripts/redis.sh) and passes REDIS_URL.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings as django_settings
from django.utils.module_loading import import_string

from chat import services, streaming
from chat.actors import Actor
from chat.models import Message
from chat.services import PendingReply

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

WORDS = "one two three four five six seven eight nine ten eleven twelve"


@pytest.fixture
def redis_url(settings) -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail("REDIS_URL is not set: `make test` starts Redis with scripts/redis.sh")
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": settings.REDIS_CHANNEL_LAYER, "CONFIG": {"hosts": [url]}}
    }
    # What the reply task will use.
    assert isinstance(get_channel_layer(), import_string(settings.REDIS_CHANNEL_LAYER))
    return url


@dataclass
class Streaming:
    """A slow reply (150 ms a word) that has sent its first delta, watched by a tab whose
    socket lives in "another process": its own RedisChannelLayer."""

    pending: PendingReply
    ids: dict
    task: asyncio.Task
    other: Any  # a second layer of the production kind, with its own connections
    tab: str


async def stream_seen_from_another_process(
    redis_url, make_conversation, alice, project_a, model: str = "fake-gpt@slow150"
):
    conversation = await database_sync_to_async(make_conversation)(alice, project_a, model=model)
    pending = await database_sync_to_async(services.reply_start)(
        actor=Actor(user=alice), conversation_id=conversation.pk, content=WORDS
    )
    ids = {"project_id": project_a.pk, "conversation_id": conversation.pk}
    other = import_string(django_settings.REDIS_CHANNEL_LAYER)(hosts=[redis_url])
    tab = await other.new_channel()
    await other.group_add(streaming.conversation_group(**ids), tab)
    task = streaming.start_reply(pending)
    await receive_until(other, tab, "delta")
    return Streaming(pending, ids, task, other, tab)


async def receive_until(layer: Any, channel: str, kind: str) -> list[dict]:
    events = []
    async with asyncio.timeout(15):
        while True:
            payload = (await layer.receive(channel))["payload"]
            events.append(payload)
            if payload["type"] == kind:
                return events


async def test_a_stop_sent_from_another_process_ends_the_reply(
    redis_url, make_conversation, alice, project_a
):
    # Three words, then nothing until the call is closed: only the stop can end this reply.
    seen = await stream_seen_from_another_process(
        redis_url, make_conversation, alice, project_a, model="fake-gpt@slow150@stall3"
    )

    await seen.other.group_send(streaming.control_group(**seen.ids), {"type": "chat.stop"})
    async with asyncio.timeout(10):
        await seen.task
    done = await receive_until(seen.other, seen.tab, "done")

    reply = await Message.objects.aget(pk=seen.pending.assistant_message_id)
    assert (reply.state, reply.finish_reason) == ("stopped", "stop_requested")
    assert reply.content.startswith("Echo: ")
    assert len(reply.content) < len(f"Echo: {WORDS}")  # cut short
    assert done[-1]["message"]["state"] == "stopped"


async def test_a_tab_in_another_process_gets_a_snapshot_then_the_rest(
    redis_url, make_conversation, alice, project_a
):
    seen = await stream_seen_from_another_process(redis_url, make_conversation, alice, project_a)

    # What a reloaded tab in another process does: ask the reply's task for the text so far.
    await seen.other.group_send(
        streaming.control_group(**seen.ids), {"type": "chat.sync", "reply_to": seen.tab}
    )
    rest = await receive_until(seen.other, seen.tab, "done")
    async with asyncio.timeout(10):
        await seen.task

    snapshot = next(event for event in rest if event["type"] == "snapshot")
    later = "".join(
        event["text"]
        for event in rest
        if event["type"] == "delta" and event["offset"] >= snapshot["offset"]
    )
    assert snapshot["text"].startswith("Echo: ")
    assert snapshot["text"] + later == f"Echo: {WORDS}"
    assert rest[-1]["message"]["content"] == f"Echo: {WORDS}"
