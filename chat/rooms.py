"""Rooms: conversations shared with chosen members of the project, or with all of it.

People's messages to each other are plain messages: saved and shown to everyone in the room,
never sent to a model, never billed. A message that starts with a persona's @tag makes that
persona answer, streamed to everyone, reserved and billed to the person who called it. The
model sees the room's recent history with each speaker's name (``services._said``), so it
"remembers" what people told each other.

Only the room's maker changes who is in it; anyone in a room shared with chosen members may
leave it. Every write re-resolves the room through the caller's scoped path, so a person
removed from it (or from the organization) is cut off at once; their open sockets are closed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from accounts.models import Project, User
from billing.services import rate_take
from core.errors import ServiceError

from . import personas, services
from .actors import Actor
from .models import Conversation, Message, RoomMember
from .streaming import announce_removed

Sharing = Conversation.Sharing


@dataclass(frozen=True)
class RoomPost:
    """A message posted to a room: saved; with ``pending`` when it called a persona."""

    message: dict[str, Any]  # serialized, as broadcast
    pending: services.PendingReply | None
    notice: str = ""  # said only to the sender (e.g. "@nobody names no persona")


def _check_sharing(sharing: object) -> str:
    if sharing not in Sharing.values:
        choices = ", ".join(Sharing.values)
        raise ServiceError(
            _("Sharing is one of: %(choices)s.") % {"choices": choices}, param="sharing"
        )
    return str(sharing)


def _project_people(project: Project, user_ids: Iterable[object]) -> list[User]:
    """The people with these ids, each of whom must belong to the project's organization (an
    id outside it reads as unknown: it tells nothing about other tenants)."""
    wanted: set[int] = set()
    for user_id in user_ids:
        if not isinstance(user_id, int) or isinstance(user_id, bool):
            raise ServiceError(_("Members are given by their user ids."), param="members")
        wanted.add(user_id)
    people = list(
        User.objects.filter(
            pk__in=wanted, memberships__organization_id=project.organization_id, is_active=True
        )
    )
    if len(people) != len(wanted):
        raise ServiceError(
            _("Rooms can be shared only with people in this project's organization."),
            code="not_found",
            param="members",
        )
    return people


def check_maker(*, actor: Actor, conversation: Conversation) -> None:
    """In a room only its maker renames it, changes its settings or deletes it."""
    if conversation.is_room and (actor.user is None or conversation.owner_id != actor.user_id):
        raise ServiceError(
            _("Only the person who made this room can change or delete it."), code="not_room_owner"
        )


def _own_room(*, actor: Actor, conversation_id: int) -> Conversation:
    conversation = services._resolve(actor=actor, conversation_id=conversation_id)
    if actor.user is None or conversation.owner_id != actor.user_id:
        raise ServiceError(code="not_room_owner")
    return conversation


def members_of(conversation: Conversation) -> QuerySet[User]:
    """Everyone who can open the room: its maker and the chosen members, or the whole
    organization for a room shared with the project."""
    if conversation.sharing == Sharing.PROJECT:
        return User.objects.filter(
            memberships__organization_id=conversation.project.organization_id, is_active=True
        ).order_by("name", "email")
    chosen = RoomMember.objects.filter(conversation=conversation).values("user_id")
    # The organization check stays: members_of never widens what ``for_user`` allows.
    return User.objects.filter(
        Q(pk__in=chosen) | Q(pk=conversation.owner_id),
        memberships__organization_id=conversation.project.organization_id,
        is_active=True,
    ).order_by("name", "email")


@transaction.atomic
def room_share(
    *, actor: Actor, conversation_id: int, sharing: object, member_ids: Iterable[object] = ()
) -> Conversation:
    """Make a conversation a room (or private again), and with ``members`` sharing, add these
    people. Only its maker may."""
    conversation = _own_room(actor=actor, conversation_id=conversation_id)
    conversation.sharing = _check_sharing(sharing)
    conversation.save(update_fields=["sharing", "updated_at"])
    people = _project_people(conversation.project, member_ids)
    if conversation.sharing == Sharing.MEMBERS:
        _add(conversation, people)
    elif people:
        raise ServiceError(
            _("Members are chosen only for a room shared with chosen members."), param="members"
        )
    if conversation.sharing == Sharing.PRIVATE:
        # Nobody but the maker may stay: their sockets close now.
        gone = [
            user_id
            for user_id in RoomMember.objects.filter(conversation=conversation).values_list(
                "user_id", flat=True
            )
            if user_id != conversation.owner_id
        ]
        RoomMember.objects.filter(conversation=conversation).delete()
        for user_id in gone:
            _cut_off(conversation, user_id)
    return conversation


@transaction.atomic
def room_create(
    *,
    actor: Actor,
    project: Project,
    title: str = "",
    sharing: object = Sharing.PROJECT,
    member_ids: Iterable[object] = (),
    model: str | None = None,
) -> Conversation:
    if actor.user is None:
        raise ServiceError(
            _("Rooms are for people; API keys use conversations."), code="keys_not_allowed"
        )
    if _check_sharing(sharing) == Sharing.PRIVATE:
        raise ServiceError(
            _("A room is shared: choose members or the whole project."), param="sharing"
        )
    conversation = services.conversation_create(actor=actor, project=project, model=model)
    if title.strip():
        services.conversation_rename(conversation=conversation, title=title)
    return room_share(
        actor=actor, conversation_id=conversation.pk, sharing=sharing, member_ids=member_ids
    )


def _add(conversation: Conversation, people: list[User]) -> None:
    RoomMember.objects.bulk_create(
        [
            RoomMember(conversation=conversation, user=p)
            for p in people
            if p.pk != conversation.owner_id
        ],
        ignore_conflicts=True,
    )


@transaction.atomic
def room_add_members(*, actor: Actor, conversation_id: int, member_ids: Iterable[object]) -> None:
    conversation = _own_room(actor=actor, conversation_id=conversation_id)
    if conversation.sharing != Sharing.MEMBERS:
        raise ServiceError(
            _("Only a room shared with chosen members takes members one by one."),
            code="not_a_room" if not conversation.is_room else "invalid",
            param="sharing",
        )
    _add(conversation, _project_people(conversation.project, member_ids))


@transaction.atomic
def room_remove_member(*, actor: Actor, conversation_id: int, user_id: object) -> None:
    """The maker removes someone, or anyone removes themselves (leaves). Cut off at once."""
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        raise ServiceError(_("A member is given by their user id."), param="user")
    conversation = services._resolve(actor=actor, conversation_id=conversation_id)
    leaving = actor.user is not None and user_id == actor.user_id
    if not leaving and conversation.owner_id != actor.user_id:
        raise ServiceError(code="not_room_owner")
    if conversation.sharing != Sharing.MEMBERS:
        raise ServiceError(
            _("Everyone in the project is in this room: share it with chosen members first.")
            if conversation.sharing == Sharing.PROJECT
            else "This conversation is not shared.",
            code="not_a_room" if not conversation.is_room else "invalid",
        )
    if user_id == conversation.owner_id:
        raise ServiceError(
            _("The room's maker cannot leave it; make it private or delete it instead."),
            param="user",
        )
    removed, _by_model = RoomMember.objects.filter(
        conversation=conversation, user_id=user_id
    ).delete()
    if not removed:
        raise ServiceError(_("That person is not in this room."), code="not_found", param="user")
    _cut_off(conversation, user_id)


def _cut_off(conversation: Conversation, user_id: int) -> None:
    transaction.on_commit(
        partial(
            announce_removed,
            project_id=conversation.project_id,
            conversation_id=conversation.pk,
            user_id=user_id,
        )
    )


def _mention_rest(content: str) -> str:
    """The message without its leading @tag: what the persona is asked."""
    _tag, _space, rest = content.lstrip().partition(" ")
    # "@summary" alone: the persona works on the room so far (its prompt says how).
    return rest.strip() or "(Called without a message: do your task on the conversation so far.)"


@transaction.atomic
def room_post(*, actor: Actor, conversation_id: int, content: object) -> RoomPost:
    """A message to a room: plain, or a call to the persona its @tag names."""
    content = services.check_content(content)
    conversation = services._resolve(actor=actor, conversation_id=conversation_id)
    if not conversation.is_room:
        raise ServiceError(code="not_a_room")
    persona, tag = personas.parse_mention(project=conversation.project, text=content)
    if persona is not None and not persona.enabled:
        raise ServiceError(
            _("@%(tag)s is turned off in this project; ask an admin to turn it on.")
            % {"tag": persona.tag},
            code="persona_disabled",
        )
    if persona is None:
        rate_take(
            bucket=f"room:{conversation.pk}:user:{actor.user_id}",
            allowed=settings.CHAT_ROOM_MESSAGES_PER_MINUTE,
            what=gettext_noop("Messages to one room"),
        )
    else:
        services._check_not_busy(conversation)
        rate_take(
            bucket=f"persona-calls:project:{conversation.project_id}:user:{actor.user_id}",
            allowed=settings.CHAT_MEMBER_PERSONA_CALLS_PER_MINUTE,
            what=gettext_noop("Persona calls per person"),
        )
    message = Message.objects.create(
        conversation=conversation,
        parent=services.branch_leaf(conversation),  # a room is one branch: no versions
        role=Message.Role.USER,
        content=content,
        author=actor.user,
    )
    if persona is None:
        conversation.last_message_at = timezone.now()
        conversation.save(update_fields=["last_message_at", "updated_at"])
        notice = (
            f"No persona is called @{tag} in this project: sent as a plain message." if tag else ""
        )
        return RoomPost(
            message=services.serialize_message(message, attachments=[]),
            pending=None,
            notice=notice,
        )
    pending = services._begin_reply(
        conversation=conversation,
        actor=actor,
        user_message=message,
        added=True,
        persona=persona,
        asked=_mention_rest(content),
        images=[],
    )
    return RoomPost(message=services.serialize_message(message, attachments=[]), pending=pending)


@transaction.atomic
def message_post(
    *, actor: Actor, conversation_id: int, content: object, attachments: object = None
) -> RoomPost:
    """A message from the composer, wherever it was typed: in a room it is plain or calls a
    persona; in a private conversation every message is answered. ``attachments``: the ids of
    images uploaded for it (private conversations only, for now)."""
    conversation = services._resolve(actor=actor, conversation_id=conversation_id)
    if conversation.is_room:
        if attachments:
            raise ServiceError(
                _("Images can be sent in private chats, not in rooms yet."),
                code="not_in_rooms",
                param="attachments",
            )
        return room_post(actor=actor, conversation_id=conversation_id, content=content)
    pending = services.reply_start(
        actor=actor, conversation_id=conversation_id, content=content, attachments=attachments
    )
    return RoomPost(message=pending.user_message or {}, pending=pending)
