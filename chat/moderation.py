"""Moderation: with a project's moderation on, each input (and, if it asks, each reply) is
checked before it is sent to a model, and flagged input is refused with its categories named.

Who checks: the connection serving the model, through its ``/v1/moderations``
(``settings.MODERATION_MODEL``), when it has one (``ProviderConnection.supports_moderation``,
OpenAI's do); otherwise the project's pattern list, which managers edit (``category: regular
expression`` per line). A connection check is an upstream call like any other: metered, with
its one ledger row (``billing.metering.moderate_metered``). When it fails, nothing is sent: the
check fails closed (``ModerationUnavailable``) rather than let unchecked input through.

Patterns are compiled once per settings change (kept in ``core.config_cache`` with the rest of
the project's moderation settings) and matched with the ``regex`` package under a time bound
for the whole list (``PATTERN_SECONDS``): a pattern that backtracks without end makes a check
fail closed, naming its line, instead of holding a thread. The time bound is a guard, not the
plan: a list is expected to take microseconds, so it runs where it is called (on the event loop
for the socket and ``/v1``), without a thread hop.

The chat (socket, REST) calls ``config_for`` (sync: it may read the settings) then ``screen``;
on a flagged input, ``message_refuse`` keeps the message (flagged, never sent to a model) with
its ``ModerationFlag``, and the client is told ``ContentFlagged``. The gateway reaches this
module only by the dotted path of ``gateway_moderation`` (``gateway.moderation``): the chat and
the gateway import nothing of each other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import regex
from django.conf import settings
from django.db import transaction
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from accounts.models import Membership, Project
from accounts.services import check_can_manage
from accounts.signals import diff, record_change, values_of
from billing import metering
from billing.services import CallContext
from core import config_cache
from core.db import db_sync_to_async
from core.errors import Retry, ServiceError
from core.text import storable
from providers import selectors as provider_selectors
from providers.llm.base import ProviderError
from providers.specs import ProviderSpec

from .models import ChatSettings, Message, ModerationFlag

if TYPE_CHECKING:
    from .actors import Actor

logger = logging.getLogger(__name__)

# What the pattern list may hold: bounded, so that compiling and matching it stay cheap.
MAX_PATTERNS_CHARS = 20_000
MAX_RULES = 200
MAX_PATTERN_CHARS = 500
MAX_CATEGORY_CHARS = 50
_CATEGORY = regex.compile(r"[\w][\w /-]*")
# The whole list's time for one check, in seconds: past it the check fails closed.
PATTERN_SECONDS = 0.25
EXCERPT_CHARS = 500

PATTERNS = "patterns"  # ``ModerationFlag.checked_by`` of the project's list


def connection_checker(model: str) -> str:
    """``ModerationFlag.checked_by`` of a connection's ``/v1/moderations``."""
    return f"connection:{model}"


# --- errors ------------------------------------------------------------------------------------


def _categories_text(categories: Sequence[str]) -> str:
    return ", ".join(categories)


class ContentFlagged(ServiceError):
    """Moderation flagged the input: it was not sent. A 400 (``content_flagged``) naming the
    categories, on every surface."""

    def __init__(self, categories: Sequence[str], *, param: str | None = None) -> None:
        self.categories = list(categories)
        if self.categories:
            message = _("Your message was not sent: it was flagged for %(categories)s.") % {
                "categories": _categories_text(self.categories)
            }
        else:
            message = _("Your message was not sent: moderation flagged it.")
        super().__init__(message, code="content_flagged", param=param)


class ModerationUnavailable(ServiceError):
    """The check could not be made (the moderation endpoint failed, a pattern took too long):
    nothing was sent. A 503 (``moderation_unavailable``)."""

    def __init__(
        self, message: str, *, retry: Retry = "maybe", retry_after: float | None = None
    ) -> None:
        super().__init__(
            message,
            code="moderation_unavailable",
            status=503,
            type="api_error",
            retry_after=retry_after,
        )
        self.retry = retry


# --- the pattern list --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    line: int  # in the list as managers typed it
    category: str
    pattern: regex.Pattern[str]


class PatternError(ServiceError):
    """A line of a pattern list that is not a rule (``line``; None: the list as a whole)."""

    def __init__(self, problem: str, *, line: int | None) -> None:
        message = (
            problem
            if line is None
            else _("Line %(line)d: %(problem)s")
            % {
                "line": line,
                "problem": problem,
            }
        )
        super().__init__(message, param="patterns")
        self.line = line


def _rule(number: int, raw: str) -> Rule | None:
    """The rule on line ``number``; None for a blank line or a comment."""
    line = raw.strip()
    if not line or line.startswith("#"):
        return None
    category, colon, expression = line.partition(":")
    category, expression = category.strip(), expression.strip()
    if not colon or not category or not expression:
        raise PatternError(
            _("write a rule as “category: regular expression”, e.g. “violence: \\bkill\\b”."),
            line=number,
        )
    if len(category) > MAX_CATEGORY_CHARS or not _CATEGORY.fullmatch(category):
        raise PatternError(
            _(
                "a category is a name of letters, digits, spaces, “-”, “_” or “/”, at most "
                "%(max)d characters."
            )
            % {"max": MAX_CATEGORY_CHARS},
            line=number,
        )
    if len(expression) > MAX_PATTERN_CHARS:
        raise PatternError(
            _("the regular expression is longer than %(max)d characters.")
            % {"max": MAX_PATTERN_CHARS},
            line=number,
        )
    try:
        # VERSION0: the syntax of Python's ``re``, which is what people look up.
        pattern = regex.compile(expression, regex.IGNORECASE | regex.VERSION0)
    except (regex.error, OverflowError, RecursionError) as error:
        raise PatternError(
            _("not a valid regular expression (%(error)s).") % {"error": error}, line=number
        ) from None
    return Rule(line=number, category=category, pattern=pattern)


def parse_patterns(text: str) -> tuple[Rule, ...]:
    """The rules of a pattern list: one per line, ``category: regular expression``
    (case-insensitive); blank lines and lines starting with ``#`` ignored. Refuses the first
    line that is not a rule, naming it (``PatternError``, ``param`` ``patterns``)."""
    if len(text) > MAX_PATTERNS_CHARS:
        raise PatternError(
            _("The pattern list is %(length)s characters long; the limit is %(limit)s.")
            % {"length": f"{len(text):,}", "limit": f"{MAX_PATTERNS_CHARS:,}"},
            line=None,
        )
    rules: list[Rule] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        rule = _rule(number, raw)
        if rule is None:
            continue
        if len(rules) == MAX_RULES:
            raise PatternError(
                ngettext(
                    "a list may have at most %(max)d rule.",
                    "a list may have at most %(max)d rules.",
                    MAX_RULES,
                )
                % {"max": MAX_RULES},
                line=number,
            )
        rules.append(rule)
    return tuple(rules)


def _saved_rules(text: str) -> tuple[Rule, ...]:
    """The rules of a saved list. Saves are checked (``moderation_update``, the admin), so a
    bad line here was written around them: it is skipped (and logged), the others apply."""
    rules: list[Rule] = []
    for number, raw in enumerate(text[:MAX_PATTERNS_CHARS].splitlines(), start=1):
        try:
            rule = _rule(number, raw)
        except PatternError as error:
            logger.warning("moderation pattern skipped: %s", error.message)
            continue
        if rule is not None and len(rules) < MAX_RULES:
            rules.append(rule)
    return tuple(rules)


def check_patterns(rules: Sequence[Rule], text: str) -> list[str]:
    """The categories of ``rules`` that match somewhere in ``text``, in the list's order.
    Raises ``ModerationUnavailable`` (naming the line) when the list takes longer than
    ``PATTERN_SECONDS``: an unchecked text is not let through."""
    deadline = time.monotonic() + PATTERN_SECONDS
    found: list[str] = []
    for rule in rules:
        if rule.category in found:
            continue
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if rule.pattern.search(text, timeout=remaining) is not None:
                found.append(rule.category)
        except TimeoutError:
            logger.warning("moderation pattern on line %d timed out", rule.line)
            raise ModerationUnavailable(
                _(
                    "Your message was not sent: the moderation pattern on line %(line)d took "
                    "too long to check. A project admin needs to simplify it."
                )
                % {"line": rule.line},
                retry="never",
            ) from None
    return found


# --- the settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModerationConfig:
    enabled: bool = False
    check_replies: bool = False
    rules: tuple[Rule, ...] = ()


OFF = ModerationConfig()


def config_for(project_id: int) -> ModerationConfig:
    """The project's moderation settings, patterns compiled. Kept in memory until they change
    (``core.config_cache``): no query on a call once read."""
    return config_cache.cached(("moderation", project_id), partial(_config_for, project_id))


def _config_for(project_id: int) -> ModerationConfig:
    row = (
        ChatSettings.objects.filter(project_id=project_id)
        .values_list("moderation_enabled", "moderation_check_replies", "moderation_patterns")
        .first()
    )
    if row is None:
        return OFF
    enabled, check_replies, patterns = row
    return ModerationConfig(
        enabled=enabled,
        check_replies=check_replies,
        rules=_saved_rules(patterns) if enabled else (),
    )


def settings_for(project: Project) -> ChatSettings:
    """The project's chat settings row; the defaults (unsaved) when nobody changed them yet."""
    return ChatSettings.objects.filter(project=project).first() or ChatSettings(project=project)


def forget_config() -> None:
    """Moderation settings changed: forget every process's copy (now, and once more when the
    transaction commits, for a call that read the old rows meanwhile)."""
    config_cache.invalidate()
    transaction.on_commit(config_cache.invalidate)


# What the audit trail shows of a change of the settings.
AUDITED_FIELDS = ("moderation_enabled", "moderation_check_replies", "moderation_patterns")


@transaction.atomic
def moderation_update(
    *,
    actor: Membership,
    project: Project,
    enabled: bool,
    check_replies: bool,
    patterns: str,
) -> ChatSettings:
    """Turn moderation on or off, and set the pattern list (refused, naming the line, unless
    every line is a rule): the organization's owners and admins only."""
    check_can_manage(actor)
    patterns = storable(patterns.replace("\r\n", "\n").replace("\r", "\n")).strip("\n")
    parse_patterns(patterns)
    before = values_of(settings_for(project), AUDITED_FIELDS)
    chat_settings, _created = ChatSettings.objects.update_or_create(
        project=project,
        defaults={
            "moderation_enabled": enabled,
            "moderation_check_replies": check_replies,
            "moderation_patterns": patterns,
        },
    )
    record_change(
        action="moderation.changed",
        organization=project.organization,
        actor=actor,
        project=project,
        target=chat_settings,
        changes=diff(before, values_of(chat_settings, AUDITED_FIELDS)),
    )
    forget_config()
    return chat_settings


@dataclass(frozen=True)
class ModelCheck:
    """Who checks the input to one of the project's models."""

    model: str
    connection: str
    by_connection: bool  # its connection's /v1/moderations; else the pattern list


def model_checks(project: Project) -> list[ModelCheck]:
    """For the settings page: which of the project's models are checked by their connection
    and which by the pattern list."""
    return [
        ModelCheck(
            model=choice.name,
            connection=choice.model.connection.name,
            by_connection=choice.model.connection.supports_moderation,
        )
        for choice in provider_selectors.model_choices(project)
    ]


# --- checking ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    categories: list[str]
    checked_by: str  # ``connection:<model>`` or ``patterns`` ("" when nothing was checked)


PASSED = Verdict(flagged=False, categories=[], checked_by="")


async def screen(
    *,
    config: ModerationConfig,
    context: CallContext,
    spec: ProviderSpec,
    text: str,
    detached: bool = False,
) -> Verdict:
    """Check ``text`` before it is sent to ``spec``'s model (``context``: that call's).

    With the connection's ``/v1/moderations``: one metered call of ``settings.MODERATION_MODEL``
    on the same connection, billed to the same people (source ``moderation``); else the
    pattern list, with no call at all. Moderation off, or nothing to check: passed, unchecked.

    Raises ``ModerationUnavailable`` when the check fails (the call's ledger row says so), or
    ``QuotaExceeded`` when a budget or rate limit refuses the check: nothing is sent either
    way. ``detached``: called from a socket's consumer or a task (``core.db``)."""
    if not config.enabled or not text.strip():
        return PASSED
    if not spec.supports_moderation:
        categories = check_patterns(config.rules, text)
        return Verdict(flagged=bool(categories), categories=categories, checked_by=PATTERNS)
    model = settings.MODERATION_MODEL
    try:
        result = await metering.moderate_metered(
            context=context, spec=spec, text=text, model=model, detached=detached
        )
    except ProviderError as exc:
        failure = metering.upstream_failure(exc)
        raise ModerationUnavailable(
            _("Your message was not sent: the moderation check failed.") + " " + failure.message,
            retry_after=failure.retry_after,
        ) from None
    return Verdict(
        flagged=result.flagged,
        categories=list(result.categories),
        checked_by=connection_checker(model),
    )


# --- what was flagged --------------------------------------------------------------------------


def flag_record(
    *,
    project_id: int,
    source: str,
    target: str,
    verdict: Verdict,
    text: str,
    conversation_id: int | None = None,
    message_id: int | None = None,
    user_id: int | None = None,
    api_key_id: int | None = None,
) -> ModerationFlag:
    """Keep what moderation flagged, for the project's managers and staff (its start only)."""
    return ModerationFlag.objects.create(
        project_id=project_id,
        source=source,
        target=target,
        categories=list(verdict.categories),
        checked_by=verdict.checked_by[:200],
        excerpt=storable(text[:EXCERPT_CHARS]),
        conversation_id=conversation_id,
        message_id=message_id,
        user_id=user_id,
        api_key_id=api_key_id,
    )


@transaction.atomic
def message_refuse(
    *, actor: Actor, conversation_id: int, content: object, verdict: Verdict
) -> Message:
    """Keep a flagged message where it was said — a user message marked ``flagged`` on the
    conversation's current branch, which is never sent to a model — and its ``ModerationFlag``.
    The caller then tells the client ``ContentFlagged``."""
    # Here, not at the top: chat.services may come to call this module.
    from . import services

    content = services.check_content(content)
    conversation = (
        actor.conversations()
        .select_related("project")
        .select_for_update(of=("self",))
        .filter(pk=conversation_id)
        .first()
    )
    if conversation is None:
        raise ServiceError(_("This conversation no longer exists."), code="not_found")
    message = Message.objects.create(
        conversation=conversation,
        parent=services.branch_leaf(conversation),
        role=Message.Role.USER,
        content=content,
        author=actor.user,
        flagged=True,
    )
    flag_record(
        project_id=conversation.project_id,
        source=ModerationFlag.Source.API if actor.api_key else ModerationFlag.Source.CHAT,
        target=ModerationFlag.Target.INPUT,
        verdict=verdict,
        text=content,
        conversation_id=conversation.pk,
        message_id=message.pk,
        user_id=actor.user_id,
        api_key_id=actor.api_key_id,
    )
    return message


# --- the gateway's moderation step -------------------------------------------------------------


@dataclass(frozen=True)
class GatewayCheck:
    """The check of one project's ``/v1`` input (``gateway.moderation.InputCheck``)."""

    config: ModerationConfig

    async def check(self, *, context: CallContext, spec: ProviderSpec, text: str) -> None:
        """Raises ``ContentFlagged`` (the flag recorded, source ``gateway``) or
        ``ModerationUnavailable``; returns when ``text`` may be sent."""
        verdict = await screen(config=self.config, context=context, spec=spec, text=text)
        if not verdict.flagged:
            return
        if context.project_id is not None:
            await db_sync_to_async(flag_record)(
                project_id=context.project_id,
                source=ModerationFlag.Source.GATEWAY,
                target=ModerationFlag.Target.INPUT,
                verdict=verdict,
                text=text,
                api_key_id=context.api_key_id,
            )
        raise ContentFlagged(verdict.categories, param="messages")


def rules_for(project_id: int) -> tuple[Rule, ...]:
    """The project's pattern list, compiled, whether or not the project moderates its input:
    what ``/v1/moderations`` classifies with when asked. Kept in memory until the settings
    change (``core.config_cache``)."""
    return config_cache.cached(("moderation-rules", project_id), partial(_rules_for, project_id))


def _rules_for(project_id: int) -> tuple[Rule, ...]:
    patterns = (
        ChatSettings.objects.filter(project_id=project_id)
        .values_list("moderation_patterns", flat=True)
        .first()
    )
    return _saved_rules(patterns or "")


@dataclass(frozen=True)
class PatternList:
    """A project's pattern list as ``/v1/moderations`` uses it (``gateway.moderation.
    PatternCheck``)."""

    rules: tuple[Rule, ...]

    def categories(self, text: str) -> list[str]:
        """The categories whose patterns match ``text``; raises ``ModerationUnavailable``
        when the list takes too long (``check_patterns``)."""
        return check_patterns(self.rules, text)


class GatewayModeration:
    """What ``/v1`` asks of moderation (``gateway.moderation.InputModeration``), named in the
    gateway by its dotted path: the gateway imports nothing of the chat."""

    def for_project(self, project_id: int) -> GatewayCheck | None:
        """The project's check, None when it does not moderate (sync: it may read the
        settings, once per change)."""
        config = config_for(project_id)
        return GatewayCheck(config) if config.enabled else None

    def patterns_for(self, project_id: int) -> PatternList:
        """The project's pattern list, for ``/v1/moderations`` (sync: it may read the
        settings, once per change)."""
        return PatternList(rules_for(project_id))


gateway_moderation = GatewayModeration()
