"""The URLconf: admin, the OpenAI-compatible ``/v1``, the REST API and the pages of each app."""

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path
from django.utils.translation import gettext
from django.views import defaults
from django.views.defaults import page_not_found
from django.views.i18n import JavaScriptCatalog

from core.api import status_error_body
from core.errors import ServiceError
from core.health import ReadinessView, healthz
from core.metrics import metrics_view

# Paths whose clients read JSON: their 404s (a path no route matches) are JSON too.
API_PREFIXES = ("/api/", "/v1/")


def no_favicon(request: HttpRequest) -> HttpResponse:
    # Browsers ask for /favicon.ico on pages that declare none (the admin's): answer "nothing"
    # instead of a logged 404 page.
    return HttpResponse(status=204)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith(API_PREFIXES):
        body = status_error_body(
            status_code=404,
            message=gettext("No such path: %(path)s") % {"path": request.path},
            code="not_found",
        )
        return JsonResponse(body, status=404)
    return page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith(API_PREFIXES):
        error = ServiceError(code="internal_error")
        return JsonResponse(error.body(), status=error.status)
    return defaults.server_error(request)


handler404 = not_found
handler500 = server_error

urlpatterns = [
    path("admin/", admin.site.urls),
    path("favicon.ico", no_favicon),
    # Operations: served by handlers of their own, outside the page machinery (config.handlers).
    path("healthz", healthz, name="healthz"),
    path("readyz", ReadinessView.as_view(), name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    # The translations static/js needs (gettext() in the browser), in the page's language.
    path("jsi18n/", JavaScriptCatalog.as_view(), name="javascript-catalog"),
    path("v1/", include("gateway.urls")),
    path("api/", include("config.api_urls")),
    path("", include("chat.urls")),
    path("", include("providers.urls")),
    path("", include("accounts.urls")),
    path("", include("billing.urls")),
    path("", include("gateway.page_urls")),
    path("", include("audit.urls")),
    path("", include("lifecycle.urls")),
]
