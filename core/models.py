"""What core keeps in the database: the answers kept for ``Idempotency-Key`` (``core.idempotency``).

The record's owner is a project API key or a person; the foreign keys name them lazily (core
imports no app), and a record goes with its owner.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class IdempotentRequest(models.Model):
    """A billed POST made with an ``Idempotency-Key``: its answer, replayed for 24 hours.

    Keys are per caller: a project API key's, or a signed-in person's (the REST API)."""

    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    key = models.CharField(max_length=255)
    body_digest = models.CharField(max_length=64)
    # Empty while the first request is still running.
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)
    # A streamed answer: its Server-Sent Events, replayed as they were sent.
    stream_body = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "key"],
                condition=models.Q(api_key__isnull=False),
                name="chat_idempotency_unique",
            ),
            models.UniqueConstraint(
                fields=["user", "key"],
                condition=models.Q(user__isnull=False),
                name="chat_idempotency_user_unique",
            ),
            models.CheckConstraint(
                condition=models.Q(api_key__isnull=False, user__isnull=True)
                | models.Q(api_key__isnull=True, user__isnull=False),
                name="chat_idempotency_one_caller",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.status_code or 'running'})"
