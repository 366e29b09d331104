"""A session counts as logged in only once its person has given their second factor.

The password step logs in as it always did; django-otp's ``OTPMiddleware`` (before this one)
marks the session verified once ``django_otp.login`` names the device that accepted a code.
Until then, for someone who has turned two-factor authentication on, the session is good for
the second step and logging out only: pages send it there, the REST API and the chat socket
treat it as nobody. Anything new (a page, an admin screen, a route someone adds later) is
covered without being told, because the check runs before every view.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponseBase
from django.urls import reverse
from django.utils import translation
from django.utils.deprecation import MiddlewareMixin
from django.utils.translation.trans_real import parse_accept_lang_header

from .two_factor import has_two_factor, is_verified, socket_user

# Views a half-logged-in session may reach: the second step itself, and the way out.
SECOND_STEP_VIEWS = frozenset({"two_factor_verify", "logout"})
# Surfaces whose callers read JSON, not pages: a half-logged-in session there is no one (401).
API_PREFIXES = ("/api/", "/v1/")


class TwoFactorMiddleware(MiddlewareMixin):
    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        is_api = request.path.startswith(API_PREFIXES)
        if is_api and "HTTP_AUTHORIZATION" in request.META:
            return None  # a project key speaks for the project, never for a person's session
        user = request.user
        if not user.is_authenticated or is_verified(user) or not has_two_factor(user):
            return None
        match = request.resolver_match
        if match is not None and match.view_name in SECOND_STEP_VIEWS:
            return None
        if is_api:
            request.user = AnonymousUser()
            return None
        return redirect_to_login(request.get_full_path(), login_url=reverse("two_factor_verify"))


Scope = dict[str, Any]
AsgiApp = Callable[[Scope, Any, Any], Awaitable[None]]


class TwoFactorSocketMiddleware:
    """The same rule on WebSockets (inside channels' ``AuthMiddlewareStack``): the scope's user
    is who the session is once verified, and nobody before (``two_factor.socket_user``)."""

    def __init__(self, inner: AsgiApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        user, session = scope.get("user"), scope.get("session")
        if user is not None and session is not None:
            user = await database_sync_to_async(socket_user)(user=user, session=session)
            scope = {**scope, "user": user}
        await self.inner(scope, receive, send)


def chosen_language(user: Any) -> str | None:
    """The language a signed-in person chose for the interface, if they chose one we speak."""
    language = getattr(user, "language", "") if getattr(user, "is_authenticated", False) else ""
    try:
        return translation.get_supported_language_variant(language) if language else None
    except LookupError:  # a language since dropped from settings.LANGUAGES
        return None


class UserLanguageMiddleware(MiddlewareMixin):
    """After ``LocaleMiddleware`` (the cookie of ``set_language``, else Accept-Language) and the
    authentication: a signed-in person's own choice (``User.language``) wins over both."""

    def process_request(self, request: HttpRequest) -> None:
        language = chosen_language(request.user)
        if language is not None:
            translation.activate(language)
            request.LANGUAGE_CODE = language


def socket_language(scope: Scope) -> str:
    """A socket's language, by the pages' rule: the person's choice, else the language cookie,
    else the handshake's Accept-Language, else ``LANGUAGE_CODE``."""
    language = chosen_language(scope.get("user"))
    if language is not None:
        return language
    candidates = [scope.get("cookies", {}).get(settings.LANGUAGE_COOKIE_NAME, "")]
    headers = dict(scope.get("headers") or [])
    accept = headers.get(b"accept-language", b"").decode("latin-1")
    candidates += [code for code, _quality in parse_accept_lang_header(accept) if code != "*"]
    for code in candidates:
        if not code:
            continue
        try:
            return translation.get_supported_language_variant(code)
        except LookupError:
            continue
    return settings.LANGUAGE_CODE


class UserLanguageSocketMiddleware:
    """The socket's whole life (every event it handles, and the tasks it starts, which copy the
    context they are made in) runs in ``socket_language``: its error events and notices are in
    the person's language. Inside channels' ``AuthMiddlewareStack``, which has loaded the user."""

    def __init__(self, inner: AsgiApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        with translation.override(socket_language(scope)):
            await self.inner(scope, receive, send)
