"""Reads of the usage ledger for dashboards, exports, statements and the budget banner.

Everything is scoped to one organization (and, for a plain member, to their own calls) through
``UsageScope``, and every figure is aggregated by the database: no ledger row is loaded into
Python except by the CSV export, which streams them.

The aggregates (by day, model, member, API key, project) read the daily rollups of the ledger
(``UsageRollup``, kept by billing/rollups.py in the transaction of every change), not its rows:
a range is whole UTC days, so summing a group's days gives exactly what summing its rows
would, from a few thousand rows instead of a few hundred thousand. The CSV export reads rows.

Costs are summed as integers of 1e-12 USD (the rollups' ``cost_units``; ``cost_units_sum`` on
the ledger), which is exact on every backend: SQLite keeps a DecimalField as a REAL (15
significant digits) and sums floats, so ``Sum("cost")`` there drifts in the last places once
amounts pass $1,000 or rows pile up.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar, cast

from django.db.models import (
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
)
from django.http import Http404
from django.utils import timezone
from django.utils.translation import gettext, gettext_noop

from accounts.models import MANAGER_ROLES, ApiKey, Membership, Organization, Project, User
from core import money

from .models import (
    Budget,
    BudgetAlert,
    BudgetPeriod,
    Statement,
    UsageRecord,
    UsageRollup,
)
from .pricing import is_priced, units_to_cost
from .services import ledger_spend, period_bounds

# The longest range the dashboard aggregates at once: a year, leap day included.
MAX_RANGE_DAYS = 366


# --- scope and range ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageScope:
    """Whose usage a reader may see: the whole organization, or one member's own calls."""

    organization: Organization
    user_id: int | None = None
    # The REST API's narrower views: one project; and, for a project key, the project's calls
    # made with keys only (a key is the project's API side; members' chats are not its own).
    project_id: int | None = None
    api_keys_only: bool = False

    @classmethod
    def for_membership(cls, membership: Membership) -> UsageScope:
        """Owners and admins see the organization; a member sees only their own usage."""
        if membership.can_manage:
            return cls(organization=membership.organization)
        return cls(organization=membership.organization, user_id=membership.user_id)

    @property
    def is_whole_organization(self) -> bool:
        return self.user_id is None


@dataclass(frozen=True)
class DateRange:
    """Whole UTC days from ``start`` to ``end``, both included."""

    start: date
    end: date

    @classmethod
    def month_to_date(cls, today: date) -> DateRange:
        return cls(start=today.replace(day=1), end=today)

    @property
    def start_at(self) -> datetime:
        return datetime(self.start.year, self.start.month, self.start.day, tzinfo=UTC)

    @property
    def end_at(self) -> datetime:
        """The first instant after the range (exclusive)."""
        return datetime(self.end.year, self.end.month, self.end.day, tzinfo=UTC) + timedelta(days=1)

    def days(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days + 1)]


M = TypeVar("M", UsageRecord, UsageRollup)


def ledger_rows(scope: UsageScope, date_range: DateRange) -> QuerySet[UsageRecord]:
    """The ledger rows a scope may see in a range: the one path every usage read starts from."""
    rows = UsageRecord.objects.for_organization(scope.organization).filter(
        created_at__gte=date_range.start_at, created_at__lt=date_range.end_at
    )
    return _within(scope, rows)


def rollup_rows(scope: UsageScope, date_range: DateRange) -> QuerySet[UsageRollup]:
    """The daily rollups a scope may see in a range: ``ledger_rows``, summed by UTC day and
    group (organization, project, user, API key, model). Every aggregate reads these."""
    rows = UsageRollup.objects.for_organization(scope.organization).filter(
        day__gte=date_range.start, day__lte=date_range.end
    )
    return _within(scope, rows)


def _within(scope: UsageScope, rows: QuerySet[M]) -> QuerySet[M]:
    """``rows`` (ledger rows or rollups, already of the scope's organization) narrowed to the
    member, the project or the API keys the scope is limited to."""
    if scope.user_id is not None:
        rows = rows.filter(user_id=scope.user_id)
    if scope.project_id is not None:
        rows = rows.filter(project_id=scope.project_id)
    if scope.api_keys_only:
        rows = rows.filter(api_key__isnull=False)
    return rows


# --- aggregates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spend:
    """What one group (a day, a model, a member, a project, or everything) consumed."""

    label: str = ""
    key: Any = None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = field(default_factory=lambda: units_to_cost(0))
    # False: the group's calls ran at no price (a model staff let run unpriced), so its cost
    # reads "unpriced", not $0. Only the groups by model know it; the others say True.
    priced: bool = True

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _spend(row: Mapping[str, Any], *, label: str, key: Any, priced: bool = True) -> Spend:
    """A group's rollups, summed as ``sum_calls``, ``sum_prompt``, ``sum_completion`` and
    ``sum_cost_units`` (not named as the rollups' own columns, which the ORM refuses)."""
    return Spend(
        label=label,
        key=key,
        calls=row["sum_calls"],
        prompt_tokens=row["sum_prompt"] or 0,
        completion_tokens=row["sum_completion"] or 0,
        cost=units_to_cost(row["sum_cost_units"]),
        priced=priced,
    )


def spend_by_day(scope: UsageScope, date_range: DateRange) -> list[Spend]:
    """Every day of the range, the days without calls included (as zeros)."""
    rows = (
        rollup_rows(scope, date_range)
        .values("day")
        .annotate(
            sum_calls=Sum("calls"),
            sum_prompt=Sum("prompt_tokens"),
            sum_completion=Sum("completion_tokens"),
            sum_cost_units=Sum("cost_units"),
        )
        .order_by("day")
    )
    found = {row["day"]: row for row in rows}
    return [
        _spend(found[day], label=day.isoformat(), key=day)
        if day in found
        else Spend(label=day.isoformat(), key=day)
        for day in date_range.days()
    ]


def spend_by_model(scope: UsageScope, date_range: DateRange) -> list[Spend]:
    rows = (
        rollup_rows(scope, date_range)
        .values("model")
        .annotate(
            sum_calls=Sum("calls"),
            sum_prompt=Sum("prompt_tokens"),
            sum_completion=Sum("completion_tokens"),
            sum_cost_units=Sum("cost_units"),
        )
        .order_by("-sum_cost_units", "model")
    )
    return [
        _spend(
            row,
            label=row["model"],
            key=row["model"],
            # No price on the range's last day: none before it either, so every call of the
            # model in the range ran at no price (and cost nothing).
            priced=bool(row["sum_cost_units"]) or is_priced(row["model"], on=date_range.end),
        )
        for row in rows
    ]


def spend_by_member(scope: UsageScope, date_range: DateRange) -> list[Spend]:
    """Per user; calls without one (a deleted account; API keys, later) are one group.

    Names are read afterwards for the few ids found: joining users to every row of the range
    costs more than the aggregate itself."""
    rows = list(
        rollup_rows(scope, date_range)
        .values("user_id")
        .annotate(
            sum_calls=Sum("calls"),
            sum_prompt=Sum("prompt_tokens"),
            sum_completion=Sum("completion_tokens"),
            sum_cost_units=Sum("cost_units"),
        )
        .order_by("-sum_cost_units", "user_id")
    )
    names = {
        pk: name or email
        for pk, name, email in User.objects.filter(
            pk__in=[row["user_id"] for row in rows if row["user_id"]]
        ).values_list("pk", "name", "email")
    }
    return [
        _spend(
            row,
            label=names.get(row["user_id"], "") or "(no user)",
            key=row["user_id"],
        )
        for row in rows
    ]


def spend_by_api_key(scope: UsageScope, date_range: DateRange) -> list[Spend]:
    """Per API key (labelled by its name and prefix…last4); calls without a key are one
    group, labelled "(no key: chat)"."""
    rows = list(
        rollup_rows(scope, date_range)
        .values("api_key_id")
        .annotate(
            sum_calls=Sum("calls"),
            sum_prompt=Sum("prompt_tokens"),
            sum_completion=Sum("completion_tokens"),
            sum_cost_units=Sum("cost_units"),
        )
        .order_by("-sum_cost_units", "api_key_id")
    )
    keys = ApiKey.objects.filter(pk__in=[r["api_key_id"] for r in rows if r["api_key_id"]])
    labels = {key.pk: str(key) for key in keys}
    return [
        _spend(
            row,
            label=labels.get(row["api_key_id"], "(no key: chat)"),
            key=row["api_key_id"],
        )
        for row in rows
    ]


def spend_by_project(scope: UsageScope, date_range: DateRange) -> list[Spend]:
    """Per project; calls of deleted projects are one group. Names as in ``spend_by_member``."""
    rows = list(
        rollup_rows(scope, date_range)
        .values("project_id")
        .annotate(
            sum_calls=Sum("calls"),
            sum_prompt=Sum("prompt_tokens"),
            sum_completion=Sum("completion_tokens"),
            sum_cost_units=Sum("cost_units"),
        )
        .order_by("-sum_cost_units", "project_id")
    )
    names = dict(
        Project.objects.filter(
            pk__in=[row["project_id"] for row in rows if row["project_id"]]
        ).values_list("pk", "name")
    )
    return [
        _spend(
            row,
            label=names.get(row["project_id"], "") or "(deleted project)",
            key=row["project_id"],
        )
        for row in rows
    ]


def total_of(groups: list[Spend]) -> Spend:
    """The sum of disjoint groups (e.g. the days of a range): exact, no second scan."""
    return Spend(
        label="Total",
        calls=sum(g.calls for g in groups),
        prompt_tokens=sum(g.prompt_tokens for g in groups),
        completion_tokens=sum(g.completion_tokens for g in groups),
        cost=sum((g.cost for g in groups), units_to_cost(0)),
    )


# --- budgets -----------------------------------------------------------------------------------


def budget_subject(budget: Budget) -> str:
    """Whose spending a budget limits, for people: "Acme", "Project X", "Ann in project X",
    "API key ci (lgw_AbCd1234…wxyz) in project X"."""
    if budget.scope == Budget.Scope.ORGANIZATION:
        return budget.organization.name
    # cast: the other scopes have a project, and a member budget its member (the scope check
    # constraint).
    if budget.scope == Budget.Scope.PROJECT:
        return gettext("Project %(project)s") % {"project": cast(Project, budget.project).name}
    if budget.scope == Budget.Scope.API_KEY:
        return gettext("API key %(key)s in project %(project)s") % {
            "key": budget.api_key,
            "project": cast(Project, budget.project).name,
        }
    user = cast(User, budget.user)
    return gettext("%(person)s in project %(project)s") % {
        "person": user.get_full_name(),
        "project": cast(Project, budget.project).name,
    }


@dataclass(frozen=True)
class BudgetStatus:
    """A budget's spend in its current period (the counter, or the ledger when it has none)."""

    budget: Budget
    period_start: datetime
    period_end: datetime | None
    spent: Decimal
    reserved: Decimal

    @property
    def subject(self) -> str:
        return budget_subject(self.budget)

    @property
    def percent(self) -> Decimal:
        if not self.budget.limit_usd:
            return Decimal(100) if self.spent else Decimal(0)
        return (self.spent * 100 / self.budget.limit_usd).quantize(
            Decimal("0.1"), rounding=ROUND_HALF_UP
        )

    @property
    def bar_width(self) -> str:
        """The % bar's width as a CSS percentage, capped at 100."""
        return f"{min(self.percent, Decimal(100)):.1f}"

    @property
    def level(self) -> str:
        if self.percent >= 100:
            return "over"
        if self.percent >= 80:
            return "high"
        return "ok"

    @property
    def remaining(self) -> Decimal:
        """What calls may still spend this period: the limit less spent and held, not below 0."""
        return max(self.budget.limit_usd - self.spent - self.reserved, Decimal(0))


def budgets_for(scope: UsageScope) -> QuerySet[Budget]:
    """Enabled budgets a reader may see: all of them for managers; for a member, those that
    apply to their own calls (the organization's, the projects', and their own — not the API
    keys', which limit calls made with a key, never a member's)."""
    budgets = Budget.objects.filter(organization=scope.organization, enabled=True)
    if scope.user_id is not None:
        budgets = budgets.filter(
            ~Q(scope__in=[Budget.Scope.MEMBER, Budget.Scope.API_KEY]) | Q(user_id=scope.user_id),
        )
    return budgets.select_related("organization", "project", "user", "api_key").order_by(
        "scope", "project__name", "id"
    )


def budget_statuses(scope: UsageScope, *, now: datetime | None = None) -> list[BudgetStatus]:
    """Two queries, plus one ledger sum per budget that has no counter for its period yet."""
    return statuses_of(budgets_for(scope), now=now)


def statuses_of(budgets: Iterable[Budget], *, now: datetime | None = None) -> list[BudgetStatus]:
    """The current period's figures of ``budgets`` (already scoped by the caller): one query
    for the counters, plus one ledger sum per budget that has no counter for its period yet."""
    now = now or timezone.now()
    budgets = list(budgets)
    bounds = {b.pk: period_bounds(b.period, now) for b in budgets}
    counters = {
        (p.budget_id, p.start): p
        for p in BudgetPeriod.objects.filter(
            budget__in=budgets, start__in={start for start, _ in bounds.values()}
        ).order_by()  # not Meta's, which joins the budget and its organization to sort
    }
    statuses = []
    for budget in budgets:
        start, end = bounds[budget.pk]
        counter = counters.get((budget.pk, start))
        if counter is not None:
            spent, reserved = counter.spent, counter.reserved
        else:
            spent, reserved = ledger_spend(budget, start, end), Decimal(0)
        statuses.append(
            BudgetStatus(
                budget=budget, period_start=start, period_end=end, spent=spent, reserved=reserved
            )
        )
    return statuses


# --- the dashboard -----------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageDashboard:
    scope: UsageScope
    date_range: DateRange
    by_day: list[Spend]
    by_model: list[Spend]
    by_project: list[Spend]
    by_member: list[Spend] | None  # None for a member, who sees only their own usage
    total: Spend
    budgets: list[BudgetStatus]


def usage_dashboard(
    *, scope: UsageScope, date_range: DateRange, now: datetime | None = None
) -> UsageDashboard:
    """Four aggregate queries over the range, two for names, two for budgets (see
    ``budget_statuses``)."""
    by_day = spend_by_day(scope, date_range)
    return UsageDashboard(
        scope=scope,
        date_range=date_range,
        by_day=by_day,
        by_model=spend_by_model(scope, date_range),
        by_project=spend_by_project(scope, date_range),
        by_member=spend_by_member(scope, date_range) if scope.is_whole_organization else None,
        total=total_of(by_day),
        budgets=budget_statuses(scope, now=now),
    )


EXPORT_COLUMNS = (
    ("created_at", "created_at"),
    ("request_id", "request_id"),
    ("project", "project__name"),
    ("user", "user__email"),
    ("model", "model"),
    ("source", "source"),
    ("status", "status"),
    ("prompt_tokens", "prompt_tokens"),
    ("cached_tokens", "cached_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("cost_usd", "cost"),
    ("estimated", "estimated"),
    ("latency_ms", "latency_ms"),
)


def ledger_export_rows(
    scope: UsageScope, date_range: DateRange, *, chunk_size: int = 2000
) -> Iterator[tuple[Any, ...]]:
    """The range's ledger rows, oldest first, as tuples in EXPORT_COLUMNS order, streamed."""
    return (
        ledger_rows(scope, date_range)
        .order_by("created_at", "id")
        .values_list(*(column for _, column in EXPORT_COLUMNS))
        .iterator(chunk_size=chunk_size)
    )


# --- statements --------------------------------------------------------------------------------


def statements_for(organization: Organization) -> QuerySet[Statement]:
    return Statement.objects.filter(organization=organization).order_by("-period_start")


def get_statement_or_404(*, organization: Organization, pk: int) -> Statement:
    try:
        return statements_for(organization).get(pk=pk)
    except Statement.DoesNotExist:
        raise Http404(gettext("No such statement.")) from None


# --- the budget banner -------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetBanner:
    """The highest threshold a budget crossed in its current period, as a sentence."""

    alert: BudgetAlert
    period_end: datetime | None

    @property
    def budget(self) -> Budget:
        return self.alert.budget

    @property
    def reached(self) -> bool:
        return self.alert.threshold >= 100

    @property
    def subject(self) -> str:
        return budget_subject(self.budget)

    @property
    def message(self) -> str:
        budget = self.budget
        if self.reached:
            if self.period_end is None:
                return gettext(
                    "%(subject)s has reached its limit: new messages are refused until the "
                    "limit is raised."
                ) % {"subject": self.subject}
            return gettext(
                "%(subject)s has reached its limit: new messages are refused until %(until)s UTC."
            ) % {"subject": self.subject, "until": f"{self.period_end:%Y-%m-%d %H:%M}"}
        kinds: dict[str, str] = {
            Budget.Period.MONTH: gettext_noop(
                "%(subject)s has used %(percent)s%% of its %(limit)s monthly budget."
            ),
            Budget.Period.DAY: gettext_noop(
                "%(subject)s has used %(percent)s%% of its %(limit)s daily budget."
            ),
        }
        sentence = kinds.get(
            budget.period,
            gettext_noop("%(subject)s has used %(percent)s%% of its %(limit)s budget."),
        )
        return gettext(sentence) % {
            "subject": self.subject,
            "percent": self.alert.threshold,
            "limit": money.usd(budget.limit_usd),
        }


def current_budget_banners(
    *,
    user_id: int,
    organization_slug: str | None,
    two_factor_verified: bool = False,
    now: datetime | None = None,
) -> list[BudgetBanner]:
    """One query: the organization's alerts of the current periods, if the user is a member
    (``organization_slug`` None: of every organization the user is in, for the home page).

    Per budget only the highest threshold crossed; an alert the budget no longer bears out
    (its limit was raised since, or the threshold was taken off) is left out. Member budgets
    show to their member and to managers only; API key budgets to managers only (they limit no
    member's calls). Organizations that require two-factor authentication show nothing to a
    session that has not given a second factor, as they show it nothing else.
    """
    now = now or timezone.now()
    current = Q()
    ends = {}
    for period in Budget.Period.values:
        start, ends[period] = period_bounds(period, now)
        current |= Q(budget__period=period, period_start=start)
    where = Q()
    if organization_slug is not None:
        where &= Q(budget__organization__slug=organization_slug)
    if not two_factor_verified:
        where &= Q(budget__organization__require_two_factor=False)
    # One filter() call, so both conditions on memberships share one join: the user's own row.
    alerts = (
        BudgetAlert.objects.filter(
            current,
            where,
            Q(budget__organization__memberships__user_id=user_id),
            ~Q(budget__scope__in=[Budget.Scope.MEMBER, Budget.Scope.API_KEY])
            | Q(budget__user_id=user_id)
            | Q(budget__organization__memberships__role__in=MANAGER_ROLES),
            budget__enabled=True,
        )
        .annotate(
            spent=Subquery(
                BudgetPeriod.objects.filter(
                    budget=OuterRef("budget"), start=OuterRef("period_start")
                )
                .order_by()
                .values("spent")[:1]
            )
        )
        .select_related(
            "budget__organization", "budget__project", "budget__user", "budget__api_key"
        )
        .order_by("budget_id", "-threshold")
    )
    banners: dict[int, BudgetBanner] = {}
    for alert in alerts:
        budget = alert.budget
        if budget.pk in banners:
            continue
        line = budget.limit_usd * alert.threshold / 100
        if alert.spent is not None and alert.spent < line:
            continue  # the limit was raised after the alert: no longer true
        if alert.threshold not in budget.thresholds():
            continue  # the threshold was taken off the budget since
        banners[budget.pk] = BudgetBanner(alert=alert, period_end=ends[budget.period])
    return sorted(banners.values(), key=lambda b: (-b.alert.threshold, b.subject))
