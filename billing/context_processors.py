"""The budget banner: on the home page and on the pages of an organization."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from accounts.two_factor import is_verified

from .selectors import current_budget_banners

# Pages outside any organization that show the banners of all the user's organizations.
PAGES_OF_ALL_ORGANIZATIONS = frozenset({"home"})


def budget_alerts(request: HttpRequest) -> dict[str, Any]:
    """``budget_alerts``: the budgets that crossed a threshold this period — of the organization
    on its pages (URLs with ``org_slug``), of every organization of the user on the home page.
    One query, run only if a template reads it; nothing at all on other pages. Membership is
    part of that query, so an outsider gets an empty list."""
    match = getattr(request, "resolver_match", None)
    if match is None or not request.user.is_authenticated:
        return {}
    slug = match.kwargs.get("org_slug")
    if not slug and match.url_name not in PAGES_OF_ALL_ORGANIZATIONS:
        return {}
    user_id = request.user.pk
    verified = is_verified(request.user)
    return {
        "budget_alerts": SimpleLazyObject(
            lambda: current_budget_banners(
                user_id=user_id, organization_slug=slug or None, two_factor_verified=verified
            )
        )
    }
