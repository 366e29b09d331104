"""The conversation socket, ``/ws/conversations/<id>/``.

Session, Origin (in ``config.asgi``) and ownership are checked before ``accept()``: anything
else is refused during the handshake, the same for another tenant's conversation as for one
that does not exist.

Client → server (JSON objects):
  ``{"type": "message", "content": "…", "attachments": [7]}``
                                                          a new message (with the images
                                                          uploaded for it), then the reply (in
                                                          a room, only when it starts with a
                                                          persona's @tag)
  ``{"type": "typing"}``                                  in a room: I am typing
  ``{"type": "stop"}``                                    cut the reply short
  ``{"type": "regenerate", "message_id": 13}``            a new version of this reply (any
                                                          reply on the current branch; without
                                                          an id, the last one)
  ``{"type": "edit", "message_id": 12, "content": "…"}``  a new version of this message of
                                                          mine, answered again
  ``{"type": "select", "message_id": 14}``                show this version of its turn (the
                                                          branch, and later prompts, follow it)
  ``{"type": "model", "model": "gpt-4o"}``                answer with this model from now on
  ``{"type": "sync"}``                                    send me the reply so far again

A regenerate or an edit keeps the version it replaces, and the turns after it, on their own
branch: ``message.versions`` (``{"index", "count", "previous", "next"}``, on the new version)
says which version is shown, and ``select`` browses them.

Server → client (to every socket on the conversation unless noted):
  ``message``            ``{"message": {...}}`` the user's message, saved (with its id)
  ``truncate``           ``{"from": id}`` messages with this id or later left the branch
                         shown (a regenerate or an edit: the new version follows)
  ``branch``             ``{"message_id", "from"}`` another version was selected: the
                         transcript reads differently from message ``from`` on (read it again)
  ``model``              ``{"model"}`` the conversation now answers with this model
  ``assistant.started``  ``{"message": {"id", "model", "versions"}, "omitted_messages": n}``
  ``waiting``            ``{"message_id", "position"}`` queued behind ``position`` replies
                         for the local model (sent again as it moves up)
  ``delta``              ``{"message_id", "offset", "text"}``; offset counts characters
  ``snapshot``           ``{"message_id", "text", "offset", "model"}`` (only to the asker)
  ``tool.call``          ``{"message_id", "call": {"call_id", "name", "arguments", "round"}}``
                         the reply calls a tool (it runs on the server)
  ``tool.result``        ``{"message_id", "call": {..., "result", "is_error", "duration_ms"}}``
  ``done``               ``{"message": {...}}`` content, rendered html, usage, finish_reason,
                         tool_calls, json_valid / json_error (a reply asked for as JSON)
  ``error``              ``{"code", "message", "retryable", ...}``; for a request this socket
                         made that was refused before anything ran, only to this socket
  ``notice``             ``{"message"}`` only to the sender (a tag that names no persona)
  ``typing``             ``{"user": {"id", "name"}}`` in a room, someone is typing
  ``presence``           ``{"user": {"id", "name"}, "here": bool}`` in a room, someone opened
                         or closed it (a newcomer hears from everyone already there)
  ``removed``            ``{"message"}`` you were removed from the room; the socket closes
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import structlog
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from accounts.two_factor import two_factor_satisfied
from core.db import db_async
from core.errors import ServiceError, public_code, retryable
from core.logging import bound_request_id

from . import posting, selectors, services
from .actors import Actor
from .streaming import control_group, conversation_group, start_reply

TYPING_EVERY = 2.0  # seconds between two "typing" events of one socket
# Frames sent all the time that change nothing: their lines are DEBUG only.
QUIET_FRAMES = frozenset({"typing", "sync"})

log = structlog.get_logger(__name__)


class ConversationConsumer(AsyncJsonWebsocketConsumer):
    # Frame type -> handler. tests/test_tenancy.py walks it: a new frame that names an object
    # fails there until an outsider's attempt at it is covered.
    FRAMES = {
        "message": "on_message",
        "stop": "on_stop",
        "regenerate": "on_regenerate",
        "edit": "on_edit",
        "select": "on_select",
        "model": "on_model",
        "sync": "on_sync",
        "typing": "on_typing",
    }
    # The frame being handled, for its log line: its type, and the code it was refused with.
    frame_kind = "invalid"
    refused: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        conversation = None
        if user is not None and user.is_authenticated:
            conversation = await db_async(selectors.get_conversation_for_user)(
                user=user, pk=int(self.scope["url_route"]["kwargs"]["conversation_id"])
            )
        if conversation is not None and not two_factor_satisfied(
            user=user, organization=conversation.project.organization
        ):
            conversation = None  # the organization requires two-factor authentication of them
        if conversation is None:
            await self.close()  # before accept: the handshake is refused
            return
        self.actor = Actor(user=user)
        self.user_id = user.pk
        self.who = {"id": user.pk, "name": selectors.speaker_name(user)}
        self.is_room = conversation.is_room
        self.last_typing = 0.0
        self.conversation_id = conversation.pk
        self.project_id = conversation.project_id
        ids = {"project_id": conversation.project_id, "conversation_id": conversation.pk}
        self.group = conversation_group(**ids)
        self.control_group = control_group(**ids)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        if self.is_room:
            await self.broadcast({"type": "presence", "user": self.who, "here": True})
            await self.channel_layer.group_send(
                self.group, {"type": "chat.who", "reply_to": self.channel_name}
            )
        await db_async(services.streams_expire_stale)(conversation=conversation)
        if await db_async(selectors.streaming_message)(conversation):
            await self.request_sync()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
            if self.is_room:
                await self.broadcast({"type": "presence", "user": self.who, "here": False})
        # The reply, if any, goes on: it is saved and the other tabs still see it.

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        # A frame is a request of its own: its id is on every line it causes (the reply's
        # upstream calls included), and it is logged as one line, a refusal with its code.
        with bound_request_id():
            self.frame_kind, self.refused = "invalid", None
            try:
                await super().websocket_receive(message)
            finally:
                self.log_frame()

    def log_frame(self) -> None:
        level = logging.DEBUG if self.frame_kind in QUIET_FRAMES else logging.INFO
        fields: dict[str, Any] = {
            "type": self.frame_kind,
            "conversation_id": getattr(self, "conversation_id", None),
        }
        if self.refused is not None:
            level, fields["code"] = logging.WARNING, self.refused
        log.log(level, "socket_frame", **fields)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            frame = json.loads(text_data or "")
        except ValueError:
            await self.send_error("bad_frame", "That frame is not JSON.")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            await self.send_error("bad_frame", 'A frame is a JSON object with a "type".')
            return
        name = self.FRAMES.get(frame["type"])
        if name is None:
            await self.send_error("bad_frame", f"Unknown frame type {frame['type']!r}.")
            return
        self.frame_kind = frame["type"]  # one of ours (never text the client made up)
        await getattr(self, name)(frame)

    async def on_message(self, frame: dict[str, Any]) -> None:
        try:
            post = await posting.post_message(
                actor=self.actor,
                conversation_id=self.conversation_id,
                project_id=self.project_id,
                content=frame.get("content"),
                attachments=frame.get("attachments"),
                detached=True,
            )
        except posting.MessageFlagged as flagged:  # kept, flagged: every tab shows it
            await self.broadcast({"type": "message", "message": flagged.saved})
            await self.send_error(flagged.code, flagged.message)
            return
        except ServiceError as error:
            await self.send_error(error.code, error.message, retry_after=error.retry_after)
            return
        await self.broadcast({"type": "message", "message": post.message})
        if post.notice:
            await self.send_json({"type": "notice", "message": post.notice})
        if post.pending is not None:
            start_reply(post.pending)

    async def on_typing(self, frame: dict[str, Any]) -> None:
        # Browsers say it on every key press: once every two seconds is enough for the others.
        now = time.monotonic()
        if self.is_room and now - self.last_typing >= TYPING_EVERY:
            self.last_typing = now
            await self.broadcast({"type": "typing", "user": self.who})

    async def chat_who(self, event: dict[str, Any]) -> None:
        """A newcomer asks who is here: every other socket answers it alone."""
        if event["reply_to"] != self.channel_name:
            await self.channel_layer.send(
                event["reply_to"], {"type": "chat.here", "user": self.who}
            )

    async def chat_here(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "presence", "user": event["user"], "here": True})

    async def chat_removed(self, event: dict[str, Any]) -> None:
        if event["user_id"] == self.user_id:
            await self.send_json({"type": "removed", "message": "You were removed from this room."})
            await self.close(code=4403)

    async def on_regenerate(self, frame: dict[str, Any]) -> None:
        await self.begin(
            services.reply_regenerate,
            actor=self.actor,
            conversation_id=self.conversation_id,
            message_id=frame.get("message_id"),
        )

    async def on_select(self, frame: dict[str, Any]) -> None:
        try:
            change = await db_async(services.message_select)(
                actor=self.actor,
                conversation_id=self.conversation_id,
                message_id=frame.get("message_id"),
            )
        except ServiceError as error:
            await self.send_error(error.code, error.message)
            return
        if change.changed_from is not None:
            await self.broadcast(
                {"type": "branch", "message_id": change.message_id, "from": change.changed_from}
            )

    async def on_model(self, frame: dict[str, Any]) -> None:
        try:
            conversation = await db_async(services.conversation_switch_model)(
                actor=self.actor, conversation_id=self.conversation_id, model=frame.get("model")
            )
        except ServiceError as error:
            await self.send_error(error.code, error.message)
            return
        await self.broadcast({"type": "model", "model": conversation.model})

    async def on_edit(self, frame: dict[str, Any]) -> None:
        await self.begin(
            services.reply_edit,
            actor=self.actor,
            conversation_id=self.conversation_id,
            message_id=frame.get("message_id"),
            content=frame.get("content"),
        )

    async def on_stop(self, frame: dict[str, Any]) -> None:
        await self.channel_layer.group_send(self.control_group, {"type": "chat.stop"})
        # A live reply task ends at once; if none answers (its process died), the reply is
        # closed after a grace period, so stop always works. In the background: this consumer
        # must go on forwarding events meanwhile.
        # The check outlives this socket on purpose: Stop then closing the tab still closes an
        # orphaned reply. It is bounded: one grace period, then one update.
        self.orphan_check = asyncio.create_task(self.close_orphan_later())

    async def close_orphan_later(self) -> None:
        await asyncio.sleep(settings.CHAT_ORPHAN_GRACE)
        orphan = await db_async(services.reply_close_orphan)(
            actor=self.actor, conversation_id=self.conversation_id
        )
        if orphan is not None:
            message = await db_async(services.serialize_message)(orphan)
            await self.broadcast({"type": "done", "message": message})

    async def on_sync(self, frame: dict[str, Any]) -> None:
        await self.request_sync()

    async def request_sync(self) -> None:
        await self.channel_layer.group_send(
            self.control_group, {"type": "chat.sync", "reply_to": self.channel_name}
        )

    async def begin(self, service, **kwargs: Any) -> None:
        """Run a reply_* service; on success broadcast the turn and start the reply's task."""
        try:
            pending = await db_async(service)(**kwargs)
        except ServiceError as error:
            # A rate limit says when to come back; a budget refusal names its reset in words.
            await self.send_error(
                error.code, error.message, retry_after=getattr(error, "retry_after", None)
            )
            return
        if pending.truncate_from is not None:
            await self.broadcast({"type": "truncate", "from": pending.truncate_from})
        if pending.user_message is not None:
            await self.broadcast({"type": "message", "message": pending.user_message})
        start_reply(pending)

    async def broadcast(self, payload: dict[str, Any]) -> None:
        await self.channel_layer.group_send(self.group, {"type": "chat.event", "payload": payload})

    async def send_error(
        self, code: str, message: str, *, retry_after: float | None = None
    ) -> None:
        self.refused = code  # for the frame's line (websocket_receive)
        # The code's row in the one error table decides whether asking again can help.
        frame = {
            "type": "error",
            "code": public_code(code),
            "message": message,
            "retryable": retryable(code),
        }
        if retry_after is not None:
            frame.update(retryable=True, retry_after=retry_after)
        await self.send_json(frame)

    async def chat_event(self, event: dict[str, Any]) -> None:
        await self.send_json(event["payload"])
