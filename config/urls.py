from django.contrib import admin
from django.http import HttpResponse
from django.urls import include, path


def no_favicon(request) -> HttpResponse:
    # Browsers ask for /favicon.ico on pages that declare none (the admin's): answer "nothing"
    # instead of a logged 404 page.
    return HttpResponse(status=204)


urlpatterns = [
    path("admin/", admin.site.urls),
    path("favicon.ico", no_favicon),
    path("v1/", include("chat.openai_urls")),
    path("api/", include("config.api_urls")),
    path("", include("chat.urls")),
    path("", include("accounts.urls")),
    path("", include("billing.urls")),
]
