"""Summaries: a long conversation's oldest turns folded into a running summary, sent in their
place.

When a reply had to leave turns out of its prompt (the model's window is full), or the prompt
passed the project's ``ChatSettings.summarize_after_tokens``, ``summary_queue_if_due`` queues
``tasks.summarize_conversation`` once the reply is saved; a person may also ask for it
("Summarize now", REST). The task calls ``summary_fold``: the oldest turns not folded yet (a
recent tail stays as it was said) and the summary so far go to the summary writer through the
one metered path (reserve, capped call, settle once: a ledger row with source ``summary``,
billed to whoever's message or click led to it), and the new summary is kept on the
conversation with the id of the last message it covers (``summary_through``). Prompts then send
it in place of those turns (``prompt.build_prompt(summary=…)``,
``selectors.history_for_prompt``).

The writer is the project's chosen summary persona (``ChatSettings.summary_persona``), else its
enabled ``@summary``, else a built-in instruction. Its model: the persona's, else the project's
default, else the conversation's own — the first the project allows that is not the built-in
local model (which keeps its CPU for replies, as for titles). A cheap model for summaries is
chosen by giving the persona one (gpt-4o-mini, say); prices are not compared here, because a
model without a price row would look free.

A fold that fails — a budget, the provider, an empty answer, a bug of ours — keeps the summary
there was, says why in ``summary_error`` and leaves the conversation as usable as before. Two
folds of one conversation never both land: a lock in the cache keeps the second from calling at
all, and the save is a conditional update on the ``summary_through`` the fold started from.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Literal

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.models import ApiKey, Membership, Project, User
from accounts.services import check_can_manage
from billing import metering
from billing.models import UsageRecord
from billing.services import CallContext
from core.errors import ServiceError
from core.text import storable
from providers import selectors as provider_selectors
from providers.llm.base import ChatRequest, ProviderError
from providers.llm.tokens import count_message_tokens, count_text_tokens
from providers.models import ProviderConnection
from providers.specs import spec_for

from . import selectors
from .actors import Actor
from .models import ChatSettings, Conversation, Message, Persona
from .prompt import SAFETY_MARGIN

if TYPE_CHECKING:
    from .services import PendingReply

logger = logging.getLogger(__name__)

Trigger = Literal["window", "threshold", "asked"]
WINDOW: Trigger = "window"  # a reply's prompt left turns out: they no longer fit
THRESHOLD: Trigger = "threshold"  # a reply's prompt passed the project's setting
ASKED: Trigger = "asked"  # someone asked for it (the page's button, REST)

FoldResult = Literal["folded", "not_due", "busy", "lost", "failed", "unreachable"]

SUMMARY_TAG = "summary"
# The last exchange always stays as it was said, however the fold was asked for.
KEEP_RECENT = 2
SUMMARY_MAX_TOKENS = 600  # the summary's cap when its persona sets none
SUMMARY_SHARE = 3  # and at most this share of what the conversation's prompts leave history
SUMMARY_MIN_TOKENS = 64
SUMMARY_TEMPERATURE = 0.3
MESSAGE_CHARS = 6000  # one message's share of a fold, at most (a pasted log is cut)
MIN_SUMMARIZE_AFTER = 100  # below this, every reply would fold
LOCK_SECONDS = 600  # a fold whose process died frees its conversation after this

BUILT_IN_PROMPT = (
    "Summarize the conversation faithfully and briefly for someone who missed it. Keep names; "
    "never invent anything."
)
FOLD_RULES = (
    "You keep the running summary of a long conversation. It is sent to the assistant in place "
    "of the messages it covers, so keep what the conversation may still need: names, facts, "
    "numbers, decisions, preferences and open questions. Fold the summary so far and the new "
    "messages into one updated summary, in the conversation's language. Answer with the "
    "summary only."
)
NOTHING_TO_FOLD = gettext_lazy(
    "Nothing to summarize yet: the last two messages always stay as they were said, and "
    "everything before them is summarized already."
)
LOCAL_ONLY = gettext_lazy(
    "Summaries need a model from a provider connection: the built-in local model keeps its time "
    "for replies. Older messages are left out instead."
)
EMPTY = gettext_lazy("The summary came back empty, so the earlier one was kept.")
CHANGED = "The conversation changed while it was being summarized; it is summarized again later."
BROKEN = "Something went wrong on our side while summarizing; it has been logged."


class FoldFailed(Exception):
    """A fold that cannot finish; the message says why, in words for the people in the chat."""


# --- the project's chat settings -----------------------------------------------------------


def chat_settings_for(project: Project) -> ChatSettings:
    """The project's chat settings; the defaults (unsaved) when nobody changed them yet."""
    found = ChatSettings.objects.filter(project=project).select_related("summary_persona").first()
    return found or ChatSettings(project=project)


@transaction.atomic
def chat_settings_update(
    *,
    actor: Membership,
    project: Project,
    summarize_after_tokens: int | None,
    summary_persona: Persona | None,
) -> ChatSettings:
    """When long conversations are summarized, and by whom: owners and admins only."""
    check_can_manage(actor)
    if summary_persona is not None and summary_persona.project_id != project.pk:
        raise ServiceError(_("No such persona."), code="not_found", param="summary_persona")
    if summarize_after_tokens is not None and summarize_after_tokens < MIN_SUMMARIZE_AFTER:
        raise ServiceError(
            _("Summarize after at least %(min)s tokens (or leave it empty).")
            % {"min": MIN_SUMMARIZE_AFTER},
            param="summarize_after_tokens",
        )
    chat_settings, _created = ChatSettings.objects.update_or_create(
        project=project,
        defaults={
            "summarize_after_tokens": summarize_after_tokens,
            "summary_persona": summary_persona,
        },
    )
    return chat_settings


# --- who writes the summary ----------------------------------------------------------------


@dataclass(frozen=True)
class Writer:
    persona: Persona | None
    model: str
    instructions: str  # the system prompt: the persona's (or ours) and the folding rules
    temperature: float
    max_tokens: int


def _writer_model(
    project: Project, conversation: Conversation | None, persona: Persona | None
) -> str:
    """The persona's model, else the project's default, else the conversation's own: the first
    the project allows that is not the built-in local model."""
    candidates = (
        persona.model if persona is not None else "",
        provider_selectors.default_model_name(project) or "",
        conversation.model if conversation is not None else "",
    )
    for name in candidates:
        if not name:
            continue
        model = provider_selectors.resolve_model(project, name)
        if model is not None and model.connection.kind != ProviderConnection.Kind.LOCAL:
            return name
    raise ServiceError(LOCAL_ONLY, code="local_model")


def _writer_persona(project: Project) -> Persona | None:
    return chat_settings_for(project).summary_persona or (
        Persona.objects.for_project(project).enabled().filter(tag=SUMMARY_TAG).first()
    )


def describe_writer(project: Project) -> tuple[Persona | None, str]:
    """Who writes the project's summaries and on which model, in words for its settings page
    (a conversation's own model stands in when the project has no other)."""
    persona = _writer_persona(project)
    try:
        model = _writer_model(project, None, persona)
    except ServiceError:
        model = _("each conversation's own model (when it is not the built-in local model)")
    return persona, model


def summary_writer(conversation: Conversation) -> Writer:
    """The summary persona (the project's choice, else its enabled @summary) and its model."""
    project = conversation.project
    persona = _writer_persona(project)
    own = persona.system_prompt.strip() if persona is not None else ""
    asked = (persona.max_tokens if persona is not None else None) or SUMMARY_MAX_TOKENS
    # The summary must fit the conversation's own prompts, with room for the recent turns: a
    # summary the prompt has to leave out would lose what it folded.
    fits = max(_history_room(conversation) // SUMMARY_SHARE, SUMMARY_MIN_TOKENS)
    return Writer(
        persona=persona,
        model=_writer_model(project, conversation, persona),
        instructions=f"{own or BUILT_IN_PROMPT}\n\n{FOLD_RULES}",
        temperature=SUMMARY_TEMPERATURE
        if persona is None or persona.temperature is None
        else persona.temperature,
        max_tokens=min(asked, fits),
    )


# --- what is folded ------------------------------------------------------------------------


def _unsummarized(conversation: Conversation) -> QuerySet[Message]:
    """Messages a fold may take: said, not folded yet, and older than any reply still being
    written (its text is not final)."""
    said = [Message.Role.USER, Message.Role.ASSISTANT]
    # The current branch only: the other versions of a turn are not what the model is sent.
    qs = conversation.messages.on_branch().filter(role__in=said).exclude(content="")
    if conversation.summary_through is not None:
        qs = qs.filter(pk__gt=conversation.summary_through)
    writing = (
        conversation.messages.filter(state=Message.State.STREAMING)
        .order_by("id")
        .values_list("pk", flat=True)
        .first()
    )
    if writing is not None:
        qs = qs.filter(pk__lt=writing)
    return qs.select_related("author", "persona")


def _line(message: Message, *, room: bool) -> str:
    if message.role == Message.Role.ASSISTANT:
        who = message.persona.name if message.persona is not None else "Assistant"
    else:
        who = selectors.speaker_name(message.author) if room else "User"
    text = message.content
    if len(text) > MESSAGE_CHARS:
        text = text[:MESSAGE_CHARS] + " […]"
    return f"{who}: {text}"


def _tokens(messages: Iterable[Message]) -> int:
    return sum(count_text_tokens(m.content) for m in messages)


def _history_room(conversation: Conversation) -> int:
    """Tokens the conversation's prompts leave for its history (as ``build_prompt`` counts)."""
    model = provider_selectors.resolve_model(conversation.project, conversation.model)
    window = model.context_window if model is not None else 4096
    reply = conversation.max_tokens or settings.CHAT_DEFAULT_REPLY_TOKENS
    return max(
        int(window * SAFETY_MARGIN) - reply - count_text_tokens(conversation.system_prompt), 0
    )


@dataclass(frozen=True)
class Fold:
    previous: str  # the summary so far
    previous_through: int | None
    lines: list[str]  # the messages folded in, oldest first, as the writer reads them
    through: int  # the last of them
    started: datetime


def summary_due(conversation: Conversation, *, trigger: Trigger) -> bool:
    """Whether the conversation should fold now: a reply's prompt left turns out, someone
    asked, or the history a prompt sends passes the project's setting."""
    if trigger != THRESHOLD:
        return True
    threshold = chat_settings_for(conversation.project).summarize_after_tokens
    if not threshold:
        return False
    history = selectors.history_for_prompt(conversation, before=None)
    return _tokens(history.iterator(chunk_size=100)) > threshold


def _tail_start(conversation: Conversation, *, budget: int) -> int | None:
    """The oldest message of the recent tail that stays as it was said (at least
    ``KEEP_RECENT`` messages, more while they fit in ``budget`` tokens); None when that is
    everything not folded yet."""
    start, used, kept = None, 0, 0
    for message in _unsummarized(conversation).order_by("-id").iterator(chunk_size=100):
        cost = count_text_tokens(message.content)
        if kept >= KEEP_RECENT and used + cost > budget:
            return start
        start, used, kept = message.pk, used + cost, kept + 1
    return None


def summary_plan(conversation: Conversation, *, trigger: Trigger, writer: Writer) -> Fold | None:
    """What the next fold takes: the oldest turns before the recent tail, as many as the
    writer's window holds with the summary so far; None when there is nothing to fold."""
    if trigger == ASKED:
        tail_budget = 0
    else:
        room = _history_room(conversation)
        threshold = chat_settings_for(conversation.project).summarize_after_tokens
        # Half of what triggers a fold stays: the next few replies do not fold again at once.
        tail_budget = min(room, threshold or room) // 2
    tail_start = _tail_start(conversation, budget=tail_budget)
    if tail_start is None:
        return None
    spec = spec_for(project=conversation.project, model=writer.model)
    head = [
        {"role": "system", "content": writer.instructions},
        {"role": "user", "content": _ask_text(conversation.summary, [])},
    ]
    budget = int(spec.context_window * SAFETY_MARGIN) - writer.max_tokens
    used = count_message_tokens(head)
    lines: list[str] = []
    through = 0
    for message in _unsummarized(conversation).filter(pk__lt=tail_start).order_by("id"):
        line = _line(message, room=conversation.is_room)
        cost = count_text_tokens(line) + 2
        if lines and used + cost > budget:
            break  # the rest waits for the next fold
        lines.append(line)
        used += cost
        through = message.pk
    if not lines:
        return None
    return Fold(
        previous=conversation.summary,
        previous_through=conversation.summary_through,
        lines=lines,
        through=through,
        started=timezone.now(),
    )


def _ask_text(previous: str, lines: list[str]) -> str:
    body = "\n\n".join(lines)
    return (
        f"Summary so far:\n{previous or '(none yet)'}\n\n"
        f"Messages to fold in, oldest first:\n\n{body}"
    )


# --- the call --------------------------------------------------------------------------------


def _write(*, conversation: Conversation, actor: Actor, writer: Writer, fold: Fold) -> str:
    """One metered call: reserved against the payer's budgets, capped, settled into the ledger
    once whatever happens (a refusal raises before anything is sent)."""
    spec = spec_for(project=conversation.project, model=writer.model)
    call = metering.metered_reserve(
        context=CallContext(
            organization_id=conversation.project.organization_id,
            project_id=conversation.project_id,
            user_id=actor.user_id,
            model=writer.model,
            source=UsageRecord.Source.SUMMARY,
            conversation_id=conversation.pk,
            connection_id=spec.connection_id,
            api_key_id=actor.api_key_id,
        ),
        request=ChatRequest(
            model=writer.model,
            messages=[
                {"role": "system", "content": writer.instructions},
                {"role": "user", "content": _ask_text(fold.previous, fold.lines)},
            ],
            temperature=writer.temperature,
            user=actor.tag,
        ),
        spec=spec,
        asked=writer.max_tokens,
    )
    text = storable(metering.complete_blocking(call).text.strip())
    if not text:
        raise FoldFailed(EMPTY)
    return text


# --- folding ---------------------------------------------------------------------------------


def _payer(*, user_id: int | None, api_key_id: int | None) -> Actor | None:
    """Who the fold is for and billed to: the person whose message or click led to it (in a
    room, not always its maker), or the project key of an API conversation."""
    if user_id is not None:
        user = User.objects.filter(pk=user_id, is_active=True).first()
        return Actor(user=user) if user is not None else None
    if api_key_id is not None:
        key = ApiKey.objects.usable().filter(pk=api_key_id).first()
        return Actor(api_key=key) if key is not None else None
    return None


@transaction.atomic
def _store(*, conversation_id: int, fold: Fold, text: str) -> bool:
    """Keep the new summary, unless another fold landed first (False) or a folded message was
    edited or deleted meanwhile (``FoldFailed``)."""
    folded = Message.objects.filter(conversation_id=conversation_id, pk__lte=fold.through)
    if fold.previous_through is not None:
        folded = folded.filter(pk__gt=fold.previous_through)
    if (
        folded.filter(updated_at__gt=fold.started).exists()
        or not folded.filter(pk=fold.through).exists()
    ):
        raise FoldFailed(CHANGED)
    claim = Conversation.objects.filter(pk=conversation_id)
    if fold.previous_through is None:
        claim = claim.filter(summary_through__isnull=True)
    else:
        claim = claim.filter(summary_through=fold.previous_through)
    now = timezone.now()
    return bool(
        claim.update(
            summary=text,
            summary_through=fold.through,
            summary_error="",
            summary_updated_at=now,
            updated_at=now,
        )
    )


def _fail(conversation_id: int, reason: str) -> None:
    """Say why; the summary there was stays, and so does everything else."""
    Conversation.objects.filter(pk=conversation_id).update(summary_error=reason)


def _lock_key(conversation_id: int) -> str:
    return f"chat:summary-fold:{conversation_id}"


def summary_fold(
    *,
    conversation_id: int,
    user_id: int | None = None,
    api_key_id: int | None = None,
    trigger: Trigger = ASKED,
) -> FoldResult:
    """Fold the oldest turns into the running summary, if due (the task's whole work). Never
    raises for a failure of the fold: it is recorded in ``summary_error`` instead."""
    actor = _payer(user_id=user_id, api_key_id=api_key_id)
    conversation = (
        None
        if actor is None
        else actor.conversations()
        .select_related("project__organization")
        .filter(pk=conversation_id)
        .first()
    )
    if actor is None or conversation is None:
        return "unreachable"  # deleted, or the payer lost access meanwhile
    if not cache.add(_lock_key(conversation_id), True, timeout=LOCK_SECONDS):
        return "busy"  # another fold of this conversation is running
    try:
        if not summary_due(conversation, trigger=trigger):
            return "not_due"
        writer = summary_writer(conversation)
        fold = summary_plan(conversation, trigger=trigger, writer=writer)
        if fold is None:
            return "not_due"
        text = _write(conversation=conversation, actor=actor, writer=writer, fold=fold)
        if not _store(conversation_id=conversation_id, fold=fold, text=text):
            logger.info("summary of conversation %s lost the race", conversation_id)
            return "lost"
        return "folded"
    except FoldFailed as failure:
        _fail(conversation_id, str(failure))
    except ServiceError as refusal:  # a budget or rate limit, a model gone: nothing was sent
        _fail(conversation_id, refusal.message)
    except ProviderError as error:  # the call was made, failed, and is in the ledger
        _fail(conversation_id, metering.upstream_failure(error).message)
    except Exception:
        logger.exception("summarizing conversation %s failed", conversation_id)
        _fail(conversation_id, BROKEN)
    finally:
        cache.delete(_lock_key(conversation_id))
    return "failed"


# --- when ------------------------------------------------------------------------------------


def _queue(conversation_id: int, *, actor_ids: tuple[int | None, int | None], trigger: str) -> None:
    from .tasks import summarize_conversation

    user_id, api_key_id = actor_ids
    transaction.on_commit(
        partial(
            summarize_conversation.delay,
            conversation_id,
            user_id=user_id,
            api_key_id=api_key_id,
            trigger=trigger,
        )
    )


def summary_queue_if_due(
    *, conversation: Conversation, pending: PendingReply, completion_tokens: int
) -> bool:
    """After a reply is saved: queue a fold (on commit) when its prompt left turns out, or
    when the prompt and the reply pass the project's setting (the task counts exactly)."""
    trigger: Trigger | None = WINDOW if pending.omitted else None
    if trigger is None:
        threshold = (
            ChatSettings.objects.filter(project_id=conversation.project_id)
            .values_list("summarize_after_tokens", flat=True)
            .first()
        )
        if threshold and pending.call.prompt_tokens + completion_tokens > threshold:
            trigger = THRESHOLD
    if trigger is None:
        return False
    context = pending.call.context
    _queue(conversation.pk, actor_ids=(context.user_id, context.api_key_id), trigger=trigger)
    return True


@transaction.atomic
def summary_request(*, actor: Actor, conversation: Conversation) -> None:
    """Summarize now (the page's button, REST), billed to ``actor``; refused when everything
    but the last exchange is summarized already."""
    if _unsummarized(conversation)[: KEEP_RECENT + 1].count() <= KEEP_RECENT:
        raise ServiceError(NOTHING_TO_FOLD, code="nothing_to_summarize")
    _queue(conversation.pk, actor_ids=(actor.user_id, actor.api_key_id), trigger=ASKED)


@transaction.atomic
def summary_forget(*, conversation: Conversation, from_id: int) -> None:
    """Drop the summary when a message it covers is edited or replaced: it would tell the
    model about turns that are gone. The conversation is summarized again when due."""
    if conversation.summary_through is None or from_id > conversation.summary_through:
        return
    conversation.summary = ""
    conversation.summary_through = None
    conversation.summary_updated_at = None
    conversation.summary_error = ""
    conversation.save(
        update_fields=[
            "summary",
            "summary_through",
            "summary_updated_at",
            "summary_error",
            "updated_at",
        ]
    )
