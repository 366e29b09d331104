"""What DRF's settings name for ``/api/v1/``: authentication and permissions.

Kept apart from ``api_base`` on purpose: DRF imports these while ``rest_framework.views`` is
itself being imported, so this module must not import DRF's views or generics.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.utils.translation import gettext, gettext_lazy
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from .api_keys import INVALID_KEY_MESSAGE, api_key_from_authorization
from .models import ApiKey


class ApiKeyAuthentication(BaseAuthentication):
    """``Authorization: Bearer <project key>``. The user is anonymous; ``request.auth`` is the
    ApiKey. No header: the next authenticator (the session) is tried."""

    def authenticate(self, request: Request) -> tuple[AnonymousUser, ApiKey] | None:
        header = get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        key = api_key_from_authorization(header)
        if key is None:
            raise exceptions.AuthenticationFailed(INVALID_KEY_MESSAGE, code="invalid_api_key")
        return AnonymousUser(), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def api_key_of(request: Request) -> ApiKey | None:
    return request.auth if isinstance(request.auth, ApiKey) else None


class IsSignedInOrKey(BasePermission):
    message = gettext_lazy("Sign in, or send a project API key as 'Authorization: Bearer lgw_...'.")

    def has_permission(self, request: Request, view: Any) -> bool:
        return api_key_of(request) is not None or bool(
            request.user and request.user.is_authenticated
        )


class KeyHasScope(BasePermission):
    """A key needs ``read`` to read and ``chat`` to make calls or change conversations; a view
    may demand more (``key_scopes``) or refuse keys altogether (``allow_keys = False``)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        key = api_key_of(request)
        if key is None:
            return True
        if not getattr(view, "allow_keys", True):
            raise exceptions.PermissionDenied(
                gettext("API keys cannot do this; sign in as a project admin."),
                code="keys_not_allowed",
            )
        needed = getattr(view, "key_scopes", {}).get(request.method) or (
            "read" if request.method in ("GET", "HEAD", "OPTIONS") else "chat"
        )
        if not key.has_scope(needed):
            raise exceptions.PermissionDenied(
                gettext("This API key lacks the '%(scope)s' scope this call needs.")
                % {"scope": needed},
                code="insufficient_scope",
            )
        return True
