"""Monthly statements: a closed calendar month (UTC) of an organization's ledger.

A statement is written once. Closing a month again returns the statement already written, so
the beat task may run as often as it likes; a month is closed only some minutes after it ends,
because a call settling at midnight stamps its ledger row a moment before its transaction
commits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, OuterRef, Sum
from django.utils import timezone

from accounts.models import Organization
from core.errors import ServiceError

from .models import Statement, StatementLine, UsageRecord
from .pricing import cost_units_sum, units_to_cost

logger = logging.getLogger(__name__)

CLOSE_GRACE = timedelta(minutes=10)


def month_bounds(month_start: date) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) in UTC."""
    start = datetime(month_start.year, month_start.month, 1, tzinfo=UTC)
    return start, (start + timedelta(days=32)).replace(day=1)


def previous_month(now: datetime) -> date:
    first_of_this_month = now.astimezone(UTC).date().replace(day=1)
    return (first_of_this_month - timedelta(days=1)).replace(day=1)


def _lines_from_ledger(
    organization: Organization, start: datetime, end: datetime
) -> list[Mapping[str, Any]]:
    """One grouped query: per project and model, the month's calls, tokens and exact cost."""
    return list(
        UsageRecord.objects.for_organization(organization)
        .filter(created_at__gte=start, created_at__lt=end)
        .values("project_id", "project__name", "model")
        .annotate(
            calls=Count("id"),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            cost_units=cost_units_sum(),
        )
        .order_by("project__name", "project_id", "model")
    )


@transaction.atomic
def statements_close_month(
    *, organization: Organization, month_start: date, now: datetime | None = None
) -> Statement:
    """The organization's statement for the month starting on ``month_start``, written from
    the ledger the first time and returned unchanged after that."""
    now = now or timezone.now()
    if month_start.day != 1:
        raise ServiceError("A statement covers a calendar month: start on its first day.")
    start, end = month_bounds(month_start)
    existing = Statement.objects.filter(organization=organization, period_start=start).first()
    if existing is not None:
        return existing
    if now < end + CLOSE_GRACE:
        raise ServiceError(
            f"{month_start:%B %Y} can be closed from {end + CLOSE_GRACE:%Y-%m-%d %H:%M} UTC.",
            code="month_not_over",
        )
    rows = _lines_from_ledger(organization, start, end)
    lines = [
        StatementLine(
            project_id=row["project_id"],
            project_name=row["project__name"] or "",
            model=row["model"],
            calls=row["calls"],
            prompt_tokens=row["prompt"] or 0,
            completion_tokens=row["completion"] or 0,
            cost=units_to_cost(row["cost_units"]),
        )
        for row in rows
    ]
    try:
        with transaction.atomic():  # a savepoint: a concurrent closer may have won the race
            statement = Statement.objects.create(
                organization=organization,
                period_start=start,
                period_end=end,
                total_cost=sum((line.cost for line in lines), units_to_cost(0)),
            )
    except IntegrityError:
        return Statement.objects.get(organization=organization, period_start=start)
    for line in lines:
        line.statement = statement
    StatementLine.objects.bulk_create(lines)
    return statement


def statements_close_previous_month(*, now: datetime | None = None) -> list[Statement]:
    """Close last month for every organization that has ledger rows in it and no statement.

    Nothing to do until CLOSE_GRACE after the month ends. One organization failing is logged
    and does not hold the others back; the next run tries it again.
    """
    now = now or timezone.now()
    month_start = previous_month(now)
    start, end = month_bounds(month_start)
    if now < end + CLOSE_GRACE:
        return []
    pending = (
        Organization.objects.filter(
            Exists(
                UsageRecord.objects.filter(
                    organization=OuterRef("pk"), created_at__gte=start, created_at__lt=end
                )
            )
        )
        .exclude(Exists(Statement.objects.filter(organization=OuterRef("pk"), period_start=start)))
        .order_by("pk")
    )
    closed = []
    for organization in pending:
        try:
            closed.append(
                statements_close_month(organization=organization, month_start=month_start, now=now)
            )
        except Exception:
            logger.exception("closing %s for organization %s failed", month_start, organization.pk)
    return closed
