"""What the lifecycle app keeps: an organization's retention period, and its scheduled end.

Both hang off ``accounts.Organization`` one-to-one (accounts knows nothing of them) and are
reached through the organization a view already resolved for its member.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization

# The retention periods an owner may choose, in days: a month to ten years.
RETENTION_MIN_DAYS = 30
RETENTION_MAX_DAYS = 3650


class RetentionPolicy(models.Model):
    """Conversations of the organization whose last message is older than ``days`` are purged
    (``lifecycle.services.retention_purge``, daily). No row: kept for ever (the default)."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="retention_policy"
    )
    days = models.PositiveIntegerField(
        _("days"),
        validators=[MinValueValidator(RETENTION_MIN_DAYS), MaxValueValidator(RETENTION_MAX_DAYS)],
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "retention policies"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(days__gte=RETENTION_MIN_DAYS, days__lte=RETENTION_MAX_DAYS),
                name="lifecycle_retention_days_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization}: {self.days} days"


class OrganizationDeletionQuerySet(models.QuerySet["OrganizationDeletion"]):
    def pending(self) -> OrganizationDeletionQuerySet:
        """Scheduled and not carried out: the organization spends nothing meanwhile."""
        return self.filter(completed_at__isnull=True)

    def due(self, now: datetime) -> OrganizationDeletionQuerySet:
        return self.pending().filter(scheduled_for__lte=now)


class OrganizationDeletion(models.Model):
    """An organization's deletion, asked for by an owner and carried out once ``scheduled_for``
    has passed (``lifecycle.tasks.delete_due_organizations``). Until then it is read-only for
    spending and an owner (or staff) may cancel, which deletes this row.

    The row outlives the deletion only where the organization's row has to stay: ledger rows
    and statements point at it (PROTECT, the ledger is append-only), so it stays as an empty,
    renamed tombstone and ``completed_at`` says when everything else went."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="scheduled_deletion"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(default=timezone.now)
    scheduled_for = models.DateTimeField(db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    objects = OrganizationDeletionQuerySet.as_manager()

    class Meta:
        ordering = ["scheduled_for", "id"]

    def __str__(self) -> str:
        return f"Deletion of {self.organization} on {self.scheduled_for:%Y-%m-%d}"

    @property
    def is_pending(self) -> bool:
        return self.completed_at is None
