"""A reply being generated: its own asyncio task, broadcast to the conversation's group.

The task is not tied to the socket that asked for it, so closing the tab does not lose the
reply; only a ``stop`` cuts it short. It joins a control group of the conversation so that any
socket, in any process, can ask it to stop or to send the text so far to a newcomer (a second
tab, or a tab reloaded mid-stream). Deltas carry their offset in the reply, so a client that
got a snapshot can drop what it already has.

Whatever happens — finish, stop, upstream error, dropped connection, the task being cancelled —
the ``finally`` saves the reply with its state and sends ``done`` or ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from billing import metering
from core.db import db_async
from core.detached import run_detached
from core.errors import ServiceError, retryable
from providers.llm.base import ProviderError, TextDelta, Waiting
from providers.pool import leased_provider

from . import services
from .models import Message

logger = logging.getLogger(__name__)


def conversation_group(*, project_id: int, conversation_id: int) -> str:
    return f"chat.p{project_id}.c{conversation_id}"


def control_group(*, project_id: int, conversation_id: int) -> str:
    return f"chatctl.p{project_id}.c{conversation_id}"


def event(payload: dict[str, Any]) -> dict[str, Any]:
    """A channel-layer message that consumers forward to their socket as it is."""
    return {"type": "chat.event", "payload": payload}


def announce_title(*, project_id: int, conversation_id: int, title: str) -> None:
    """Tell the conversation's open tabs its new title (from a worker: sync). It reaches them
    through the channel layer: on Redis (production) from any process; on the embedded
    profile's in-memory layer only within the process that serves the sockets."""
    async_to_sync(get_channel_layer().group_send)(
        conversation_group(project_id=project_id, conversation_id=conversation_id),
        event({"type": "title", "conversation_id": conversation_id, "title": title}),
    )


def announce(*, project_id: int, conversation_id: int, payload: dict[str, Any]) -> None:
    """Send an event to every open tab of a conversation, from sync code (a room message
    posted over REST reaches the people on the room's socket)."""
    async_to_sync(get_channel_layer().group_send)(
        conversation_group(project_id=project_id, conversation_id=conversation_id),
        event(payload),
    )


def announce_removed(*, project_id: int, conversation_id: int, user_id: int) -> None:
    """Close the room's sockets of a person just removed from it (in every process that the
    channel layer reaches); their next write would be refused anyway."""
    async_to_sync(get_channel_layer().group_send)(
        conversation_group(project_id=project_id, conversation_id=conversation_id),
        {"type": "chat.removed", "user_id": user_id},
    )


def start_reply(
    pending: services.PendingReply, *, listener: asyncio.Queue | None = None
) -> asyncio.Task:
    """Run the reply in a task of its own. ``listener`` (the REST API's) also gets every event
    the conversation's group gets, then ``None`` once the reply is saved, however it ended."""
    # Detached: the caller (an HTTP request, a socket) may end before the reply does.
    task = run_detached(ReplyRunner(pending, listener=listener).run())
    if listener is not None:
        task.add_done_callback(lambda _: listener.put_nowait(None))
    return task


class ReplyRunner:
    def __init__(
        self, pending: services.PendingReply, *, listener: asyncio.Queue | None = None
    ) -> None:
        self.pending = pending
        self.listener = listener
        self.text: list[str] = []
        self.length = 0
        self.layer = get_channel_layer()
        ids = {"project_id": pending.project_id, "conversation_id": pending.conversation_id}
        self.group = conversation_group(**ids)
        self.control_group = control_group(**ids)
        self.stop_requested = False
        self.stream_task: asyncio.Task | None = None
        # Text generated but not yet broadcast, and where it starts (see ``send_delta``).
        self.unsent: list[str] = []
        self.unsent_from = 0
        self.last_sent = 0.0
        self.flush_later: asyncio.TimerHandle | None = None
        self.flush_task: asyncio.Task | None = None
        self.outcome = metering.Outcome()
        self.first_token_ms: int | None = None

    @property
    def message_id(self) -> int:
        return self.pending.assistant_message_id

    async def broadcast(self, payload: dict[str, Any]) -> None:
        if self.listener is not None:
            self.listener.put_nowait(payload)
        await self.layer.group_send(self.group, event(payload))

    async def run(self) -> None:
        control = await self.layer.new_channel()
        await self.layer.group_add(self.control_group, control)
        listener = asyncio.create_task(self.listen(control))
        heartbeat = asyncio.create_task(self.heartbeat())
        await self.broadcast(
            {
                "type": "assistant.started",
                "message": {
                    "id": self.message_id,
                    "model": self.pending.call.request.model,
                    "persona": self.pending.persona,
                    "author": self.pending.caller,
                    "created_at": timezone.now().isoformat(),
                    # A regenerate's reply is one version of several: the page shows which.
                    "versions": self.pending.versions,
                },
                "omitted_messages": self.pending.omitted,
            }
        )
        started = time.monotonic()
        state = Message.State.ERROR
        failure: ServiceError | None = None
        try:
            self.stream_task = asyncio.create_task(self.stream(started))
            if self.stop_requested:  # a stop that came before the stream began
                self.stream_task.cancel()
            await self.stream_task
            state = Message.State.COMPLETE
        except asyncio.CancelledError:
            if not self.stop_requested:  # the server is shutting down: keep what we have
                state, failure = Message.State.INCOMPLETE, ServiceError(code="interrupted")
                raise
            state = Message.State.STOPPED
            self.outcome.finish_reason = "stop_requested"
        except ProviderError as exc:  # every upstream failure, whatever it sent (metering)
            failure = metering.upstream_failure(exc, partial=bool(self.length))
        except Exception:  # never leave a reply streaming because of a bug of ours
            logger.exception("reply %s failed", self.message_id)
            failure = ServiceError(code="internal_error")
        finally:
            listener.cancel()
            heartbeat.cancel()
            if failure is not None and state == Message.State.ERROR:
                state = Message.State.INCOMPLETE if self.length else Message.State.ERROR
            latency_ms = int((time.monotonic() - started) * 1000)
            # Shielded: even a cancelled task saves the reply and tells the clients.
            await asyncio.shield(self.finish(state, failure, latency_ms))
            await self.layer.group_discard(self.control_group, control)

    async def stream(self, started: float) -> None:
        last_flush = time.monotonic()
        async with leased_provider(self.pending.call.spec) as provider:
            events = metering.stream_capped(self.pending.call, provider, self.outcome)
            # aclosing: a cancelled or failed reply closes the stream at once, which is what
            # frees the local model for the next request (a dropped generator would not).
            async with contextlib.aclosing(events) as stream:
                async for item in stream:
                    await self.handle(item, started)
                    if isinstance(item, TextDelta) and (
                        time.monotonic() - last_flush >= settings.CHAT_FLUSH_INTERVAL
                    ):
                        last_flush = time.monotonic()
                        await db_async(services.reply_flush)(
                            message_id=self.message_id, content="".join(self.text)
                        )

    async def handle(self, item: object, started: float) -> None:
        if isinstance(item, Waiting):
            await self.broadcast(
                {"type": "waiting", "message_id": self.message_id, "position": item.position}
            )
        elif isinstance(item, TextDelta):
            if not self.length:
                self.first_token_ms = int((time.monotonic() - started) * 1000)
            self.text.append(item.text)
            self.unsent.append(item.text)
            self.length += len(item.text)
            await self.send_delta()

    async def send_delta(self, *, force: bool = False) -> None:
        """Broadcast the text not sent yet, at most once per CHAT_DELTA_INTERVAL.

        Every frame costs a channel-layer message, a socket frame and a DOM update per open tab,
        and on a 2-core machine that is CPU the local model is waiting for. Tokens that come
        closer together than the interval go out together; a timer sends what is left.
        """
        if not self.unsent:
            return
        now = time.monotonic()
        wait = settings.CHAT_DELTA_INTERVAL - (now - self.last_sent)
        if wait > 0 and not force:
            if self.flush_later is None:
                self.flush_later = asyncio.get_running_loop().call_later(wait, self.flush_soon)
            return
        if self.flush_later is not None:
            self.flush_later.cancel()
            self.flush_later = None
        text = "".join(self.unsent)
        self.unsent.clear()
        offset, self.unsent_from, self.last_sent = self.unsent_from, self.length, now
        await self.broadcast(
            {"type": "delta", "message_id": self.message_id, "offset": offset, "text": text}
        )

    def flush_soon(self) -> None:
        self.flush_later = None
        self.flush_task = asyncio.ensure_future(self.send_delta(force=True))

    async def heartbeat(self) -> None:
        """Write the reply now and then even when no token comes (a slow or hung upstream), so
        a reply that stops being written is known to have lost its process."""
        while True:
            await asyncio.sleep(settings.CHAT_HEARTBEAT_INTERVAL)
            await db_async(services.reply_flush)(
                message_id=self.message_id, content="".join(self.text)
            )

    async def listen(self, control: str) -> None:
        while True:
            message = await self.layer.receive(control)
            kind = message.get("type")
            if kind == "chat.stop":
                self.stop_requested = True
                if self.stream_task is not None:
                    self.stream_task.cancel()
            elif kind == "chat.sync":
                text = "".join(self.text)
                await self.layer.send(
                    message["reply_to"],
                    event(
                        {
                            "type": "snapshot",
                            "message_id": self.message_id,
                            "text": text,
                            "offset": len(text),
                            "model": self.pending.call.request.model,
                        }
                    ),
                )

    async def finish(self, state: str, failure: ServiceError | None, latency_ms: int) -> None:
        """Save the reply and settle its call, then tell every tab: ``done``, or ``error``
        with the saved reply. Whatever happens here, the tabs hear the end."""
        await self.send_delta(force=True)  # the tail, before done/error
        content = "".join(self.text)
        try:
            message = await db_async(services.reply_finish)(
                pending=self.pending,
                outcome=self.outcome,
                content=content,
                state=state,
                error_code=failure.code if failure else "",
                error_message=failure.message if failure else "",
                latency_ms=latency_ms,
                first_token_ms=self.first_token_ms,
            )
        except Exception:
            # The reply could not be saved as it ended: close it as the stale-stream sweep
            # would (the text flushed so far, metered once), and say so.
            logger.exception("reply %s could not be saved; closing it", self.message_id)
            failure = ServiceError(code="internal_error")
            message = await self.close_after_failure()
        if message is None:  # the conversation was deleted meanwhile
            return
        serialized = await db_async(services.serialize_message)(message)
        if failure is not None:
            await self.broadcast(
                {
                    "type": "error",
                    "code": failure.code,
                    "message": message.error_message or failure.message,
                    "retryable": retryable(failure.code),
                    "retry_after": failure.retry_after,
                    "message_id": self.message_id,
                    "reply": serialized,
                }
            )
        else:
            await self.broadcast({"type": "done", "message": serialized})

    async def close_after_failure(self) -> Message | None:
        try:
            return await db_async(services.reply_close_failed)(message_id=self.message_id)
        except Exception:
            logger.exception("reply %s could not be closed either", self.message_id)
            return None
