"""Budgets and rate limits as an organization's owners and admins set them (pages and REST).

Writes only; every function is keyword-only and atomic, and checks the actor before it writes
(``check_*`` first). Saving a Budget, a RateLimit or an ApiKey empties the in-memory copy every
call reads (``core.config_cache``, registered in billing/apps.py), so a change holds from the
very next call.

What a change does to the counters (``BudgetPeriod``), which must stay equal to the ledger:

- The limit or the thresholds: nothing. A limit lowered below what is already spent refuses
  the next call (``quota_reserve`` compares against the counter); calls in flight finish and
  are charged as held. Thresholds the spending has already passed are recorded at once, so
  the banner shows and owners and admins get the e-mail (once per threshold and period).
- What a budget covers (scope, project, member, key): it cannot change, as in the admin — the
  counters were kept for what it covered. Add another budget instead.
- The period (month, day, lifetime), or turning a disabled budget back on: the counter of the
  period now current is set from the ledger under the row lock reserve takes, exactly as a
  new budget's counter starts; the next call charges against it. A counter of an earlier
  period is not reused without this, so one left behind by a switch back and forth (or one
  not charged while the budget was off) can never be read stale. Holds of calls in flight
  stay where they were made; their settle releases them there and charges the current
  period, as at the turn of a month.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from functools import partial

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.functional import Promise as StrPromise
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.models import ApiKey, Membership, Organization, Project, User
from accounts.services import check_can_manage
from accounts.signals import created, diff, record_change, removed, values_of
from core.errors import ServiceError

from .models import Budget, BudgetAlert, BudgetPeriod, RateLimit
from .services import ledger_spend, period_bounds

DEFAULT_THRESHOLDS = (50, 80, 100)
MAX_THRESHOLDS = 10
# What a budget covers: fixed once it exists (its counters were kept for it).
COVERAGE = ("scope", "project", "user", "api_key")
NEEDS_A_PROJECT: dict[str, StrPromise] = {
    Budget.Scope.PROJECT: gettext_lazy("A project budget needs a project."),
    Budget.Scope.MEMBER: gettext_lazy("A member budget needs a project."),
}
NO_COVERAGE_CHANGE = gettext_lazy("What a budget covers cannot change: add another budget instead.")
# What the audit trail shows of a budget: what it covers, then what may change.
EDITABLE = ("limit_usd", "period", "soft_thresholds", "enabled")
AUDITED_FIELDS = (*COVERAGE, *EDITABLE)


def _invalid(message: str, *, param: str) -> ServiceError:
    """A refusal about one field: the pages show it next to the field, the API names it."""
    return ServiceError(message, code="invalid_request", param=param)


# --- checks --------------------------------------------------------------------------------------


def check_manager_of(actor: Membership, organization: Organization) -> None:
    """Owners and admins of the budget's own organization only."""
    check_can_manage(actor)
    if actor.organization_id != organization.pk:
        raise ServiceError(_("No such organization."), code="not_found")


def check_limit(limit_usd: Decimal) -> Decimal:
    """A hard limit in USD: from 0 (nothing may be spent) up, at most 6 decimal places."""
    try:
        value = Decimal(limit_usd)
    except (InvalidOperation, TypeError, ValueError):
        raise _invalid(_("Enter the limit in USD, e.g. 25 or 0.50."), param="limit_usd") from None
    if not value.is_finite():
        raise _invalid(_("Enter the limit in USD, e.g. 25 or 0.50."), param="limit_usd")
    if value < 0:
        raise _invalid(_("A limit cannot be negative; 0 refuses every call."), param="limit_usd")
    try:
        Budget._meta.get_field("limit_usd").clean(value, None)
    except ValidationError as error:
        raise _invalid(" ".join(error.messages), param="limit_usd") from None
    return value


def check_thresholds(values: Iterable[int]) -> str:
    """Alert thresholds, whole percentages of the limit from 1 to 100, as stored: "50,80,100".
    None at all is allowed (no alerts)."""
    thresholds = sorted(set(values))
    if any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100 for v in thresholds):
        raise _invalid(
            _("Alert thresholds are whole percentages from 1 to 100, e.g. 50, 80, 100."),
            param="soft_thresholds",
        )
    if len(thresholds) > MAX_THRESHOLDS:
        raise _invalid(
            _("At most %(count)s alert thresholds.") % {"count": MAX_THRESHOLDS},
            param="soft_thresholds",
        )
    return ",".join(str(v) for v in thresholds)


def check_period(period: str) -> str:
    if period not in Budget.Period.values:
        raise _invalid(
            _("The period is one of %(periods)s.") % {"periods": ", ".join(Budget.Period.values)},
            param="period",
        )
    return period


def check_coverage(
    *,
    organization: Organization,
    scope: str,
    project: Project | None,
    user: User | None,
    api_key: ApiKey | None,
) -> Project | None:
    """Scope and the fields it names agree, and all of them are the organization's. Returns the
    budget's project: an API key budget's is its key's, which need not be given twice."""
    if scope not in Budget.Scope.values:
        raise _invalid(
            _("The scope is one of %(scopes)s.") % {"scopes": ", ".join(Budget.Scope.values)},
            param="scope",
        )
    if api_key is not None and scope != Budget.Scope.API_KEY:
        raise _invalid(
            _("Only an API key budget names a key: leave the key empty."), param="api_key"
        )
    if user is not None and scope != Budget.Scope.MEMBER:
        raise _invalid(_("Only a member budget names a member: leave it empty."), param="user")
    if scope == Budget.Scope.ORGANIZATION:
        if project is not None:
            raise _invalid(
                _("An organization budget covers every project: leave the project empty."),
                param="project",
            )
        return None
    if scope == Budget.Scope.API_KEY:
        if api_key is None:
            raise _invalid(_("An API key budget needs the key."), param="api_key")
        if api_key.project.organization_id != organization.pk:
            raise _invalid(_("No such API key in this organization."), param="api_key")
        if project is not None and api_key.project_id != project.pk:
            raise _invalid(
                _("%(key)s is not a key of %(project)s.")
                % {"key": api_key, "project": project.name},
                param="api_key",
            )
        return api_key.project
    if project is None:
        raise _invalid(str(NEEDS_A_PROJECT[scope]), param="project")
    if project.organization_id != organization.pk:
        raise _invalid(_("No such project in this organization."), param="project")
    if scope == Budget.Scope.MEMBER:
        if user is None:
            raise _invalid(_("A member budget needs the member."), param="user")
        if not Membership.objects.filter(user=user, organization=organization).exists():
            raise _invalid(
                _("%(user)s is not a member of %(organization)s.")
                % {"user": user, "organization": organization.name},
                param="user",
            )
    return project


# --- budgets -------------------------------------------------------------------------------------


@transaction.atomic
def budget_create(
    *,
    actor: Membership,
    scope: str,
    limit_usd: Decimal,
    project: Project | None = None,
    user: User | None = None,
    api_key: ApiKey | None = None,
    period: str = Budget.Period.MONTH,
    soft_thresholds: Iterable[int] = DEFAULT_THRESHOLDS,
    enabled: bool = True,
) -> Budget:
    """A new budget of the actor's organization; it limits the very next call."""
    organization = actor.organization
    check_manager_of(actor, organization)
    project = check_coverage(
        organization=organization, scope=scope, project=project, user=user, api_key=api_key
    )
    budget = Budget.objects.create(
        organization=organization,
        scope=scope,
        project=project,
        user=user,
        api_key=api_key,
        period=check_period(period),
        limit_usd=check_limit(limit_usd),
        soft_thresholds=check_thresholds(soft_thresholds),
        enabled=enabled,
    )
    record_change(
        action="budget.created",
        organization=organization,
        actor=actor,
        project=project,
        target=budget,
        changes=created(values_of(budget, AUDITED_FIELDS)),
    )
    _alert_thresholds_passed(budget)
    return budget


@transaction.atomic
def budget_update(
    *,
    actor: Membership,
    budget: Budget,
    limit_usd: Decimal | None = None,
    period: str | None = None,
    soft_thresholds: Iterable[int] | None = None,
    enabled: bool | None = None,
) -> Budget:
    """Change what was given (None: unchanged). See the module's docstring for what each change
    does to the counters."""
    check_manager_of(actor, budget.organization)
    # Locked, so two managers' edits of one budget cannot interleave (its counter's recount
    # below must see the period and state that are saved). No joins: PostgreSQL locks no
    # nullable side of an outer join.
    locked = Budget.objects.select_for_update().get(pk=budget.pk)
    before = values_of(locked, EDITABLE)
    changed: list[str] = []
    if limit_usd is not None and (value := check_limit(limit_usd)) != locked.limit_usd:
        locked.limit_usd = value
        changed.append("limit_usd")
    if soft_thresholds is not None:
        stored = check_thresholds(soft_thresholds)
        if stored != locked.soft_thresholds:
            locked.soft_thresholds = stored
            changed.append("soft_thresholds")
    restart = False
    if period is not None and check_period(period) != locked.period:
        locked.period = period
        changed.append("period")
        restart = True
    if enabled is not None and enabled != locked.enabled:
        locked.enabled = enabled
        changed.append("enabled")
        restart = restart or enabled
    if not changed:
        return locked
    locked.save(update_fields=changed)  # the save empties the config cache (billing/apps.py)
    record_change(
        action="budget.updated",
        organization=locked.organization,
        actor=actor,
        project=locked.project,
        target=locked,
        changes=diff(before, values_of(locked, EDITABLE)),
    )
    if restart and locked.enabled:
        _recount_current_period(locked)
    _alert_thresholds_passed(locked)
    return locked


@transaction.atomic
def budget_delete(*, actor: Membership, budget: Budget) -> None:
    """Its counters and holds go with it; calls in flight settle against the budgets left."""
    check_manager_of(actor, budget.organization)
    record_change(
        action="budget.deleted",
        organization=budget.organization,
        actor=actor,
        project=budget.project,
        target=budget,
        changes=removed(values_of(budget, AUDITED_FIELDS)),
    )
    budget.delete()


def _recount_current_period(budget: Budget) -> None:
    """Set the counter of the period now current from the ledger, if there is one: what it
    holds may have been kept under another period or while the budget was off."""
    now = timezone.now()
    start, end = period_bounds(budget.period, now)
    # Locked as reserve and settle lock it: no call charges it between the sum and the write.
    period = (
        BudgetPeriod.objects.select_for_update().filter(budget=budget, start=start).order_by()
    ).first()
    if period is not None:
        BudgetPeriod.objects.filter(pk=period.pk).update(spent=ledger_spend(budget, start, end))


def _alert_thresholds_passed(budget: Budget) -> None:
    """Record the thresholds this period's spending has already passed under the budget as it
    now is (a lower limit, a new threshold, a new budget): the banner shows them at once, and
    each is e-mailed once per period, as a crossing during a call would be."""
    if not budget.enabled or not budget.limit_usd:
        return
    start, end = period_bounds(budget.period, timezone.now())
    counter = (
        BudgetPeriod.objects.filter(budget=budget, start=start)
        .order_by()
        .values_list("spent", flat=True)
        .first()
    )
    spent = counter if counter is not None else ledger_spend(budget, start, end)
    for threshold in budget.thresholds():
        if spent < budget.limit_usd * threshold / 100:
            break  # thresholds() is in ascending order
        _, created = BudgetAlert.objects.get_or_create(
            budget=budget, period_start=start, threshold=threshold
        )
        if created:
            from .tasks import send_budget_alert

            transaction.on_commit(partial(send_budget_alert.delay, budget.pk, threshold))


# --- rate limits ---------------------------------------------------------------------------------

RATE_FIELDS = ("requests_per_minute", "tokens_per_minute")


def check_per_minute(value: int | None, *, param: str) -> int | None:
    """A per-minute limit: a whole number from 1 up, or None for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(
            _("A limit is a whole number from 1 up; leave it empty for none."), param=param
        )
    if value > 2**31 - 1:
        raise _invalid(_("That limit is too large; leave it empty for none."), param=param)
    return value


@transaction.atomic
def rate_limit_set(
    *,
    actor: Membership,
    project: Project,
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
) -> RateLimit | None:
    """The project's requests and tokens per minute (None: no limit). With neither, the project
    has no rate limit row at all."""
    check_manager_of(actor, project.organization)
    requests = check_per_minute(requests_per_minute, param="requests_per_minute")
    tokens = check_per_minute(tokens_per_minute, param="tokens_per_minute")
    current = RateLimit.objects.filter(project=project).first()
    record_change(
        action="rate_limit.changed",
        organization=project.organization,
        actor=actor,
        project=project,
        target=project,
        changes=diff(
            values_of(current, RATE_FIELDS) if current else dict.fromkeys(RATE_FIELDS),
            {"requests_per_minute": requests, "tokens_per_minute": tokens},
        ),
    )
    if requests is None and tokens is None:
        for row in RateLimit.objects.filter(project=project):
            row.delete()  # one by one: each delete empties the config cache
        return None
    limit, _ = RateLimit.objects.update_or_create(
        project=project,
        defaults={"requests_per_minute": requests, "tokens_per_minute": tokens},
    )
    return limit


@transaction.atomic
def api_key_rate_limits_set(
    *,
    actor: Membership,
    key: ApiKey,
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
) -> ApiKey:
    """A key's own requests and tokens per minute, on top of its project's (None: none)."""
    check_manager_of(actor, key.project.organization)
    before = values_of(key, RATE_FIELDS)
    key.requests_per_minute = check_per_minute(requests_per_minute, param="requests_per_minute")
    key.tokens_per_minute = check_per_minute(tokens_per_minute, param="tokens_per_minute")
    key.save(update_fields=["requests_per_minute", "tokens_per_minute"])
    record_change(
        action="rate_limit.changed",
        organization=key.project.organization,
        actor=actor,
        project=key.project,
        target=key,
        changes=diff(before, values_of(key, RATE_FIELDS)),
    )
    return key
