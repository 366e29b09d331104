"""Two kinds of HTTP request served by Django handlers of their own, with only the middleware
they need; everything else goes to Django's own handler and ``settings.MIDDLEWARE``.

- Static files (``STATIC_URL``): ServeStatic (an ASGI-capable fork of WhiteNoise) behind the
  security middleware (HTTPS redirect, HSTS, nosniff, referrer and opener policies), and a
  missing file falls through to Django's 404. A static-file middleware in the main chain sits
  in front of every request, and a sync-only one (WhiteNoise) makes Django run the whole chain
  through a thread.
- ``/v1``: the OpenAI-compatible endpoints authenticate by project key and answer JSON or SSE;
  sessions, CSRF, messages, two-factor steps and login lockout have nothing to do there, and
  Django's middleware of that kind runs each hook through a thread hop under ASGI (two per
  middleware and request: about a fifth of a ``/v1`` call's CPU).
- The operations endpoints: ``/healthz`` and ``/readyz`` with none of that machinery, so that
  a load balancer reaching a process by its address (no allowed host name, plain HTTP) is
  answered; ``/metrics`` with only what tells a staff session from a stranger (session, user,
  second factor). None of them checks the Host header: they build no URL from it.

Every chain but the static files' starts with the request log (``core.logging``): the request
id and one line per request, async, with no thread hop of its own.

The URLconf, views and error handling are the same in all of them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

SECURITY = "django.middleware.security.SecurityMiddleware"
REQUEST_LOG = "core.logging.RequestLogMiddleware"
STATIC_MIDDLEWARE = [SECURITY, "servestatic.middleware.ServeStaticMiddleware"]
GATEWAY_MIDDLEWARE = [REQUEST_LOG, SECURITY]
GATEWAY_PREFIX = "/v1/"
# Production exempts these paths from the HTTPS redirect (SECURE_REDIRECT_EXEMPT).
HEALTH_MIDDLEWARE = [REQUEST_LOG, SECURITY]
HEALTH_PATHS = ("/healthz", "/readyz")
METRICS_MIDDLEWARE = [
    REQUEST_LOG,
    SECURITY,
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
]
METRICS_PATH = "/metrics"


class SlimASGIHandler(ASGIHandler):
    """Django's ASGI handler with ``middleware`` instead of ``settings.MIDDLEWARE``."""

    def __init__(self, middleware: list[str]) -> None:
        self.slim_middleware = middleware
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        # Django builds a handler's chain from settings.MIDDLEWARE and takes no other list:
        # this one's is handed over for the build only (once, when the process starts).
        everything = settings.MIDDLEWARE
        settings.MIDDLEWARE = self.slim_middleware
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = everything


class RouteByPath:
    """Static files, ``/v1`` and the operations endpoints to their own handlers, the rest to
    ``application``."""

    def __init__(self, application: Any) -> None:
        self.application = application
        self.routes = [
            (urlsplit(settings.STATIC_URL).path, SlimASGIHandler(STATIC_MIDDLEWARE)),
            (GATEWAY_PREFIX, SlimASGIHandler(GATEWAY_MIDDLEWARE)),
        ]
        health = SlimASGIHandler(HEALTH_MIDDLEWARE)
        self.exact = {
            **dict.fromkeys(HEALTH_PATHS, health),
            METRICS_PATH: SlimASGIHandler(METRICS_MIDDLEWARE),
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            handler = self.exact.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
            for prefix, handler in self.routes:
                if scope["path"].startswith(prefix):
                    await handler(scope, receive, send)
                    return
        await self.application(scope, receive, send)
