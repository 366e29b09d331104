"""ASGI entry point: static files and /v1 to Django handlers with only the middleware they need
(config.handlers), other HTTP to Django, WebSockets through session auth and an Origin check."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.embedded")
# Django must be set up before anything imports models (the routing below does).
django_asgi_app = get_asgi_application()

from config.startup import require_collected_static  # noqa: E402

require_collected_static()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from accounts.middleware import (  # noqa: E402
    TwoFactorSocketMiddleware,
    UserLanguageSocketMiddleware,
)
from config.handlers import RouteByPath  # noqa: E402
from config.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": RouteByPath(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(
            # A session still owing its second factor is nobody on a socket, as on a page; the
            # socket speaks the person's language (their choice, else the browser's).
            AuthMiddlewareStack(
                TwoFactorSocketMiddleware(
                    UserLanguageSocketMiddleware(URLRouter(websocket_urlpatterns))
                )
            )
        ),
    }
)
