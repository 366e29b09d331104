"""Reads of conversations and messages, always scoped to the user asking."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.http import Http404
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from accounts.models import AnyUser, Project, User
from billing.models import ModelPrice, UsageRecord
from billing.pricing import cost_units_sum, price_for, units_to_cost
from providers import selectors as provider_selectors

from .actors import Actor
from .models import Conversation, ConversationQuerySet, Folder, FolderQuerySet, Message, Persona


def conversations_for_user(user: AnyUser) -> ConversationQuerySet:
    return Conversation.objects.for_user(user)


def sidebar_conversations(
    *,
    user: AnyUser,
    project: Project,
    query: str = "",
    limit: int = 100,
    archived: bool = False,
) -> QuerySet[Conversation]:
    """The user's private conversations in a project, newest activity first, searched by title
    and text (rooms are listed apart: ``rooms_for_user``); the archived ones apart too."""
    qs = conversations_for_user(user).for_project(project).private().filter(archived=archived)
    if query:
        in_messages = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=query)
        qs = qs.filter(Q(title__icontains=query) | Exists(in_messages))
    return qs.order_by("-last_message_at", "-id")[:limit]


def folders_for_user(*, user: AnyUser, project: Project) -> FolderQuerySet:
    return Folder.objects.for_user(user).for_project(project)


def get_folder_or_404(*, user: AnyUser, project: Project, pk: int) -> Folder:
    folder = folders_for_user(user=user, project=project).filter(pk=pk).first()
    if folder is None:
        raise Http404("No such folder.")
    return folder


@dataclass
class SidebarGroup:
    """A heading of the sidebar and the chats under it."""

    label: str | Promise
    conversations: list[Conversation] = field(default_factory=list)
    folder: Folder | None = None


@dataclass
class Sidebar:
    pinned: list[Conversation]
    folders: list[SidebarGroup]  # every folder of the user's, empty ones too
    by_date: list[SidebarGroup]  # the other chats: Today, Yesterday… then by month
    chats: list[Conversation]  # all of them, most recently active first


def date_group(day: date, *, today: date) -> tuple[int, str | Promise]:
    """Where a chat last active on ``day`` is listed: (a sort key, the heading). Today,
    Yesterday, Previous 7 days, Previous 30 days, then one group per month."""
    age = (today - day).days
    if age <= 0:
        return (0, _("Today"))
    if age == 1:
        return (1, _("Yesterday"))
    if age <= 7:
        return (2, _("Previous 7 days"))
    if age <= 30:
        return (3, _("Previous 30 days"))
    return (4 + (today.year - day.year) * 12 + today.month - day.month, month_label(day, today))


def month_label(day: date, today: date) -> str:
    # The year only when it is not this one, as the big chat apps do.
    return date_format(day, "F" if day.year == today.year else "F Y")


def sidebar(
    *, user: AnyUser, project: Project, now: datetime | None = None, limit: int = 200
) -> Sidebar:
    """The user's private chats of a project as the sidebar lists them: pinned first, then
    each folder, then the rest by when they were last active (two queries)."""
    today = timezone.localdate(now) if now is not None else timezone.localdate()
    folders = [
        SidebarGroup(label=f.name, folder=f) for f in folders_for_user(user=user, project=project)
    ]
    by_folder = {group.folder.pk: group for group in folders if group.folder is not None}
    pinned: list[Conversation] = []
    dated: dict[int, SidebarGroup] = {}
    chats = list(sidebar_conversations(user=user, project=project, limit=limit))
    for chat in chats:
        if chat.pinned:
            pinned.append(chat)
        elif chat.folder_id in by_folder:
            by_folder[chat.folder_id].conversations.append(chat)
        else:
            key, label = date_group(timezone.localdate(chat.last_message_at), today=today)
            dated.setdefault(key, SidebarGroup(label=label)).conversations.append(chat)
    return Sidebar(
        pinned=pinned,
        folders=folders,
        by_date=[dated[key] for key in sorted(dated)],
        chats=chats,
    )


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
    qs = (
        conversation.messages.on_branch()
        .select_related("author", "persona")
        .prefetch_related("tool_calls", "attachments")  # a query each, for the whole page
    )
    if before is not None:
        qs = qs.filter(pk__lt=before)
    newest_first = list(qs.order_by("-id")[: size + 1])
    has_older = len(newest_first) > size
    return list(reversed(newest_first[:size])), has_older


@dataclass(frozen=True)
class Versions:
    """Which version of its turn a message is: ``index`` of ``count`` (from 1, oldest first),
    and the versions either side of it."""

    index: int
    count: int
    previous: int | None
    next: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "count": self.count,
            "previous": self.previous,
            "next": self.next,
        }


def versions_of(messages: Iterable[Message]) -> dict[int, Versions]:
    """For each of ``messages`` (of one conversation) that has other versions (siblings: the
    same parent), which one it is. One query for a page of messages."""
    page = list(messages)
    if not page:
        return {}
    wanted = {m.pk: m.parent_id for m in page}
    parents = set(wanted.values())
    among = Q(parent_id__in=[p for p in parents if p is not None])
    if None in parents:
        among |= Q(parent__isnull=True)
    groups: defaultdict[int | None, list[int]] = defaultdict(list)
    siblings_of = Message.objects.filter(among, conversation_id=page[0].conversation_id)
    for sibling, parent_id in siblings_of.order_by("id").values_list("id", "parent_id"):
        groups[parent_id].append(sibling)
    found = {}
    for pk, parent in wanted.items():
        siblings = groups.get(parent, [])
        if len(siblings) < 2 or pk not in siblings:
            continue
        at = siblings.index(pk)
        found[pk] = Versions(
            index=at + 1,
            count=len(siblings),
            previous=siblings[at - 1] if at > 0 else None,
            next=siblings[at + 1] if at + 1 < len(siblings) else None,
        )
    return found


def message_versions(conversation: Conversation, message: Message) -> list[Message]:
    """Every version of ``message``'s turn (itself included), oldest first."""
    return list(
        conversation.messages.filter(parent_id=message.parent_id)
        .select_related("author", "persona")
        .order_by("id")
    )


@dataclass(frozen=True)
class ModelOption:
    """A model of the picker: its price per 1M tokens (None: no price set) and what it takes."""

    name: str
    is_default: bool
    context_window: int | None
    price: ModelPrice | None
    vision: bool
    tools: bool
    json: bool

    @property
    def free(self) -> bool:
        return self.price is not None and not (
            self.price.input_per_million or self.price.output_per_million
        )


def model_options(project: Project) -> list[ModelOption]:
    """The models a project's members may pick, the default first, priced as of today."""
    today = timezone.now().date()
    return [
        ModelOption(
            name=choice.name,
            is_default=choice.is_default,
            context_window=choice.model.context_window,
            price=price_for(choice.name, on=today),
            vision=choice.model.supports_vision,
            tools=choice.model.supports_tools,
            json=choice.model.supports_json,
        )
        for choice in provider_selectors.model_choices(project)
    ]


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
    qs = (
        conversation.messages.on_branch()
        .filter(role__in=["user", "assistant"], flagged=False)  # moderation kept these out
        .exclude(content="")
    )
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


def message_costs(message_ids: list[int]) -> dict[int, Decimal | None]:
    """What each reply cost, from the ledger (one query for a page of messages); None for a
    reply whose every call ran unpriced (a model staff let run without a price): its cost is
    unknown, not $0."""
    rows = (
        # Title calls have no message: only the replies' own rows.
        UsageRecord.objects.filter(message_id__in=message_ids)
        .values("message_id")
        .annotate(units=cost_units_sum(), priced=Count("pk", filter=Q(price__isnull=False)))
    )
    return {
        row["message_id"]: units_to_cost(row["units"]) if row["priced"] else None for row in rows
    }


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
