"""A message from the composer (the socket) or the REST API, on its way in: screened by the
project's moderation when it has that on, then saved and answered (``rooms.message_post``).

The screening is an upstream call of its own (metered like any other), so it runs here, on the
event loop, before the message's transaction: never inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from billing.models import UsageRecord
from billing.services import CallContext
from core.db import db_async
from providers.specs import ProviderSpec, spec_for

from . import moderation, rooms, services
from .actors import Actor
from .models import Message


class MessageFlagged(moderation.ContentFlagged):
    """The message was flagged: kept (``saved``, as the socket shows it), never sent."""

    def __init__(self, categories: list[str], *, saved: dict[str, Any]) -> None:
        super().__init__(categories)
        self.saved = saved


@dataclass(frozen=True)
class Screening:
    config: moderation.ModerationConfig
    context: CallContext
    spec: ProviderSpec


def screening_for(*, actor: Actor, conversation_id: int, project_id: int) -> Screening | None:
    """How a message to this conversation is to be checked; None when it is not (moderation
    off, or a refusal to come anyway: no such conversation, a reply still being written).
    Moderation off (the settings kept in memory): no query at all."""
    config = moderation.config_for(project_id)
    if not config.enabled:
        return None
    conversation = (
        actor.conversations()
        .select_related("project")
        .filter(pk=conversation_id, project_id=project_id)
        .first()
    )
    if conversation is None:
        return None
    if conversation.messages.filter(state=Message.State.STREAMING).exists():
        return None  # refused as busy by message_post: nothing to check
    spec = spec_for(project=conversation.project, model=conversation.model)
    return Screening(
        config=config,
        spec=spec,
        context=CallContext(
            organization_id=conversation.project.organization_id,
            project_id=conversation.project_id,
            user_id=actor.user_id,
            model=conversation.model,
            source=UsageRecord.Source.API if actor.api_key else UsageRecord.Source.CHAT,
            conversation_id=conversation.pk,
            connection_id=spec.connection_id,
            api_key_id=actor.api_key_id,
        ),
    )


async def post_message(
    *,
    actor: Actor,
    conversation_id: int,
    project_id: int,
    content: object,
    attachments: object = None,
    detached: bool = False,
) -> rooms.RoomPost:
    """Screen, then post. Raises ``MessageFlagged`` (the message kept, flagged, unanswered),
    ``ModerationUnavailable`` (the check failed: nothing kept), or what ``message_post`` and
    the check's reservation refuse. ``detached``: from a socket's consumer (``core.db``)."""
    screening = await db_async(screening_for)(
        actor=actor, conversation_id=conversation_id, project_id=project_id
    )
    if screening is not None and isinstance(content, str):
        verdict = await moderation.screen(
            config=screening.config,
            context=screening.context,
            spec=screening.spec,
            text=content,
            detached=detached,
        )
        if verdict.flagged:
            message = await db_async(moderation.message_refuse)(
                actor=actor, conversation_id=conversation_id, content=content, verdict=verdict
            )
            saved = await db_async(services.serialize_message)(message, attachments=[])
            raise MessageFlagged(verdict.categories, saved=saved)
    return await db_async(rooms.message_post)(
        actor=actor, conversation_id=conversation_id, content=content, attachments=attachments
    )
