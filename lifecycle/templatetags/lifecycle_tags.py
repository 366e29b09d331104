"""The banner of an organization scheduled for deletion, on its pages."""

from __future__ import annotations

from typing import Any

from django import template

from accounts.models import Membership, Role
from lifecycle import selectors

register = template.Library()

# Set on the request once the banner is shown: a page whose base layout and own template both
# include it shows it once.
SHOWN = "_lifecycle_deletion_banner_shown"


@register.inclusion_tag("lifecycle/_deletion_banner.html", takes_context=True)
def organization_deletion_banner(context: Any) -> dict[str, Any]:
    """``{% organization_deletion_banner %}``: on a page of an organization (a URL with
    ``org_slug``) that is scheduled for deletion, when and what it means; owners get the way to
    cancel. Nothing, and no query, on any other page."""
    request = context.get("request")
    match = getattr(request, "resolver_match", None)
    user = getattr(request, "user", None)
    if match is None or user is None or not user.is_authenticated or getattr(request, SHOWN, False):
        return {}
    slug = match.kwargs.get("org_slug")
    if not slug:
        return {}
    deletion = selectors.banner_deletion(user=user, organization_slug=slug)
    if deletion is None:
        return {}
    setattr(request, SHOWN, True)
    owner = Membership.objects.filter(
        user=user, organization_id=deletion.organization_id, role=Role.OWNER
    ).exists()
    return {"deletion": deletion, "organization": deletion.organization, "is_owner": owner}
