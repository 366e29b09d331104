"""Reads of the budgets and rate limits pages and REST endpoints.

Everything starts from a Membership or a Project the caller was already resolved to
(``accounts.decorators``, ``accounts.api_base``): a budget of another organization, or one a
member may not see, answers 404 exactly like a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, QuerySet
from django.http import Http404

from accounts.models import ApiKey, Membership, Organization, Project, User

from .models import Budget, RateLimit
from .selectors import UsageScope, budgets_for

RELATED = ("organization", "project", "user", "api_key")


def budgets_visible_to(membership: Membership) -> QuerySet[Budget]:
    """Owners and admins: every budget of the organization, turned off or not. A member: the
    enabled budgets that apply to their own calls (the organization's, the projects', their
    own), as on the usage page — read only."""
    if not membership.can_manage:
        return budgets_for(UsageScope.for_membership(membership))
    return (
        Budget.objects.filter(organization=membership.organization)
        .select_related(*RELATED)
        .order_by("scope", "project__name", "id")
    )


def get_budget_or_404(*, membership: Membership, pk: int) -> Budget:
    budget = budgets_visible_to(membership).filter(pk=pk).first()
    if budget is None:
        raise Http404("No such budget.")
    return budget


def budgets_in_project(*, membership: Membership, project: Project) -> QuerySet[Budget]:
    """The budgets a call in ``project`` may meet, of those the reader may see: the
    organization's, the project's, its members' and its keys'."""
    return budgets_visible_to(membership).filter(
        Q(scope=Budget.Scope.ORGANIZATION) | Q(project=project)
    )


@dataclass(frozen=True)
class BudgetChoices:
    """What a new budget of an organization may cover."""

    projects: QuerySet[Project]
    members: QuerySet[User]
    api_keys: QuerySet[ApiKey]


def budget_choices(organization: Organization) -> BudgetChoices:
    return BudgetChoices(
        projects=Project.objects.for_organization(organization).order_by("name"),
        members=User.objects.filter(memberships__organization=organization).order_by("email"),
        api_keys=ApiKey.objects.filter(project__organization=organization)
        .select_related("project")
        .order_by("project__name", "name", "id"),
    )


def rate_limit_of(project: Project) -> RateLimit | None:
    return RateLimit.objects.filter(project=project).first()
