"""Budgets and rate limits on pages: an organization's budgets, a project's limits.

Thin: a form in, ``budget_services`` out, ``budget_selectors`` for every lookup. Owners and
admins manage the budgets of their organization, its projects, members and keys; a member sees
the budgets that apply to them, read only, and gets 403 on every page that changes something
(GET included, before anything is looked up); an outsider gets 404 from the decorators.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts import key_selectors
from accounts.decorators import organization_view, project_view, require_manager
from accounts.models import Membership, Project
from core.errors import ServiceError

from . import budget_selectors, budget_services
from .forms import BudgetEditForm, BudgetForm, RateLimitForm, add_field_error
from .selectors import budget_subject, statuses_of


def _org_context(membership: Membership, **extra: Any) -> dict[str, Any]:
    return {"membership": membership, "organization": membership.organization, **extra}


def _to_budgets(membership: Membership) -> HttpResponse:
    return redirect("budgets", org_slug=membership.organization.slug)


@organization_view
def budget_list(request: HttpRequest, membership: Membership) -> HttpResponse:
    """Every budget with this period's figures; owners and admins add one here (POST)."""
    if request.method == "POST":
        require_manager(membership)
    choices = budget_selectors.budget_choices(membership.organization)
    form = (
        BudgetForm(request.POST if request.method == "POST" else None, choices=choices)
        if membership.can_manage
        else None
    )
    if request.method == "POST" and form is not None and form.is_valid():
        try:
            budget = budget_services.budget_create(actor=membership, **form.cleaned_data)
        except ServiceError as error:
            add_field_error(form, error)
        else:
            messages.success(
                request, _("Added a budget for %(subject)s.") % {"subject": budget_subject(budget)}
            )
            return _to_budgets(membership)
    statuses = statuses_of(budget_selectors.budgets_visible_to(membership))
    return render(
        request,
        "billing/budgets.html",
        _org_context(membership, statuses=statuses, form=form),
    )


@organization_view
def budget_edit(request: HttpRequest, membership: Membership, pk: int) -> HttpResponse:
    require_manager(membership)
    budget = budget_selectors.get_budget_or_404(membership=membership, pk=pk)
    form = BudgetEditForm.for_budget(budget, request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            budget_services.budget_update(actor=membership, budget=budget, **form.cleaned_data)
        except ServiceError as error:
            add_field_error(form, error)
        else:
            messages.success(
                request, _("Saved the budget of %(subject)s.") % {"subject": budget_subject(budget)}
            )
            return _to_budgets(membership)
    [status] = statuses_of([budget])
    return render(
        request,
        "billing/budget_edit.html",
        _org_context(membership, budget=budget, status=status, form=form),
    )


@organization_view
@require_POST
def budget_delete(request: HttpRequest, membership: Membership, pk: int) -> HttpResponse:
    require_manager(membership)
    budget = budget_selectors.get_budget_or_404(membership=membership, pk=pk)
    subject = budget_subject(budget)
    budget_services.budget_delete(actor=membership, budget=budget)
    messages.success(request, _("Deleted the budget of %(subject)s.") % {"subject": subject})
    return _to_budgets(membership)


# --- a project's limits ------------------------------------------------------------------------


def _project_context(membership: Membership, project: Project, **extra: Any) -> dict[str, Any]:
    return {
        "membership": membership,
        "project": project,
        "organization": project.organization,
        **extra,
    }


@project_view
def project_limits(request: HttpRequest, membership: Membership, project: Project) -> HttpResponse:
    """The budgets a call in this project meets, its rate limits and its keys' (owners and
    admins change the project's here, POST; members read)."""
    if request.method == "POST":
        require_manager(membership)
    rate_limit = budget_selectors.rate_limit_of(project)
    form = None
    if membership.can_manage:
        initial = {
            "requests_per_minute": rate_limit.requests_per_minute if rate_limit else None,
            "tokens_per_minute": rate_limit.tokens_per_minute if rate_limit else None,
        }
        form = RateLimitForm(request.POST if request.method == "POST" else None, initial=initial)
    if request.method == "POST" and form is not None and form.is_valid():
        try:
            budget_services.rate_limit_set(actor=membership, project=project, **form.cleaned_data)
        except ServiceError as error:
            add_field_error(form, error)
        else:
            messages.success(
                request, _("Saved the rate limits of %(project)s.") % {"project": project.name}
            )
            return redirect(
                "project_limits", org_slug=project.organization.slug, project_slug=project.slug
            )
    budgets = budget_selectors.budgets_in_project(membership=membership, project=project)
    return render(
        request,
        "billing/project_limits.html",
        _project_context(
            membership,
            project,
            statuses=statuses_of(budgets),
            rate_limit=rate_limit,
            form=form,
            keys=key_selectors.api_keys_for_project(project) if membership.can_manage else None,
        ),
    )


@project_view
def api_key_limits(
    request: HttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    """One key's own rate limits, on top of the project's."""
    require_manager(membership)
    key = key_selectors.get_api_key_or_404(project=project, pk=pk)
    initial = {
        "requests_per_minute": key.requests_per_minute,
        "tokens_per_minute": key.tokens_per_minute,
    }
    form = RateLimitForm(request.POST if request.method == "POST" else None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            budget_services.api_key_rate_limits_set(actor=membership, key=key, **form.cleaned_data)
        except ServiceError as error:
            add_field_error(form, error)
        else:
            messages.success(request, _("Saved the rate limits of %(key)s.") % {"key": key})
            return redirect(
                "project_limits", org_slug=project.organization.slug, project_slug=project.slug
            )
    return render(
        request,
        "billing/api_key_limits.html",
        _project_context(membership, project, key=key, form=form),
    )
