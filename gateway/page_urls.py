"""Pages of the gateway (a project's batches), included by config.urls."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
