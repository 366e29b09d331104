"""/v1 routes of this part, included by gateway.urls."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
