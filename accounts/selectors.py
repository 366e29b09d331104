"""Reads of tenant data. Views reach organizations and projects only through these.

An object the user may not see raises Http404, the same as one that does not exist, so an
outsider learns nothing about another tenant.
"""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet
from django.http import Http404
from django.utils.translation import gettext as _

from .models import (
    MANAGER_ROLES,
    AnyUser,
    Invitation,
    Membership,
    Organization,
    Project,
    User,
    normalize_address,
)


def organizations_for_user(user: AnyUser) -> QuerySet[Organization]:
    return Organization.objects.for_user(user)


def projects_for_user(
    user: AnyUser, *, organization: Organization | None = None
) -> QuerySet[Project]:
    qs = Project.objects.for_user(user).select_related("organization")
    if organization is not None:
        qs = qs.filter(organization=organization)
    return qs


def organizations_with_projects_for_user(user: AnyUser) -> QuerySet[Organization]:
    """The home page: every organization of the user, its projects and the user's role."""
    if not user.is_authenticated:
        return Organization.objects.none()
    return organizations_for_user(user).prefetch_related(
        Prefetch("projects", queryset=Project.objects.order_by("name")),
        Prefetch(
            "memberships",
            queryset=Membership.objects.filter(user=user),
            to_attr="my_memberships",
        ),
    )


def membership_for(*, user: AnyUser, organization: Organization) -> Membership | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, organization=organization).first()


def get_membership_or_404(*, user: AnyUser, organization_slug: str) -> Membership:
    """The user's membership in the organization with this slug, or 404."""
    if not user.is_authenticated:
        raise Http404(_("No such organization."))
    try:
        return Membership.objects.select_related("organization").get(
            user=user, organization__slug=organization_slug
        )
    except Membership.DoesNotExist:
        raise Http404(_("No such organization.")) from None


def get_project_for_user_or_404(
    *, user: AnyUser, organization_slug: str, project_slug: str
) -> Project:
    """Project X for user U, or 404: the one way views resolve a project."""
    try:
        return projects_for_user(user).get(organization__slug=organization_slug, slug=project_slug)
    except Project.DoesNotExist:
        raise Http404(_("No such project.")) from None


def members_of(organization: Organization) -> QuerySet[Membership]:
    return Membership.objects.for_organization(organization).select_related("user")


def get_member_or_404(*, organization: Organization, membership_id: int) -> Membership:
    try:
        return members_of(organization).get(pk=membership_id)
    except Membership.DoesNotExist:
        raise Http404(_("No such member.")) from None


def pending_invitations_of(organization: Organization) -> QuerySet[Invitation]:
    """Invitations not accepted yet, expired ones too (an admin may send them again)."""
    return Invitation.objects.for_organization(organization).open().order_by("-expires_at")


def invitation_proves(invitation: Invitation, email: str) -> bool:
    """Whether signing up with ``email`` by this invitation's link proves the address: the link
    was mailed to it, and is still usable."""
    return (
        invitation.accepted_at is None
        and not invitation.is_expired
        and normalize_address(invitation.email) == normalize_address(email)
    )


def get_invitation_or_404(*, organization: Organization, invitation_id: int) -> Invitation:
    try:
        return Invitation.objects.for_organization(organization).get(pk=invitation_id)
    except Invitation.DoesNotExist:
        raise Http404(_("No such invitation.")) from None


def owner_count(organization: Organization) -> int:
    return Membership.objects.for_organization(organization).filter(role="owner").count()


def managers_of(organization: Organization) -> QuerySet[User]:
    """Owners and admins: who gets alerts and may change settings."""
    return User.objects.filter(
        memberships__organization=organization, memberships__role__in=MANAGER_ROLES
    )
