"""REST routes of moderation (included by config.api_urls): a project's moderation settings
and what was flagged, for the organization's owners and admins."""

from django.urls import path

from . import api_moderation

moderation = "v1/projects/<int:project_id>/moderation/"

urlpatterns = [
    path(moderation, api_moderation.ModerationSettingsView.as_view(), name="api-moderation"),
    path(
        moderation + "flags/",
        api_moderation.ModerationFlagListView.as_view(),
        name="api-moderation-flags",
    ),
]
