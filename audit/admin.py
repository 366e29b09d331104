"""Staff's view of every organization's audit trail (and the global changes, such as prices):
read only, as the trail is append-only."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from .models import AuditEvent

# The event's page: everything, read only.
FIELDS = [
    "created_at", "action", "actor", "actor_label", "ip", "organization", "organization_name",
    "project", "project_name", "target_type", "target_id", "target_label", "changes_display",
]  # fmt: skip


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    list_display = [
        "created_at", "action", "actor_label", "actor", "organization_name", "project_name",
        "target_label", "ip",
    ]  # fmt: skip
    list_filter = [
        "action",
        "created_at",
        ("organization", admin.RelatedOnlyFieldListFilter),
        "target_type",
    ]
    list_select_related = ["actor"]
    # Not the address: PostgreSQL's inet column refuses text that is no address.
    search_fields = [
        "actor_label", "organization_name", "project_name", "target_label", "=target_id",
    ]  # fmt: skip
    date_hierarchy = "created_at"
    fields = [*FIELDS]  # its own list: typed as field groups, unlike the next
    readonly_fields = FIELDS

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="changes (before, after)")
    def changes_display(self, event: AuditEvent) -> str:
        return format_html(
            "<pre>{}</pre>", json.dumps(event.changes, indent=2, ensure_ascii=False, sort_keys=True)
        )
