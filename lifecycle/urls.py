"""The lifecycle app's pages, and its one REST endpoint (mounted at "" by config/urls.py)."""

from django.urls import path

from . import views

org = "orgs/<slug:org_slug>/"

urlpatterns = [
    # A person's own data: take it, or delete the account.
    path("account/export/", views.account_export, name="account_export"),
    path("account/export/download/", views.account_export_download, name="account_export_download"),
    path("account/delete/", views.account_delete, name="account_delete"),
    path(
        "account/delete/" + org + "transfer/",
        views.account_delete_transfer,
        name="account_delete_transfer",
    ),
    # An organization's retention period and its deletion (owners only).
    path(org + "retention/", views.organization_retention, name="organization_retention"),
    path(org + "delete/", views.organization_delete, name="organization_delete"),
    path(
        org + "delete/cancel/", views.organization_delete_cancel, name="organization_delete_cancel"
    ),
    # REST: the same export for the signed-in person (config/urls.py tries /api/ first).
    path("api/v1/me/export/", views.MeExportView.as_view(), name="api-me-export"),
]
