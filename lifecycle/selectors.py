"""Reads of the lifecycle app: retention, scheduled deletions, and what stands in the way of an
account's deletion.

Everything is reached from an organization a view resolved for its member
(``accounts.decorators``) or from the signed-in person; the spending check reads a copy kept in
memory (``core.config_cache``), never the database, because every upstream call asks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Count, Q, QuerySet

from accounts.models import Membership, Organization, Role, User
from core.config_cache import cached

from .models import OrganizationDeletion, RetentionPolicy


def retention_of(organization: Organization) -> RetentionPolicy | None:
    return RetentionPolicy.objects.filter(organization=organization).first()


def deletion_of(organization: Organization) -> OrganizationDeletion | None:
    """The organization's pending deletion, if one is scheduled."""
    return (
        OrganizationDeletion.objects.pending()
        .filter(organization=organization)
        .select_related("requested_by")
        .first()
    )


# --- organizations scheduled for deletion, in memory ---------------------------------------


@dataclass(frozen=True)
class PendingDeletions:
    """Every pending deletion: when each organization goes, by id and by slug."""

    by_id: dict[int, datetime] = field(default_factory=dict)
    by_slug: dict[str, int] = field(default_factory=dict)


def pending_deletions() -> PendingDeletions:
    """Kept in memory until an ``OrganizationDeletion`` is saved or deleted (lifecycle.apps):
    what every upstream call is checked against, without a query."""
    return cached(("lifecycle", "pending_deletions"), _pending_deletions)


def _pending_deletions() -> PendingDeletions:
    rows = OrganizationDeletion.objects.pending().values_list(
        "organization_id", "organization__slug", "scheduled_for"
    )
    by_id, by_slug = {}, {}
    for organization_id, slug, scheduled_for in rows:
        by_id[organization_id] = scheduled_for
        by_slug[slug] = organization_id
    return PendingDeletions(by_id=by_id, by_slug=by_slug)


def banner_deletion(*, user: User, organization_slug: str) -> OrganizationDeletion | None:
    """The pending deletion of the organization a page is about, for one of its members: no
    query at all unless it is scheduled; membership decides, so an outsider sees nothing."""
    if organization_slug not in pending_deletions().by_slug:
        return None
    return (
        OrganizationDeletion.objects.pending()
        .filter(organization__slug=organization_slug, organization__memberships__user=user)
        .select_related("organization")
        .first()
    )


# --- what an account's deletion takes with it, or waits for ---------------------------------


@dataclass(frozen=True)
class SoleOwned:
    """An organization (not a personal one) whose only owner is the person leaving."""

    organization: Organization
    membership: Membership  # theirs
    others: list[Membership]  # who could be made owner instead
    deletion: OrganizationDeletion | None  # scheduled already: it no longer holds them back

    @property
    def settled(self) -> bool:
        return self.deletion is not None


def sole_owned_organizations(user: User) -> list[SoleOwned]:
    """The organizations only this person owns, personal ones aside (they go with the
    account): each must get another owner or be scheduled for deletion before the account
    can be deleted."""
    memberships = list(
        Membership.objects.filter(user=user, role=Role.OWNER, organization__is_personal=False)
        .select_related("organization")
        .annotate(
            owners=Count(
                "organization__memberships",
                filter=Q(organization__memberships__role=Role.OWNER),
            )
        )
        .filter(owners=1)
        .order_by("organization__name", "organization_id")
    )
    if not memberships:
        return []
    organizations = [m.organization for m in memberships]
    others: dict[int, list[Membership]] = {o.pk: [] for o in organizations}
    for other in (
        Membership.objects.filter(organization__in=organizations)
        .exclude(user=user)
        .select_related("user")
        .order_by("user__email")
    ):
        others[other.organization_id].append(other)
    deletions = {
        d.organization_id: d
        for d in OrganizationDeletion.objects.pending().filter(organization__in=organizations)
    }
    return [
        SoleOwned(
            organization=m.organization,
            membership=m,
            others=others[m.organization_id],
            deletion=deletions.get(m.organization_id),
        )
        for m in memberships
    ]


def personal_organizations(user: User) -> QuerySet[Organization]:
    """The person's personal workspaces (as owner): deleted with the account, at once."""
    return Organization.objects.filter(
        is_personal=True, memberships__user=user, memberships__role=Role.OWNER
    ).order_by("name", "pk")
