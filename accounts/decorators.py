"""Resolve the organization or project named in the URL for the logged-in user, or 404.

Views take the resolved Membership / Project as arguments instead of looking anything up
themselves, which keeps every tenant lookup on the scoped path.
"""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import render

from core.errors import ServiceError

from .models import Membership, User
from .selectors import get_membership_or_404, get_project_for_user_or_404
from .two_factor import two_factor_satisfied


class AuthenticatedHttpRequest(HttpRequest):
    """The request a view behind ``login_required`` (and so behind ``organization_view`` and
    ``project_view``) gets: its user is a person, never anonymous. For type checkers only."""

    user: User


def organization_view(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """``view(request, membership, **kwargs)`` with ``org_slug`` resolved to a Membership."""
    return _organization_view(view, two_factor=True)


def organization_view_before_two_factor(
    view: Callable[..., HttpResponseBase],
) -> Callable[..., HttpResponseBase]:
    """As ``organization_view``, but for a member its two-factor requirement refuses too: the
    view itself decides (leaving the organization needs no second factor)."""
    return _organization_view(view, two_factor=False)


def _organization_view(
    view: Callable[..., HttpResponseBase], *, two_factor: bool
) -> Callable[..., HttpResponseBase]:
    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, org_slug: str, **kwargs: Any) -> HttpResponseBase:
        membership = get_membership_or_404(user=request.user, organization_slug=org_slug)
        if two_factor and not two_factor_satisfied(
            user=request.user, organization=membership.organization
        ):
            return two_factor_required_page(request, membership)
        return view(request, membership, **kwargs)

    return wrapper


def project_view(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """``view(request, membership, project, **kwargs)`` for ``org_slug`` and ``project_slug``."""

    @login_required
    @wraps(view)
    def wrapper(
        request: HttpRequest, org_slug: str, project_slug: str, **kwargs: Any
    ) -> HttpResponseBase:
        project = get_project_for_user_or_404(
            user=request.user, organization_slug=org_slug, project_slug=project_slug
        )
        membership = get_membership_or_404(user=request.user, organization_slug=org_slug)
        if not two_factor_satisfied(user=request.user, organization=project.organization):
            return two_factor_required_page(request, membership)
        return view(request, membership, project, **kwargs)

    return wrapper


def two_factor_required_page(request: HttpRequest, membership: Membership) -> HttpResponseBase:
    """403 for a member of an organization that requires two-factor authentication who has not
    turned it on: what to do, and where, or how to leave it (after tenancy: an outsider still
    gets 404)."""
    return render(
        request,
        "accounts/two_factor_required.html",
        {"organization": membership.organization, "membership": membership},
        status=403,
    )


def raise_if_forbidden(error: ServiceError) -> None:
    """A member asking for a manager's action gets 403; other refusals are shown as messages."""
    if error.code == "forbidden":
        raise PermissionDenied(error.message)


def require_manager(membership: Membership) -> None:
    """403 for a member on a manager's page, before any form is read or anything looked up."""
    from .services import check_can_manage

    try:
        check_can_manage(membership)
    except ServiceError as error:
        raise PermissionDenied(error.message) from None


def add_service_error(
    form: forms.BaseForm, error: ServiceError, *, field_of_error: dict[str, str]
) -> None:
    """Show a refused action on the form field it is about (403 if it was a permission)."""
    raise_if_forbidden(error)
    field = field_of_error.get(error.code)
    form.add_error(field if field in form.fields else None, error.message)
