"""Staff view of the answers kept for ``Idempotency-Key`` (read-only)."""

from django.contrib import admin
from django.http import HttpRequest

from .models import IdempotentRequest


@admin.register(IdempotentRequest)
class IdempotentRequestAdmin(admin.ModelAdmin[IdempotentRequest]):
    list_display = ["key", "api_key", "user", "status_code", "created_at"]
    list_filter = ["status_code", "created_at"]
    search_fields = ["key"]
    readonly_fields = [
        "api_key", "user", "key", "body_digest", "status_code", "response", "stream_body",
        "created_at",
    ]  # fmt: skip

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
