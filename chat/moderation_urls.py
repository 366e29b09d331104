"""Moderation pages of a project (included by chat.urls): its settings and what was flagged,
for the organization's owners and admins."""

from django.urls import path

from . import moderation_views

moderation = "orgs/<slug:org_slug>/projects/<slug:project_slug>/chat/moderation/"

urlpatterns = [
    path(moderation, moderation_views.moderation_settings, name="moderation_settings"),
    path(moderation + "flags/", moderation_views.moderation_flags, name="moderation_flags"),
]
