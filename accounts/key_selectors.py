"""Reads of a project's API keys. Views reach keys only through these, scoped to the project
the URL already resolved for the user: another project's key answers 404 like a missing one."""

from __future__ import annotations

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from .models import ApiKey, Project


def api_keys_for_project(project: Project) -> QuerySet[ApiKey]:
    return ApiKey.objects.for_project(project).select_related("created_by")


def get_api_key_or_404(*, project: Project, pk: int) -> ApiKey:
    return get_object_or_404(
        ApiKey.objects.for_project(project).select_related("project__organization"), pk=pk
    )
