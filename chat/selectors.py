"""Reads of conversations and messages, always scoped to the user asking."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import Http404

from accounts.models import AnyUser, Project, User
from billing.models import UsageRecord
from billing.pricing import cost_units_sum, units_to_cost
from providers import selectors as provider_selectors

from .actors import Actor
from .models import Conversation, ConversationQuerySet, Message, Persona


def conversations_for_user(user: AnyUser) -> ConversationQuerySet:
    return Conversation.objects.for_user(user)


def sidebar_conversations(
    *, user: AnyUser, project: Project, query: str = "", limit: int = 100
) -> QuerySet[Conversation]:
    """The user's private conversations in a project, newest activity first, searched by title
    and text (rooms are listed apart: ``rooms_for_user``)."""
    qs = conversations_for_user(user).for_project(project).private().filter(archived=False)
    if query:
        in_messages = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=query)
        qs = qs.filter(Q(title__icontains=query) | Exists(in_messages))
    return qs.order_by("-last_message_at", "-id")[:limit]


def get_conversation_or_404(*, user: AnyUser, project: Project, pk: int) -> Conversation:
    try:
        return conversations_for_user(user).for_project(project).get(pk=pk)
    except Conversation.DoesNotExist:
        raise Http404("No such conversation.") from None


# How the REST API may order a project's conversations.
CONVERSATION_ORDERINGS = {
    "-last_message_at": ("-last_message_at", "-id"),
    "last_message_at": ("last_message_at", "id"),
    "-created_at": ("-created_at", "-id"),
    "created_at": ("created_at", "id"),
    "title": ("title", "id"),
    "-title": ("-title", "-id"),
}


def api_conversations(
    *,
    actor: Actor,
    project: Project,
    q: str = "",
    model: str | None = None,
    archived: bool | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    ordering: str = "-last_message_at",
) -> QuerySet[Conversation]:
    """The actor's conversations in a project, filtered as the REST API's list allows."""
    qs = actor.conversations().for_project(project)
    if q:
        in_messages = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=q)
        qs = qs.filter(Q(title__icontains=q) | Exists(in_messages))
    if model:
        qs = qs.filter(model=model)
    if archived is not None:
        qs = qs.filter(archived=archived)
    if created_after is not None:
        qs = qs.filter(created_at__gte=created_after)
    if created_before is not None:
        qs = qs.filter(created_at__lt=created_before)
    return qs.order_by(*CONVERSATION_ORDERINGS[ordering])


def get_actor_conversation_or_404(*, actor: Actor, project: Project, pk: int) -> Conversation:
    conversation = actor.conversations().for_project(project).filter(pk=pk).first()
    if conversation is None:
        raise Http404("No such conversation.")
    return conversation


def get_message(*, conversation: Conversation, pk: int) -> Message | None:
    return conversation.messages.filter(pk=pk).first()


def get_conversation_for_user(*, user: AnyUser, pk: int) -> Conversation | None:
    """For the socket, whose URL names only the conversation."""
    return (
        conversations_for_user(user).select_related("project__organization").filter(pk=pk).first()
    )


def message_window(
    conversation: Conversation, *, before: int | None = None, size: int | None = None
) -> tuple[list[Message], bool]:
    """The latest ``size`` messages (before message id ``before``), oldest first, and whether
    older ones exist. Two queries however long the conversation is."""
    size = size or settings.CHAT_PAGE_SIZE
    # Rooms show each message's author and each reply's persona: joined, not one query each.
    qs = conversation.messages.select_related("author", "persona")
    if before is not None:
        qs = qs.filter(pk__lt=before)
    newest_first = list(qs.order_by("-id")[: size + 1])
    has_older = len(newest_first) > size
    return list(reversed(newest_first[:size])), has_older


def allowed_models(project: Project) -> list[str]:
    """Names of the models a project's members may pick, the default first."""
    return provider_selectors.allowed_model_names(project)


def default_model(project: Project) -> str | None:
    return provider_selectors.default_model_name(project)


def streaming_message(conversation: Conversation) -> Message | None:
    return conversation.messages.filter(state=Message.State.STREAMING).order_by("-id").first()


def history_for_prompt(conversation: Conversation, *, before: int | None) -> QuerySet[Message]:
    """Earlier messages that can go into a prompt, newest first (read lazily, in chunks): those
    after the running summary (it is sent in their place), at most ``history_limit`` of them
    when the conversation keeps only its last N. ``before=None``: up to the latest."""
    qs = conversation.messages.filter(role__in=["user", "assistant"]).exclude(content="")
    if before is not None:
        qs = qs.filter(pk__lt=before)
    if conversation.summary_through is not None:
        qs = qs.filter(pk__gt=conversation.summary_through)
    qs = (
        qs.order_by("-id")
        .select_related("author")
        .only("id", "role", "content", "author__name", "author__email")
    )
    return qs[: conversation.history_limit] if conversation.history_limit else qs


def message_costs(message_ids: list[int]) -> dict[int, Decimal]:
    """What each reply cost, from the ledger (one query for a page of messages)."""
    rows = (
        # Title calls have no message: only the replies' own rows.
        UsageRecord.objects.filter(message_id__in=message_ids)
        .values("message_id")
        .annotate(units=cost_units_sum())
    )
    return {row["message_id"]: units_to_cost(row["units"]) for row in rows}


def conversation_cost(conversation: Conversation) -> Decimal:
    """Everything the conversation cost so far: replies and its title."""
    total = UsageRecord.objects.filter(conversation=conversation).aggregate(units=cost_units_sum())
    return units_to_cost(total["units"])


def speaker_name(user: User | None) -> str:
    """How a person is named to the model and in a room: their name, never their address (the
    part before the @ when they gave no name)."""
    if user is None:
        return "Someone"
    return user.name or user.email.split("@")[0]


def rooms_for_user(*, user: AnyUser, project: Project) -> QuerySet[Conversation]:
    """The rooms of a project the user is in, most recent activity first."""
    return (
        conversations_for_user(user)
        .for_project(project)
        .rooms()
        .filter(archived=False)
        .select_related("owner")
        .order_by("-last_message_at", "-id")
    )


def room_shares(conversation: Conversation) -> tuple[Decimal, list[tuple[str, Decimal]]]:
    """What a room's bot replies cost in all, and each caller's share (from the ledger: the
    person who called a persona pays for its reply)."""
    rows = (
        UsageRecord.objects.filter(conversation_id=conversation.pk)
        .values("user_id")
        .annotate(units=cost_units_sum())
        .order_by()
    )
    by_user = {row["user_id"]: units_to_cost(row["units"]) for row in rows}
    people = {u.pk: u for u in User.objects.filter(pk__in=[k for k in by_user if k])}
    shares = sorted(
        ((speaker_name(people.get(user_id)) if user_id else "API", cost)
         for user_id, cost in by_user.items()),
        key=lambda share: (-share[1], share[0]),
    )  # fmt: skip
    return sum(by_user.values(), Decimal(0)), shares


def project_people(project: Project) -> QuerySet[User]:
    """Everyone who can open the project's rooms: its organization's members."""
    return User.objects.filter(
        memberships__organization_id=project.organization_id, is_active=True
    ).order_by("name", "email")


def persona_tags(project: Project) -> list[dict[str, str]]:
    """The enabled personas' tags, for the composer's autocomplete."""
    return [
        {"tag": p.tag, "name": p.name, "avatar": p.avatar, "description": p.description}
        for p in Persona.objects.for_project(project).enabled().order_by("tag")
    ]
