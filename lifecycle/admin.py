"""Staff views of retention periods and of organizations' scheduled deletions (which staff may
cancel, or bring forward by changing the date)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import OrganizationDeletion, RetentionPolicy


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(admin.ModelAdmin[RetentionPolicy]):
    list_display = ["organization", "days", "updated_by", "updated_at"]
    search_fields = ["organization__name", "organization__slug", "updated_by__email"]
    autocomplete_fields = ["organization"]
    readonly_fields = ["updated_by", "updated_at"]


class PendingFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("pending", "Scheduled"), ("done", "Carried out (tombstone kept)")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[OrganizationDeletion]
    ) -> QuerySet[OrganizationDeletion]:
        if self.value() == "pending":
            return queryset.filter(completed_at__isnull=True)
        if self.value() == "done":
            return queryset.filter(completed_at__isnull=False)
        return queryset


@admin.register(OrganizationDeletion)
class OrganizationDeletionAdmin(admin.ModelAdmin[OrganizationDeletion]):
    list_display = ["organization", "requested_by", "requested_at", "scheduled_for", "completed_at"]
    list_filter = [PendingFilter, "scheduled_for"]
    search_fields = ["organization__name", "organization__slug", "requested_by__email"]
    fields = ["organization", "requested_by", "requested_at", "scheduled_for", "completed_at"]
    readonly_fields = ["organization", "requested_by", "requested_at", "completed_at"]
    actions = ["cancel"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # owners ask for it on the organization's page

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the "cancel" action does it, for pending ones only

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The date of a pending one (brought forward, or put off); a done one is history.
        return super().has_change_permission(request, obj) and (obj is None or obj.is_pending)

    @admin.action(description="Cancel the selected deletions", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[OrganizationDeletion]) -> None:
        cancelled = services.organization_deletions_cancel(deletions=list(queryset))
        self.message_user(
            request, f"Cancelled {cancelled} scheduled deletion(s).", level=messages.SUCCESS
        )
