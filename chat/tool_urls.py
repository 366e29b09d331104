"""Routes of this feature, included by chat.urls / config.api_urls."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
