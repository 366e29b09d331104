"""The budget banner of organization pages."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from .selectors import current_budget_banners


def budget_alerts(request: HttpRequest) -> dict[str, Any]:
    """``budget_alerts`` on pages of an organization (URLs with ``org_slug``): the budgets that
    crossed a threshold this period. One query, run only if a template reads it; nothing at
    all on other pages. Membership is part of that query, so an outsider gets an empty list."""
    match = getattr(request, "resolver_match", None)
    slug = match.kwargs.get("org_slug") if match is not None else None
    if not slug or not request.user.is_authenticated:
        return {}
    user_id = request.user.pk
    return {
        "budget_alerts": SimpleLazyObject(
            lambda: current_budget_banners(user_id=user_id, organization_slug=slug)
        )
    }
