"""Staff see what ``/v1`` keeps (stored responses, files, batches) read-only: they are the
project's records of calls already made and billed."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import Batch, File, StoredResponse


class ReadOnly(admin.ModelAdmin[Any]):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(StoredResponse)
class StoredResponseAdmin(ReadOnly):
    list_display = ["id", "project", "model", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["id", "model"]
    raw_id_fields = ["project", "api_key", "previous"]


@admin.register(File)
class FileAdmin(ReadOnly):
    list_display = ["id", "project", "purpose", "filename", "bytes", "created_at"]
    list_filter = ["purpose"]
    search_fields = ["id", "filename"]
    raw_id_fields = ["project", "api_key"]


@admin.register(Batch)
class BatchAdmin(ReadOnly):
    list_display = [
        "id",
        "project",
        "endpoint",
        "model",
        "status",
        "upstream_status",
        "total",
        "completed",
        "failed",
        "cost",
    ]
    list_filter = ["status", "endpoint"]
    search_fields = ["id"]
    raw_id_fields = [
        "project",
        "api_key",
        "input_file",
        "output_file",
        "error_file",
        "connection",
    ]
