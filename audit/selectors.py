"""Reading the audit trail: an organization's events (its owners' page, CSV and REST), filtered.

Events are reached only through ``AuditEvent.objects.for_organization``: what an owner sees is
their organization's, never a global change (a price) or another tenant's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import QuerySet
from django.http import Http404
from django.utils.translation import gettext as _

from accounts.models import Membership, Organization, Role

from .models import AuditEvent

PER_PAGE = 50


@dataclass(frozen=True)
class AuditFilters:
    """What the page, the CSV and the REST list filter by; None: not filtered. Days are UTC
    days, both ends included."""

    action: str | None = None
    actor: str | None = None  # the actor as shown (its label): a deleted user's events too
    project: int | None = None
    start: date | None = None
    end: date | None = None


def check_owner(membership: Membership) -> None:
    """The log is the owners' (it watches admins too): anyone else in the organization gets
    404, as an outsider does."""
    if membership.role != Role.OWNER:
        raise Http404(_("No such page."))


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def events_for(organization: Organization, filters: AuditFilters) -> QuerySet[AuditEvent]:
    """The organization's events, newest first."""
    events = AuditEvent.objects.for_organization(organization)
    if filters.action:
        events = events.filter(action=filters.action)
    if filters.actor:
        events = events.filter(actor_label=filters.actor)
    if filters.project is not None:
        events = events.filter(project_id=filters.project)
    if filters.start is not None:
        events = events.filter(created_at__gte=_day_start(filters.start))
    if filters.end is not None:
        events = events.filter(created_at__lt=_day_start(filters.end + timedelta(days=1)))
    return events.order_by("-created_at", "-id")


def actors_of(organization: Organization) -> list[str]:
    """Everyone (and everything) that made a change in the organization, as the events name
    them: the choices of the page's actor filter."""
    labels = (
        AuditEvent.objects.for_organization(organization)
        .order_by("actor_label")
        .values_list("actor_label", flat=True)
        .distinct()
    )
    return list(labels)
