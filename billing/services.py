"""The quota service: every upstream call is reserved before and settled after.

``quota_reserve`` runs before the call, in the caller's transaction: it checks the rate limits,
then sets the call's worst case aside on every budget that applies, locking each budget's
period row (SELECT … FOR UPDATE on PostgreSQL; on SQLite the IMMEDIATE write transaction
already serializes writers). A budget that would go over refuses the call with
``budget_exceeded`` and nothing is sent upstream. ``quota_settle`` runs after the call, whatever
its outcome: it releases the holds, charges the real cost to every budget that applies and
writes exactly one ledger row. Holds expire, so a crashed process cannot keep money set aside.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, cast

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import formats, timezone
from django.utils.translation import gettext, gettext_lazy, gettext_noop

from core import config_cache
from core import money as core_money
from core.config_cache import cached
from core.errors import ServiceError
from providers.llm.catalog import base_name

from . import ledger_sql, pricing
from .models import (
    PER_MILLION,
    Budget,
    BudgetAlert,
    BudgetPeriod,
    Hold,
    ModelPrice,
    RateLimit,
    UsageRecord,
)
from .rollups import rollup_add

logger = logging.getLogger(__name__)

LIFETIME_START = datetime(2000, 1, 1, tzinfo=UTC)
# Reply tokens a budget can pay for when the model's output is free: no limit from money.
UNLIMITED = 2**31 - 1

# An upstream counts its reply with its own tokenizer; we count what it sends with ours. The
# hold covers the cap sent upstream with this margin (5/4, plus a few tokens), so that a stream
# is cut off only once it has plainly gone past its cap, and one that honours it never is.
REPLY_SLACK = 16


def reply_hold(cap: int, *, margin: bool) -> int:
    """Reply tokens held for a call capped at ``cap``."""
    return -(-cap * 5 // 4) + REPLY_SLACK if margin else cap


def cap_within(held: int, *, margin: bool) -> int:
    """The largest cap whose hold fits in ``held`` reply tokens (0 if none does)."""
    if held == UNLIMITED or not margin:
        return held
    return max((held - REPLY_SLACK) * 4 // 5, 0)


@dataclass(frozen=True)
class CallContext:
    """Who makes a call and where: what decides which budgets and limits apply."""

    organization_id: int
    project_id: int | None
    user_id: int | None
    model: str
    source: str = UsageRecord.Source.CHAT
    conversation_id: int | None = None
    connection_id: int | None = None
    api_key_id: int | None = None  # REST calls: the project key that made them
    # A line of a batch: priced at the model's batch price (ModelPrice.batch_*, else half).
    batch: bool = False


@dataclass(frozen=True)
class Reservation:
    request_id: uuid.UUID
    context: CallContext
    amount: Decimal  # the worst case held: the prompt estimate and ``held_reply`` tokens
    price_id: int | None
    prompt_tokens_estimate: int
    cap: int = 0  # the reply cap to send upstream (0: nothing held, an orphan's settle)
    held_reply: int = 0  # reply tokens the hold covers: ``reply_hold(cap)``


class QuotaExceeded(ServiceError):
    """A refusal before anything was sent: ``budget_exceeded``, ``rate_limit_exceeded`` or
    ``model_unpriced``."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        retry_after: float | None = None,
        scope: str | None = None,
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
        self.scope = scope  # the refusing budget's scope (budget_exceeded), for /metrics


# --- periods -----------------------------------------------------------------------------------


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime | None]:
    """[start, end) of the period containing ``now``, in UTC; lifetime never ends."""
    now = now.astimezone(UTC)
    if period == Budget.Period.DAY:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    if period == Budget.Period.MONTH:
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        return start, end
    return LIFETIME_START, None


def applicable_budgets(context: CallContext) -> list[Budget]:
    """Enabled budgets of the organization, the project, the member and the API key — in id
    order, the order every transaction locks them in, so two calls never wait on each other in
    a cycle. Kept in memory until a budget changes (``core.config_cache``)."""
    return cached(
        ("budgets", context.organization_id, context.project_id, context.user_id,
         context.api_key_id),
        partial(_applicable_budgets, context),
    )  # fmt: skip


def _applicable_budgets(context: CallContext, *, described: bool = True) -> list[Budget]:
    """``described``: with what ``Budget.describe()`` names (for a refusal's message)."""
    scope = Q(scope=Budget.Scope.ORGANIZATION)
    if context.project_id is not None:
        scope |= Q(scope=Budget.Scope.PROJECT, project_id=context.project_id)
        if context.user_id is not None:
            scope |= Q(
                scope=Budget.Scope.MEMBER, project_id=context.project_id, user_id=context.user_id
            )
    if context.api_key_id is not None:
        scope |= Q(scope=Budget.Scope.API_KEY, api_key_id=context.api_key_id)
    budgets = Budget.objects.filter(scope, organization_id=context.organization_id, enabled=True)
    if described:
        budgets = budgets.select_related("project", "user", "organization", "api_key")
    return list(budgets.order_by("id"))


def ledger_spend(budget: Budget, start: datetime, end: datetime | None) -> Decimal:
    rows = UsageRecord.objects.filter(organization_id=budget.organization_id, created_at__gte=start)
    if end is not None:
        rows = rows.filter(created_at__lt=end)
    # project=/user= rather than project_id=/user_id=: the same SQL, and typed as nullable.
    if budget.scope == Budget.Scope.PROJECT:
        rows = rows.filter(project=budget.project_id)
    elif budget.scope == Budget.Scope.MEMBER:
        rows = rows.filter(project=budget.project_id, user=budget.user_id)
    elif budget.scope == Budget.Scope.API_KEY:
        rows = rows.filter(api_key_id=budget.api_key_id)
    return pricing.units_to_cost(rows.aggregate(units=pricing.cost_units_sum())["units"])


def _locked_period(budget: Budget, now: datetime) -> tuple[BudgetPeriod, bool]:
    """The budget's current period row, locked, and whether it was just created — from what
    the ledger says, which is how counters and ledger stay equal for a budget added mid-month."""
    start, end = period_bounds(budget.period, now)
    # order_by(): the default ordering joins budget and organization, and FOR UPDATE would
    # then lock those rows too, queueing calls on unrelated budgets of the organization.
    period = (
        BudgetPeriod.objects.select_for_update()
        .filter(budget=budget, start=start)
        .order_by()
        .first()
    )
    if period is not None:
        return period, False
    created = True
    try:
        with transaction.atomic():  # a savepoint: a concurrent creator may win the race
            BudgetPeriod.objects.create(
                budget=budget, start=start, spent=ledger_spend(budget, start, end)
            )
    except IntegrityError:
        created = False
    return BudgetPeriod.objects.select_for_update().get(budget=budget, start=start), created


def _locked_periods(budgets: list[Budget], now: datetime) -> dict[int, tuple[BudgetPeriod, bool]]:
    """The current period of each budget, locked, and whether it was just created: one
    statement for the periods that exist (the usual case), in budget id order — the order
    every transaction locks them in, so two calls never wait on each other in a cycle."""
    starts = {budget.pk: period_bounds(budget.period, now)[0] for budget in budgets}
    if not starts:
        return {}
    found = {
        period.budget_id: period
        for period in BudgetPeriod.objects.select_for_update()
        .filter(budget_id__in=starts, start__in=set(starts.values()))
        .order_by("budget_id")  # no join: only the period rows are locked (see above)
        if period.start == starts[period.budget_id]
    }
    unstarted = [budget.pk for budget in budgets if budget.pk not in found]
    still_there: set[int] = set()
    if unstarted:
        # A period is about to start (once per budget and period): only for a budget that is
        # still there — the in-memory copy of another process may be a moment behind.
        still_there = set(Budget.objects.filter(pk__in=unstarted).values_list("pk", flat=True))
        if len(still_there) < len(unstarted):
            config_cache.invalidate()
    periods = {}
    for budget in sorted(budgets, key=lambda b: b.pk):
        period = found.get(budget.pk)
        if period is not None:
            periods[budget.pk] = (period, False)
        elif budget.pk in still_there:
            periods[budget.pk] = _locked_period(budget, now)
    return periods


def _release_expired(periods: list[BudgetPeriod], now: datetime) -> bool:
    """Free the expired holds on ``periods`` (locked), in the rows and in memory; whether
    there were any."""
    expired = list(
        Hold.objects.filter(period__in=[p.pk for p in periods], expires_at__lt=now).values_list(
            "pk", "period_id", "amount"
        )
    )
    if not expired:
        return False
    Hold.objects.filter(pk__in=[pk for pk, _, _ in expired]).delete()
    for period in periods:
        total = sum(
            (amount for _, period_id, amount in expired if period_id == period.pk), Decimal(0)
        )
        if total:
            BudgetPeriod.objects.filter(pk=period.pk).update(reserved=F("reserved") - total)
            period.reserved -= total
            logger.warning("released expired holds (%s USD) on budget %s", total, period.budget_id)
    return True


# --- rate limits -----------------------------------------------------------------------------


def _window_take(key: str, now: float, amount: int) -> float:
    """Add ``amount`` to this minute's count and return the sliding-window estimate that
    includes it: this minute's count plus the unexpired share of the last minute's.

    The add is one atomic increment (Redis in production, a lock in the local-memory cache), so
    concurrent calls each see a different count and no two can both take the last unit."""
    minute = int(now // 60)
    bucket = f"{key}:{minute}"
    cache.add(bucket, 0, timeout=150)
    current: int = cache.incr(bucket, amount)
    previous: int = cache.get(f"{key}:{minute - 1}", 0)
    return current + previous * (1 - (now % 60) / 60)


def _window_give_back(key: str, now: float, amount: int) -> None:
    """Undo a ``_window_take`` of a call that was refused after all."""
    # The bucket may have expired meanwhile (ValueError): then there is nothing to give back.
    with contextlib.suppress(ValueError):
        cache.decr(f"{key}:{int(now // 60)}", amount)


def rate_take(*, bucket: str, allowed: int, what: str, now: float | None = None) -> None:
    """One more request against a per-minute limit of its own (a flood of room messages,
    not an upstream call): refused with ``rate_limit_exceeded`` once ``allowed`` is passed."""
    now = timezone.now().timestamp() if now is None else now
    if _window_take(bucket, now, 1) > allowed:
        _window_give_back(bucket, now, 1)
        retry_after = max(1.0, 60 - now % 60)
        raise QuotaExceeded(
            # ``what`` is marked by its caller (gettext_noop) and said in today's language here.
            gettext("%(what)s is limited to %(count)s per minute. Try again in %(seconds)d s.")
            % {"what": gettext(what), "count": _number(allowed), "seconds": round(retry_after)},
            code="rate_limit_exceeded",
            retry_after=retry_after,
        )


def _limits(context: CallContext) -> list[tuple[str, str, int | None, int | None]]:
    """(who, cache key, requests/min, tokens/min) of the project and, for REST calls, the key;
    kept in memory until a limit changes (``core.config_cache``)."""
    return cached(
        ("limits", context.project_id, context.api_key_id), partial(_read_limits, context)
    )


def _read_limits(context: CallContext) -> list[tuple[str, str, int | None, int | None]]:
    limits = []
    if context.project_id is not None:
        project = RateLimit.objects.filter(project_id=context.project_id).first()
        if project is not None:
            limits.append(
                (
                    # Kept in memory for every language: translated when a refusal says it.
                    gettext_noop("This project"),
                    f"ratelimit:project:{context.project_id}",
                    project.requests_per_minute,
                    project.tokens_per_minute,
                )
            )
    if context.api_key_id is not None:
        from accounts.models import ApiKey

        key = (
            ApiKey.objects.filter(pk=context.api_key_id)
            .values("requests_per_minute", "tokens_per_minute")
            .first()
        )
        if key is not None:
            limits.append(
                (
                    gettext_noop("This API key"),
                    f"ratelimit:apikey:{context.api_key_id}",
                    key["requests_per_minute"],
                    key["tokens_per_minute"],
                )
            )
    return limits


def check_rate_limits(context: CallContext, *, tokens: int, now: float | None = None) -> None:
    """Requests and tokens per minute of the project and of the API key. The call is counted
    against every limit at once, atomically; if any refuses it, it is taken back from all."""
    now = timezone.now().timestamp() if now is None else now
    checks = []
    for who, key, requests, tokens_allowed in _limits(context):
        checks.append((who, requests, f"{key}:requests", 1, "requests"))
        checks.append((who, tokens_allowed, f"{key}:tokens", tokens, "tokens"))
    taken: list[tuple[str, int]] = []
    for who, allowed, bucket, amount, unit in checks:
        if not allowed:
            continue
        count = _window_take(bucket, now, amount)
        taken.append((bucket, amount))
        if count > allowed:
            for taken_bucket, taken_amount in taken:
                _window_give_back(taken_bucket, now, taken_amount)
            retry_after = max(1.0, 60 - now % 60)
            raise QuotaExceeded(
                RATE_REFUSALS[unit]
                % {"who": gettext(who), "count": _number(allowed), "seconds": round(retry_after)},
                code="rate_limit_exceeded",
                retry_after=retry_after,
            )


# --- reserve and settle ----------------------------------------------------------------------


PERIOD_WORDS: dict[str, str] = {
    Budget.Period.MONTH: gettext_noop("a month"),
    Budget.Period.DAY: gettext_noop("a day"),
    Budget.Period.LIFETIME: gettext_noop("in all"),
}


# A per-minute limit's refusal, by what it counts.
RATE_REFUSALS = {
    "requests": gettext_lazy(
        "%(who)s is limited to %(count)s requests per minute. Try again in %(seconds)d s."
    ),
    "tokens": gettext_lazy(
        "%(who)s is limited to %(count)s tokens per minute. Try again in %(seconds)d s."
    ),
}


def _number(value: int) -> str:
    """A count for a sentence, grouped the way the active language writes numbers."""
    return formats.number_format(value, force_grouping=True)


def money(amount: Decimal) -> str:
    """An amount for a sentence, by the one display rule: a $0.0001 budget with $0.0022 spent
    reads so, not "$0.00 a month, $0.00 spent"."""
    return core_money.usd(amount)


def _reset_phrase(budget: Budget, now: datetime) -> str:
    _, end = period_bounds(budget.period, now)
    if end is None:
        return gettext("It does not reset.")
    return gettext("It resets on %(date)s 00:00 UTC.") % {"date": f"{end:%Y-%m-%d}"}


def _affordable(
    budget: Budget, period: BudgetPeriod, price: ModelPrice, prompt_tokens: int, *, batch: bool
) -> int:
    """Reply tokens the budget can still pay for after this prompt, with what is in flight
    (-1: not even the prompt). ``batch``: at the batch rates."""
    remaining = budget.limit_usd - period.spent - period.reserved
    tier = pricing.tier_estimate(prompt_tokens)  # held as ``pricing.worst_case`` holds it
    prompt_cost = pricing.cost_of(
        price,
        prompt_tokens=prompt_tokens,
        cached_tokens=0,
        completion_tokens=0,
        batch=batch,
        tier_tokens=tier,
    )
    if remaining < prompt_cost:
        return -1
    output = pricing.rates(price, batch=batch, prompt_tokens=tier).output
    if not output:
        return UNLIMITED
    return int((remaining - prompt_cost) * PER_MILLION // output)


def _over_budget(budget: Budget, period: BudgetPeriod, now: datetime, *, afford: int) -> str:
    could = (
        " "
        + gettext("It can pay for at most %(tokens)s reply tokens now: ask for fewer (max_tokens).")
        % {"tokens": _number(afford)}
        if afford > 0
        else ""
    )
    figures = {
        "budget": budget.describe(),
        "limit": money(budget.limit_usd),
        "period": gettext(PERIOD_WORDS[budget.period]),
        "spent": money(period.spent),
        "reserved": money(period.reserved),
    }
    if period.reserved:
        over = gettext(
            "This would go over %(budget)s: %(limit)s %(period)s, %(spent)s spent, "
            "%(reserved)s in flight."
        )
    else:
        over = gettext("This would go over %(budget)s: %(limit)s %(period)s, %(spent)s spent.")
    return f"{over % figures}{could} {_reset_phrase(budget, now)}"


def unpriced_allowed(context: CallContext) -> bool:
    """Whether staff let the call's model run without a price: its connection's model says so
    (``ConnectionModel.unpriced_allowed``), or the server does for every model
    (``settings.BILLING_ALLOW_UNPRICED``). Read only for a model with no price, and kept in
    memory until a connection's models change (``core.config_cache``)."""
    if getattr(settings, "BILLING_ALLOW_UNPRICED", False):
        return True
    if context.connection_id is None:
        return False
    return cached(
        ("unpriced_allowed", context.connection_id, context.model),
        partial(_unpriced_allowed, context.connection_id, context.model),
        keep=bool,  # not a refusal: a /v1 client may name models without end
    )


def _unpriced_allowed(connection_id: int, model: str) -> bool:
    from providers.models import ConnectionModel

    # The name as the connection lists it (``fake-gpt@500`` too), or as the price table and
    # the catalog read it.
    names = {model, base_name(model)}
    return ConnectionModel.objects.filter(
        connection_id=connection_id, name__in=names, unpriced_allowed=True
    ).exists()


# Refusals that apps above billing add (billing imports none of them): each is called with a
# call's context before anything is held, and raises a ServiceError to refuse the call. Each
# runs on every call, so it reads memory (core.config_cache), never the database. lifecycle adds
# one: an organization scheduled for deletion spends nothing during its grace.
SPEND_GUARDS: list[Callable[[CallContext], None]] = []


def spend_guard_add(guard: Callable[[CallContext], None]) -> None:
    if guard not in SPEND_GUARDS:
        SPEND_GUARDS.append(guard)


def _check_spend_guards(context: CallContext) -> None:
    for guard in SPEND_GUARDS:
        guard(context)


@transaction.atomic
def quota_reserve(
    *,
    context: CallContext,
    prompt_tokens: int,
    max_tokens: int | None,
    output_limit: int | None = None,
    margin: bool = False,
) -> Reservation:
    """Cap the call and set its worst case aside on every budget that applies, or refuse it.

    The reply is capped at the smallest of what the caller asked for (``max_tokens``; None: as
    much as may be), what the model may write (``output_limit``) and what the tightest budget
    can still pay for. A caller who asked for more than a budget can pay is refused, told what
    it could afford; one who asked for nothing gets the cap (``Reservation.cap``), which is
    what must be sent upstream. ``margin``: hold ``reply_hold(cap)`` reply tokens rather than
    exactly the cap, for a stream that is counted here with another tokenizer than the
    upstream's and cut off when it passes what was held (``billing.metering``).

    A batch line (``context.batch``) is held at the model's batch rates (``pricing.rates``).
    A model with no price is refused under any budget (its cost cannot be held), and without
    one unless staff allowed it (``unpriced_allowed``): then it runs, and its ledger row has
    no price and costs nothing.
    """
    if max_tokens is None and output_limit is None:
        raise ValueError("a reservation needs max_tokens or output_limit")
    _check_spend_guards(context)
    now = timezone.now()
    wanted = min(t for t in (max_tokens, output_limit) if t is not None)
    price = pricing.price_for(context.model, on=now.date())
    budgets = applicable_budgets(context)
    if budgets and price is None:
        raise QuotaExceeded(
            gettext(
                "The model %(model)s has no price, so its cost cannot be held against "
                "%(budget)s. An admin needs to set its price."
            )
            % {"model": context.model, "budget": budgets[0].describe()},
            code="budget_exceeded",
            scope=budgets[0].scope,
        )
    if price is None and not unpriced_allowed(context):
        raise QuotaExceeded(
            gettext(
                "The model %(model)s has no price, so what it costs cannot be counted. The "
                "site's staff need to set its price, or allow it to run unpriced."
            )
            % {"model": context.model},
            code="model_unpriced",
        )
    # Every period locked (in budget id order) before any is read for the cap: what each can
    # still pay cannot change until this transaction ends.
    locked = _locked_periods(budgets, now)
    budgets = [budget for budget in budgets if budget.pk in locked]  # not one deleted meanwhile
    periods = [period for period, _ in locked.values()]

    def capped() -> tuple[int, QuotaExceeded | None]:
        cap = wanted
        for budget in budgets:
            period, _ = locked[budget.pk]
            afford = _affordable(
                budget, period, cast(ModelPrice, price), prompt_tokens, batch=context.batch
            )
            afford = cap_within(afford, margin=margin) if afford >= 0 else -1
            if afford < (1 if max_tokens is None else max_tokens):
                message = _over_budget(budget, period, now, afford=afford)
                return cap, QuotaExceeded(message, code="budget_exceeded", scope=budget.scope)
            cap = min(cap, afford)
        return cap, None

    cap, refusal = capped()
    # Holds of calls whose process died expire (Celery beat sweeps them): one never refuses or
    # caps a call, so a budget that would is looked at again without them.
    if (refusal or cap < wanted) and _release_expired(periods, now):
        cap, refusal = capped()
    if refusal is not None:
        raise refusal
    check_rate_limits(context, tokens=prompt_tokens + cap)
    held_reply = reply_hold(cap, margin=margin)
    amount = pricing.worst_case(
        price, prompt_tokens=prompt_tokens, max_tokens=held_reply, batch=context.batch
    )
    request_id = uuid.uuid4()
    if periods:
        ledger_sql.periods_add([p.pk for p in periods], reserved=amount)
        ledger_sql.holds_insert(
            [p.pk for p in periods],
            request_id=request_id,
            amount=amount,
            expires_at=now + timedelta(seconds=settings.BILLING_HOLD_SECONDS),
            now=now,
        )
    return Reservation(
        request_id=request_id,
        context=context,
        amount=amount,
        price_id=price.pk if price else None,
        prompt_tokens_estimate=prompt_tokens,
        cap=cap,
        held_reply=held_reply,
    )


def _ledger_row(context: CallContext, **fields: Any) -> UsageRecord:
    """A call's ledger row (not saved): who and where from its context, the rest as given."""
    return UsageRecord(
        organization_id=context.organization_id,
        project_id=context.project_id,
        user_id=context.user_id,
        api_key_id=context.api_key_id,
        connection_id=context.connection_id,
        source=context.source,
        model=context.model,
        **fields,
    )


@transaction.atomic
def quota_settle(
    *,
    reservation: Reservation,
    status: str,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    estimated: bool = False,
    latency_ms: int | None = None,
    message_id: int | None = None,
    conversation_deleted: bool = False,
) -> UsageRecord:
    """Release the holds, charge the real cost to every budget that applies, write the row.

    Idempotent per call: a reply closed as orphaned whose process turns out to finish after all
    keeps the row written first. The row keeps the price it was held at (``price``; none for a
    model staff let run unpriced) and the cost at that price's rates (batch ones for a batch
    line)."""
    now = timezone.now()
    context = reservation.context
    price = None if reservation.price_id is None else pricing.price_by_id(reservation.price_id)
    cost = pricing.cost_of(
        price,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached_tokens,
        completion_tokens=completion_tokens,
        batch=context.batch,
    )
    # The upstream answered with more than the hold allowed (it ignored the cap it was sent):
    # the ledger keeps what it reported, flagged, and staff hear of it.
    over_hold = reservation.cap > 0 and (
        completion_tokens > reservation.held_reply or cost > reservation.amount
    )
    record = _ledger_row(
        context,
        request_id=reservation.request_id,
        conversation_id=None if conversation_deleted else context.conversation_id,
        message_id=message_id,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
        price=price,
        status=status,
        estimated=estimated,
        over_hold=over_hold,
        latency_ms=latency_ms,
        created_at=now,
    )
    if not ledger_sql.record_insert(record):  # settled already: the first row stands
        return UsageRecord.objects.get(request_id=reservation.request_id)
    rollup_add(record)
    # The holds still there (one that expired was released by whoever found it expired).
    held = ledger_sql.holds_take(reservation.request_id)
    if over_hold:
        logger.error(
            "call %s used more than it held: %s reply tokens (cap %s, %s held), %s USD (%s held)",
            reservation.request_id, completion_tokens, reservation.cap, reservation.held_reply,
            cost, reservation.amount,
        )  # fmt: skip
        from .tasks import alert_over_hold

        transaction.on_commit(partial(alert_over_hold.delay, record.pk))
    # Every budget that covers the call is charged: those that apply now, and those it was held
    # against even if disabled meanwhile, so no budget's counter drifts from the ledger. Read
    # here, not from the cache: a budget another process added a moment ago (its counter
    # started from the ledger without this row) must be charged too.
    budgets = {b.pk: b for b in _applicable_budgets(context, described=False)}
    locked = _locked_periods(list(budgets.values()), now)
    stray = {period_id for period_id, _ in held} - {p.pk for p, _ in locked.values()}
    if stray:  # held on a budget that no longer applies, or on a period that has ended
        held_budgets = BudgetPeriod.objects.filter(pk__in=stray).values_list("budget", flat=True)
        missing = set(held_budgets) - budgets.keys()
        if missing:
            budgets.update(Budget.objects.in_bulk(missing))
            locked.update(_locked_periods([budgets[pk] for pk in sorted(missing)], now))
    _release_and_charge(held, locked, cost)
    for budget_id, (period, created) in locked.items():
        # A period just created started from the ledger, this row included.
        before = period.spent - cost if created else period.spent
        _alert_on_crossing(budgets[budget_id], period, before=before, after=before + cost)
    return record


def _release_and_charge(
    held: list[tuple[int, Decimal]],
    locked: dict[int, tuple[BudgetPeriod, bool]],
    cost: Decimal,
) -> None:
    """Release the holds and charge ``cost`` to the current periods (not to one just created
    from the ledger, which counts the call already): in one statement when, as usual, the call
    was held on exactly the periods it is charged to."""
    release = sorted({period_id for period_id, _ in held})
    charge = sorted(period.pk for period, created in locked.values() if not created)
    amounts = {amount for _, amount in held}  # one amount per call, as held
    if len(amounts) == 1 and release == charge:
        ledger_sql.periods_add(release, reserved=-amounts.pop(), spent=cost)
        return
    for amount in amounts:
        ledger_sql.periods_add(
            sorted(period_id for period_id, held_amount in held if held_amount == amount),
            reserved=-amount,
        )
    if cost:
        ledger_sql.periods_add(charge, spent=cost)


def _alert_on_crossing(
    budget: Budget, period: BudgetPeriod, *, before: Decimal, after: Decimal
) -> None:
    if not budget.limit_usd:
        return
    for threshold in budget.thresholds():
        line = budget.limit_usd * threshold / 100
        if before < line <= after:
            _, created = BudgetAlert.objects.get_or_create(
                budget=budget, period_start=period.start, threshold=threshold
            )
            if created:
                from .tasks import send_budget_alert

                transaction.on_commit(partial(send_budget_alert.delay, budget.pk, threshold))


def holds_expire(now: datetime | None = None) -> int:
    """Release every expired hold (Celery beat runs this; reservations also do it as they go)."""
    now = now or timezone.now()
    released = 0
    for period_id in (
        Hold.objects.filter(expires_at__lt=now).values_list("period_id", flat=True).distinct()
    ):
        with transaction.atomic():
            period = BudgetPeriod.objects.select_for_update().get(pk=period_id)
            before = period.holds.count()
            _release_expired([period], now)
            released += before - period.holds.count()
    return released


# --- a batch handed to the upstream's own Batch API ------------------------------------------
#
# One hold covers the whole batch (every line's worst case, at the batch rates), from before it
# is submitted until its results are collected: it lasts until the batch's window ends (its own
# ``expires_at``, not BILLING_HOLD_SECONDS), so ``holds_expire`` frees it only once the batch
# can no longer be collected. Each result line then writes its own ledger row, paid out of what
# is left of the hold (``quota_settle_held``: exactly once per request id, as ``quota_settle``),
# and what remains is given back when the batch ends (``quota_release``).


@dataclass(frozen=True)
class HeldLine:
    """One request of a batch, as held: its model, its prompt tokens (with the estimate's
    margin) and the reply tokens the hold covers."""

    model: str
    prompt_tokens: int
    reply_tokens: int


@dataclass(frozen=True)
class BatchHold:
    request_id: uuid.UUID  # the hold's, not a call's: no ledger row has it
    amount: Decimal
    # The price each model's lines are charged at: the one in force when the hold was taken
    # (None: a model staff let run unpriced).
    prices: dict[str, int | None]


@transaction.atomic
def quota_reserve_batch(
    *,
    context: CallContext,
    lines: list[HeldLine],
    request_id: uuid.UUID,
    expires_at: datetime,
) -> BatchHold:
    """Hold the worst case of every line of a batch at once, on every budget that applies,
    until ``expires_at``; or refuse the whole batch (``QuotaExceeded``: a budget that cannot
    hold it all, a rate limit — the batch's tokens counted as one request's —, a model with
    no price) before anything is sent. ``context.model`` is unused: each line names its own.
    Lines are not capped to what a budget can pay here: the caller caps them first."""
    from dataclasses import replace

    _check_spend_guards(context)
    now = timezone.now()
    budgets = applicable_budgets(context)
    prices: dict[str, ModelPrice | None] = {}
    amount = Decimal(0)
    tokens = 0
    for line in lines:
        if line.model not in prices:
            price = pricing.price_for(line.model, on=now.date())
            if budgets and price is None:
                raise QuotaExceeded(
                    gettext(
                        "The model %(model)s has no price, so its cost cannot be held against "
                        "%(budget)s. An admin needs to set its price."
                    )
                    % {"model": line.model, "budget": budgets[0].describe()},
                    code="budget_exceeded",
                    scope=budgets[0].scope,
                )
            if price is None and not unpriced_allowed(replace(context, model=line.model)):
                raise QuotaExceeded(
                    gettext(
                        "The model %(model)s has no price, so what it costs cannot be counted. "
                        "The site's staff need to set its price, or allow it to run unpriced."
                    )
                    % {"model": line.model},
                    code="model_unpriced",
                )
            prices[line.model] = price
        amount += pricing.worst_case(
            prices[line.model],
            prompt_tokens=line.prompt_tokens,
            max_tokens=line.reply_tokens,
            batch=context.batch,
        )
        tokens += line.prompt_tokens + line.reply_tokens
    locked = _locked_periods(budgets, now)
    budgets = [budget for budget in budgets if budget.pk in locked]
    periods = [period for period, _ in locked.values()]

    def refusal() -> QuotaExceeded | None:
        for budget in budgets:
            period, _ = locked[budget.pk]
            if budget.limit_usd - period.spent - period.reserved < amount:
                message = _over_budget(budget, period, now, afford=0)
                return QuotaExceeded(message, code="budget_exceeded", scope=budget.scope)
        return None

    refused = refusal()
    if refused is not None and _release_expired(periods, now):
        refused = refusal()
    if refused is not None:
        raise refused
    check_rate_limits(context, tokens=tokens)
    if periods:
        ledger_sql.periods_add([p.pk for p in periods], reserved=amount)
        ledger_sql.holds_insert(
            [p.pk for p in periods],
            request_id=request_id,
            amount=amount,
            expires_at=expires_at,
            now=now,
        )
    return BatchHold(
        request_id=request_id,
        amount=amount,
        prices={model: price.pk if price else None for model, price in prices.items()},
    )


def _lock_hold_periods(hold_id: uuid.UUID, locked: dict[int, tuple[BudgetPeriod, bool]]) -> None:
    """Lock the periods the hold is on that ``locked`` does not have (one that ended, one whose
    budget no longer applies), before its rows are touched: ``holds_expire`` locks a period
    before it deletes that period's holds."""
    held = set(Hold.objects.filter(request_id=hold_id).values_list("period_id", flat=True))
    stray = held - {period.pk for period, _ in locked.values()}
    if stray:
        list(BudgetPeriod.objects.select_for_update().filter(pk__in=stray).order_by("budget_id"))


def _hold_pay(hold_id: uuid.UUID, cost: Decimal) -> list[tuple[int, Decimal]]:
    """Take ``cost`` (or what is left, if less) out of the hold on each of its periods: (period
    id, amount taken) of each. A hold paid out entirely goes."""
    taken = []
    for pk, period_id, amount in Hold.objects.filter(request_id=hold_id).values_list(
        "pk", "period_id", "amount"
    ):
        part = min(amount, cost)
        if part == amount:
            Hold.objects.filter(pk=pk).delete()
        elif part:
            Hold.objects.filter(pk=pk).update(amount=amount - part)
        taken.append((period_id, part))
    return taken


@transaction.atomic
def quota_settle_held(
    *,
    hold_id: uuid.UUID,
    request_id: uuid.UUID,
    context: CallContext,
    price_id: int | None,
    status: str,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    estimated: bool = False,
    latency_ms: int | None = None,
) -> UsageRecord:
    """Write one line's ledger row (``request_id``: unique per line; a second settle of the same
    line keeps the first row and changes nothing), charge its cost to every budget that applies,
    and pay it out of what is left of the batch's hold (``hold_id``), as ``quota_settle`` does
    for a call's own hold. Priced at ``price_id``'s rates (the batch ones for a batch line)."""
    now = timezone.now()
    price = None if price_id is None else pricing.price_by_id(price_id)
    cost = pricing.cost_of(
        price,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached_tokens,
        completion_tokens=completion_tokens,
        batch=context.batch,
    )
    record = _ledger_row(
        context,
        request_id=request_id,
        conversation_id=context.conversation_id,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
        price=price,
        status=status,
        estimated=estimated,
        latency_ms=latency_ms,
        created_at=now,
    )
    if not ledger_sql.record_insert(record):  # settled already: the first row stands
        return UsageRecord.objects.get(request_id=request_id)
    rollup_add(record)
    budgets = {b.pk: b for b in _applicable_budgets(context, described=False)}
    locked = _locked_periods(list(budgets.values()), now)
    _lock_hold_periods(hold_id, locked)
    _release_and_charge(_hold_pay(hold_id, cost), locked, cost)
    for budget_id, (period, created) in locked.items():
        before = period.spent - cost if created else period.spent
        _alert_on_crossing(budgets[budget_id], period, before=before, after=before + cost)
    return record


@transaction.atomic
def quota_release(*, hold_id: uuid.UUID) -> Decimal:
    """Give back what is left of a hold (a batch's, once it ended): nothing if it is gone
    already (released, paid out, or expired). The amount given back, per period."""
    _lock_hold_periods(hold_id, {})
    held = ledger_sql.holds_take(hold_id)
    for amount in {amount for _, amount in held}:
        ledger_sql.periods_add(
            sorted(period_id for period_id, part in held if part == amount), reserved=-amount
        )
    return max((amount for _, amount in held), default=Decimal(0))
