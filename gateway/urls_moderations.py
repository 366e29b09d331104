"""/v1 routes of this part, included by gateway.urls."""

from django.urls import URLPattern, path

from . import views_moderations

urlpatterns: list[URLPattern] = [
    path("moderations", views_moderations.ModerationsView.as_view(), name="moderations"),
]
