"""``/v1`` served by a Django handler of its own, with the few middleware a keyed API call needs.

The OpenAI-compatible endpoints authenticate by project key and answer JSON or SSE: sessions,
CSRF, messages, two-factor steps and login lockout have nothing to do there. Django's
middleware of that kind runs each of its hooks through a thread hop under ASGI (two per
middleware and request), which was about a fifth of a ``/v1`` call's CPU. The URLconf, views,
error handling and the security headers are the same as everywhere else.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

# What /v1 keeps of settings.MIDDLEWARE: the HTTPS redirect, HSTS and nosniff headers.
GATEWAY_MIDDLEWARE = ["django.middleware.security.SecurityMiddleware"]
GATEWAY_PREFIX = "/v1/"


class GatewayASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        # Django builds a handler's chain from settings.MIDDLEWARE and takes no other list:
        # this one's is handed over for the build only (once, when the process starts).
        everything = settings.MIDDLEWARE
        settings.MIDDLEWARE = [path for path in everything if path in GATEWAY_MIDDLEWARE]
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = everything


class RouteGateway:
    """HTTP under ``/v1/`` to the gateway's handler, the rest to Django's own."""

    def __init__(self, application: ASGIHandler) -> None:
        self.application = application
        self.gateway = GatewayASGIHandler()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(GATEWAY_PREFIX):
            await self.gateway(scope, receive, send)
        else:
            await self.application(scope, receive, send)
