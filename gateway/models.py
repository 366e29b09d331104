"""What ``/v1`` keeps for a project's API keys: stored responses (the Responses API), files
and batches. Each belongs to a project and is reached through ``for_project``; another
project's id answers 404 like a missing one. Ids are OpenAI-shaped (``resp_…``, ``file-…``,
``batch_…``), random, never sequential.
"""

from __future__ import annotations

import secrets
from decimal import Decimal
from typing import TypeVar

from django.db import models

from accounts.models import Project
from billing.models import MONEY

_M = TypeVar("_M", bound=models.Model)


def _id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(16)}"


def response_id() -> str:
    return _id("resp_")


def file_id() -> str:
    return _id("file-")


def batch_id() -> str:
    return _id("batch_")


class ProjectScoped(models.QuerySet[_M]):
    def for_project(self, project: Project | int) -> ProjectScoped[_M]:
        return self.filter(project=project)


class StoredResponse(models.Model):
    """A response made through ``/v1/responses`` with ``store`` (the default): what was asked
    and answered, so ``previous_response_id`` can chain from it and it can be read back."""

    class Status(models.TextChoices):
        COMPLETED = "completed", "completed"
        FAILED = "failed", "failed"
        INCOMPLETE = "incomplete", "incomplete"
        IN_PROGRESS = "in_progress", "in_progress"
        CANCELLED = "cancelled", "cancelled"

    id = models.CharField(primary_key=True, max_length=64, default=response_id, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    model = models.CharField(max_length=200)
    # The response this one continues (``previous_response_id``); the chain is walked back
    # through it to rebuild the history for a chat-completions upstream.
    previous = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    instructions = models.TextField(blank=True)
    # The request's input, as items (a text input becomes one user message item).
    input_items = models.JSONField(default=list)
    # The response's output items (messages, function calls), as OpenAI shapes them.
    output = models.JSONField(default=list)
    output_text = models.TextField(blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.IN_PROGRESS)
    # Parameters the response was made with (temperature, max_output_tokens, text, tools…).
    parameters = models.JSONField(default=dict)
    usage = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    incomplete_details = models.JSONField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    # The upstream's own id, when the connection speaks the Responses API (passed through).
    upstream_id = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ProjectScoped["StoredResponse"].as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["project", "-created_at"], name="gw_response_project_idx")]

    def __str__(self) -> str:
        return self.id


def file_path(instance: File, filename: str) -> str:
    project = instance.project
    return f"files/o{project.organization_id}/p{project.pk}/{instance.id}.jsonl"


class File(models.Model):
    """A file uploaded through ``/v1/files`` (purpose ``batch``: JSONL requests), or made by a
    batch (``batch_output``: its results and errors)."""

    class Purpose(models.TextChoices):
        BATCH = "batch", "batch"
        BATCH_OUTPUT = "batch_output", "batch_output"

    id = models.CharField(primary_key=True, max_length=64, default=file_id, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    purpose = models.CharField(max_length=20, choices=Purpose.choices)
    filename = models.CharField(max_length=255)
    bytes = models.PositiveBigIntegerField(default=0)
    file = models.FileField(upload_to=file_path, max_length=300)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    objects = ProjectScoped.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["project", "-created_at"], name="gw_file_project_idx")]

    def __str__(self) -> str:
        return self.id


class Batch(models.Model):
    """A batch over ``/v1/chat/completions``, ``/v1/embeddings`` or ``/v1/responses``: its input
    file's lines run at low priority (each metered and checked against budgets at the batch
    price), or are handed to the upstream's own Batch API; results and errors go to files."""

    class Status(models.TextChoices):
        VALIDATING = "validating", "validating"
        FAILED = "failed", "failed"
        IN_PROGRESS = "in_progress", "in_progress"
        FINALIZING = "finalizing", "finalizing"
        COMPLETED = "completed", "completed"
        EXPIRED = "expired", "expired"
        CANCELLING = "cancelling", "cancelling"
        CANCELLED = "cancelled", "cancelled"

    id = models.CharField(primary_key=True, max_length=64, default=batch_id, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    endpoint = models.CharField(max_length=40)
    completion_window = models.CharField(max_length=8, default="24h")
    # Kept as an id once the batch has ended and its input is deleted (as OpenAI keeps it): no
    # constraint, nothing done on delete. A running batch's input cannot be deleted (files).
    input_file = models.ForeignKey(
        File,
        null=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    output_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.VALIDATING)
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    # Lines done so far (in order): a worker that restarts goes on from here.
    next_line = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=Decimal(0))  # the sum of its lines' rows
    # The model its first line names (OpenAI's ``model``), and the tokens of its lines' rows.
    model = models.CharField(max_length=200, blank=True)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    metadata = models.JSONField(default=dict, blank=True)
    errors = models.JSONField(null=True, blank=True)  # why the batch failed validation
    # The upstream's batch id, when it was handed to the connection's own Batch API.
    upstream_id = models.CharField(max_length=200, blank=True)
    # Handed to the upstream (``gateway.upstream_batches``): when its hold was taken, the
    # connection it went to, the price of each model's lines held then, the input file it was
    # sent as, and the upstream's status as last seen.
    handed_off_at = models.DateTimeField(null=True, blank=True)
    connection = models.ForeignKey(
        "providers.ProviderConnection",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    held_prices = models.JSONField(default=dict, blank=True)
    upstream_input_file_id = models.CharField(max_length=200, blank=True)
    upstream_status = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    objects = ProjectScoped.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["project", "-created_at"], name="gw_batch_project_idx")]

    def __str__(self) -> str:
        return self.id
