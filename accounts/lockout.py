"""What django-axes counts failed log-ins against (``AXES_USERNAME_CALLABLE``)."""

from typing import Any

from django.http import HttpRequest

from .models import normalize_address


def lockout_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str:
    """The address as login compares it: "Frank@Example.com", "FRANK@example.com " and a
    full-width variant are one address, with one count of failures (login ignores case, so the
    lockout must too, or each variant would get fresh attempts)."""
    raw = (credentials or {}).get("username") or request.POST.get("username", "")
    return normalize_address(str(raw))
