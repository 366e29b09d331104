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
import uuid
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _

from billing import metering
from core.db import db_async
from core.detached import run_detached
from core.errors import ServiceError, retryable
from core.logging import bind_request_id, current_request_id
from core.money import decimal_text
from providers.llm.base import ProviderError, TextDelta, ToolCallDelta, Waiting
from providers.pool import leased_provider

from . import moderation, services
from .models import Message, ModerationFlag, ToolCall
from .tools.base import ToolContext

logger = logging.getLogger(__name__)


class ToolLoopBound(Exception):
    """The reply reached the bound on tool rounds or their time; ``note`` says which."""

    def __init__(self, note: str) -> None:
        super().__init__(note)
        self.note = note


def conversation_group(*, project_id: int, conversation_id: int) -> str:
    return f"chat.p{project_id}.c{conversation_id}"


def control_group(*, project_id: int, conversation_id: int) -> str:
    return f"chatctl.p{project_id}.c{conversation_id}"


def event(payload: dict[str, Any]) -> dict[str, Any]:
    """A channel-layer message that consumers forward to their socket as it is."""
    return {"type": "chat.event", "payload": payload}


def announce_title(
    *, project_id: int, conversation_id: int, title: str, conversation_cost: Decimal | None = None
) -> None:
    """Tell the conversation's open tabs its new title (from a worker: sync), and what the
    conversation has cost with the title's call. It reaches them through the channel layer: on
    Redis (production) from any process; on the embedded profile's in-memory layer only within
    the process that serves the sockets."""
    payload = {
        "type": "title",
        "conversation_id": conversation_id,
        "title": title,
        "conversation_cost": decimal_text(conversation_cost),
    }
    async_to_sync(get_channel_layer().group_send)(
        conversation_group(project_id=project_id, conversation_id=conversation_id),
        event(payload),
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
        # The call being made: the first, then each tool round's (see ``stream``).
        self.call = pending.call
        self.started = time.monotonic()
        self.separate = False
        self.round_text_from = 0
        # The request (or socket frame) that asked for the reply: its id goes on every line the
        # reply's task logs, its later rounds' upstream calls included (core.logging).
        self.request_id = current_request_id()

    @property
    def message_id(self) -> int:
        return self.pending.assistant_message_id

    async def broadcast(self, payload: dict[str, Any]) -> None:
        if self.listener is not None:
            self.listener.put_nowait(payload)
        await self.layer.group_send(self.group, event(payload))

    async def run(self) -> None:
        if self.request_id is not None:  # this task's own context (core.detached)
            bind_request_id(self.request_id)
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
        started = self.started = time.monotonic()
        state = Message.State.ERROR
        failure: ServiceError | None = None
        try:
            self.stream_task = asyncio.create_task(self.stream(started))
            if self.stop_requested:  # a stop that came before the stream began
                self.stream_task.cancel()
            await self.stream_task
            state = Message.State.COMPLETE
            if self.pending.moderation is not None:
                failure = await self.screen_reply(self.pending.moderation)
                if failure is not None:
                    state = Message.State.ERROR
        except asyncio.CancelledError:
            if not self.stop_requested:  # the server is shutting down: keep what we have
                state, failure = Message.State.INCOMPLETE, ServiceError(code="interrupted")
                raise
            state = Message.State.STOPPED
            self.outcome.finish_reason = "stop_requested"
        except ProviderError as exc:  # every upstream failure, whatever it sent (metering)
            failure = metering.upstream_failure(exc, partial=bool(self.length))
        except ToolLoopBound as bound:  # the reply is what the rounds wrote, with a note
            state = Message.State.INCOMPLETE
            failure = ServiceError(bound.note, code="tool_limit")
        except ServiceError as refusal:  # a later round refused (a budget): what came stays
            failure = refusal
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
        """The reply's upstream calls: one, and one more after each round of tool calls (each
        reserved, capped and settled on its own: one ledger row per call), within the bounds
        of CHAT_TOOL_MAX_ROUNDS and CHAT_TOOL_LOOP_SECONDS."""
        round_number = 0
        try:
            while True:
                calls = await self.stream_round()
                if not calls:
                    return
                round_number += 1
                await self.run_tools(calls, round_number=round_number, started=started)
        finally:
            if self.pending.toolset is not None:
                await self.pending.toolset.aclose()

    async def stream_round(self) -> list[dict[str, str]]:
        """One upstream call, its text broadcast as it comes; the tool calls it asked for."""
        last_flush = time.monotonic()
        calls: dict[int, dict[str, str]] = {}
        self.separate = bool(self.length)  # a later round's text starts a new paragraph
        async with leased_provider(self.call.spec) as provider:
            events = metering.stream_capped(self.call, provider, self.outcome)
            # aclosing: a cancelled or failed reply closes the stream at once, which is what
            # frees the local model for the next request (a dropped generator would not).
            async with contextlib.aclosing(events) as stream:
                async for item in stream:
                    if isinstance(item, ToolCallDelta):
                        call = calls.setdefault(item.index, {"id": "", "name": "", "arguments": ""})
                        call["id"] = item.id or call["id"]
                        call["name"] = item.name or call["name"]
                        call["arguments"] += item.arguments
                        continue
                    await self.handle(item, self.started)
                    if isinstance(item, TextDelta) and (
                        time.monotonic() - last_flush >= settings.CHAT_FLUSH_INTERVAL
                    ):
                        last_flush = time.monotonic()
                        await db_async(services.reply_flush)(
                            message_id=self.message_id, content="".join(self.text)
                        )
        if self.outcome.finish_reason == "length" or self.pending.toolset is None:
            return []  # a call cut off mid-arguments is not one to run
        asked = [calls[index] for index in sorted(calls) if calls[index]["name"]]
        for call in asked:  # the next round sends the results back by id: each needs one
            call["id"] = call["id"] or f"call_{uuid.uuid4().hex[:24]}"
        return asked

    async def run_tools(
        self, calls: list[dict[str, str]], *, round_number: int, started: float
    ) -> None:
        """Settle the round, run its calls (each shown as it starts and ends), keep them, and
        reserve the next round with their results; or stop at the loop's bounds."""
        await asyncio.shield(
            db_async(services.reply_round_settle)(
                pending=self.pending, call=self.call, outcome=self.outcome
            )
        )
        over_time = time.monotonic() - started >= settings.CHAT_TOOL_LOOP_SECONDS
        if round_number > settings.CHAT_TOOL_MAX_ROUNDS or over_time:
            note = (
                _("Stopped after %(rounds)s rounds of tool calls (the limit).")
                % {"rounds": settings.CHAT_TOOL_MAX_ROUNDS}
                if not over_time
                else _("Stopped: the tool calls took longer than %(seconds)s s in all.")
                % {"seconds": f"{settings.CHAT_TOOL_LOOP_SECONDS:g}"}
            )
            runs = [
                services.ToolRun(
                    call_id=call["id"],
                    name=call["name"],
                    arguments=call["arguments"],
                    result=str(_("Not run: %(note)s") % {"note": note}),
                    is_error=True,
                    duration_ms=0,
                )
                for call in calls
            ]
            await self.keep_round(runs, round_number)
            raise ToolLoopBound(note)
        toolset = self.pending.toolset
        if toolset is None:  # stream_round asks for no call without tools
            raise RuntimeError("tool calls without a toolset")
        # An upstream asking for more calls at once than we run gets the rest back unrun.
        extra = calls[settings.CHAT_TOOL_MAX_CALLS :]
        calls = calls[: settings.CHAT_TOOL_MAX_CALLS]
        context = ToolContext(
            project_id=self.pending.project_id,
            user_id=self.pending.user_id,
            api_key_id=self.call.context.api_key_id,
            conversation_id=self.pending.conversation_id,
        )

        async def run(call: dict[str, str]) -> services.ToolRun:
            await self.broadcast(
                {
                    "type": "tool.call",
                    "message_id": self.message_id,
                    "call": {
                        "call_id": call["id"],
                        "name": call["name"],
                        "arguments": call["arguments"],
                        "round": round_number,
                    },
                }
            )
            begun = time.monotonic()
            result = await toolset.run(
                name=call["name"], arguments=call["arguments"], context=context
            )
            return services.ToolRun(
                call_id=call["id"],
                name=call["name"],
                arguments=call["arguments"],
                result=result.content,
                is_error=result.is_error,
                duration_ms=int((time.monotonic() - begun) * 1000),
            )

        runs = list(await asyncio.gather(*(run(call) for call in calls)))
        runs += [
            services.ToolRun(
                call_id=call["id"],
                name=call["name"],
                arguments=call["arguments"],
                result=_("Not run: at most %(count)s tool calls at once.")
                % {"count": settings.CHAT_TOOL_MAX_CALLS},
                is_error=True,
                duration_ms=0,
            )
            for call in extra
        ]
        saved = await self.keep_round(runs, round_number)
        for call in saved:
            await self.broadcast(
                {
                    "type": "tool.result",
                    "message_id": self.message_id,
                    "call": services.serialize_tool_call(call),
                }
            )
        text = "".join(self.text[self.round_text_from :])
        self.round_text_from = len(self.text)
        messages = [
            *self.call.request.messages,
            {
                "role": "assistant",
                "content": text or None,
                "tool_calls": [
                    {
                        "id": run.call_id,
                        "type": "function",
                        "function": {"name": run.name, "arguments": run.arguments},
                    }
                    for run in runs
                ],
            },
            *({"role": "tool", "tool_call_id": run.call_id, "content": run.result} for run in runs),
        ]
        self.call = await db_async(services.reply_next_round)(
            pending=self.pending, messages=messages, previous=self.call
        )
        self.outcome = metering.Outcome()

    async def keep_round(self, runs: list[services.ToolRun], round_number: int) -> list[ToolCall]:
        return await asyncio.shield(
            db_async(services.reply_tools_record)(
                pending=self.pending,
                round_number=round_number,
                runs=runs,
                content="".join(self.text),
            )
        )

    async def handle(self, item: object, started: float) -> None:
        if isinstance(item, Waiting):
            await self.broadcast(
                {"type": "waiting", "message_id": self.message_id, "position": item.position}
            )
        elif isinstance(item, TextDelta):
            if not self.length:
                self.first_token_ms = int((time.monotonic() - started) * 1000)
            text = item.text
            if self.separate and text:
                text, self.separate = "\n\n" + text, False
            self.text.append(text)
            self.unsent.append(text)
            self.length += len(text)
            await self.send_delta()

    async def send_delta(self, *, force: bool = False) -> None:
        """Broadcast the text not sent yet, at most once per CHAT_DELTA_INTERVAL.

        Every frame costs a channel-layer message, a socket frame and a DOM update per open tab,
        and on a 2-core machine that is CPU the local model is waiting for. Tokens that come
        closer together than the interval go out together; a timer sends what is left.
        """
        if not self.unsent or self.pending.moderation is not None:
            return  # a reply checked before it is shown goes out whole, with ``done``
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
                # Held back until checked: a newcomer gets no more than the others have.
                text = "" if self.pending.moderation is not None else "".join(self.text)
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

    async def screen_reply(self, config: moderation.ModerationConfig) -> ServiceError | None:
        """Check the finished reply (a metered call like any other); flagged, or not checkable,
        it is withheld: its text is not saved or shown (the flag keeps its start, for the
        project's managers), and it is billed as generated."""
        text = "".join(self.text)
        try:
            verdict = await moderation.screen(
                config=config,
                context=self.call.context,
                spec=self.call.spec,
                text=text,
                detached=True,
            )
        except ServiceError as error:  # the check failed, or a budget refused it
            withheld = ServiceError(
                _("The reply was withheld: it could not be checked.") + " " + error.message,
                code=error.code,
                retry_after=error.retry_after,
            )
        else:
            if not verdict.flagged:
                return None
            context = self.call.context
            await db_async(moderation.flag_record)(
                project_id=self.pending.project_id,
                source=ModerationFlag.Source.API
                if context.api_key_id
                else ModerationFlag.Source.CHAT,
                target=ModerationFlag.Target.REPLY,
                verdict=verdict,
                text=text,
                conversation_id=self.pending.conversation_id,
                message_id=self.message_id,
                user_id=context.user_id,
                api_key_id=context.api_key_id,
            )
            withheld = ServiceError(
                _("The reply was withheld: moderation flagged it for %(categories)s.")
                % {"categories": ", ".join(verdict.categories)},
                code="reply_flagged",
            )
        self.text, self.length = [], 0
        return withheld

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
                call=self.call,
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
