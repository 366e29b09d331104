"""The audit log: the owners' page and CSV, and its REST list under ``api/v1/`` (resolved
after ``config.api_urls``, which matches none of it, as billing's REST routes are)."""

from django.urls import path

from . import api, views

org = "orgs/<slug:org_slug>/"

urlpatterns = [
    # Owners only: an admin, a member and an outsider get 404.
    path(org + "audit/", views.audit_log, name="audit_log"),
    path(org + "audit/export.csv", views.audit_export, name="audit_export"),
    path(
        "api/v1/organizations/<int:organization_id>/audit-events/",
        api.AuditEventListView.as_view(),
        name="api-audit-events",
    ),
]
