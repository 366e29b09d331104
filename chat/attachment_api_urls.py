"""REST routes of this feature, included by config.api_urls."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
