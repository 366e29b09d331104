"""The audit trail: who changed money or access, in which organization, what it was before and
after, and when. Append-only: an event is written once and never changed or deleted, but for
``audit.services.audit_forget_actor`` (a person who deleted their account stops being named).

Names are kept as text beside each link (organization, project, actor, target), so the trail
still reads right after the organization, project, person or object is gone (the links are
``SET_NULL``).
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization, Project

# Who an event is shown as when no person made the change (a task, a command, a migration),
# when staff made it in the admin, and once its actor deleted their account.
SYSTEM = "system"
STAFF = "staff (admin)"  # accounts.signals.STAFF_LABEL
DELETED_USER = "deleted user"
ACTOR_WORDS = {
    SYSTEM: _("system"),
    STAFF: _("staff (admin)"),
    DELETED_USER: _("deleted user"),
}

APPEND_ONLY = "The audit trail is append-only."


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def for_organization(self, organization: Organization) -> AuditEventQuerySet:
        return self.filter(organization=organization)

    def update(self, **kwargs: Any) -> NoReturn:
        raise TypeError(APPEND_ONLY)

    def delete(self) -> NoReturn:
        raise TypeError(APPEND_ONLY)


class AuditEvent(models.Model):
    class Action(models.TextChoices):
        API_KEY_CREATED = "api_key.created", _("API key created")
        API_KEY_REVOKED = "api_key.revoked", _("API key revoked")
        API_KEY_UPDATED = "api_key.updated", _("API key changed")
        API_KEY_DELETED = "api_key.deleted", _("API key deleted")
        CONNECTION_CREATED = "connection.created", _("Connection added")
        CONNECTION_UPDATED = "connection.updated", _("Connection changed")
        CONNECTION_DELETED = "connection.deleted", _("Connection deleted")
        CONNECTION_MODEL_ADDED = "connection_model.added", _("Connection model added")
        CONNECTION_MODEL_UPDATED = "connection_model.updated", _("Connection model changed")
        CONNECTION_MODEL_REMOVED = "connection_model.removed", _("Connection model removed")
        PROJECT_MODELS_CHANGED = "project_models.changed", _("Allowed models changed")
        BUDGET_CREATED = "budget.created", _("Budget added")
        BUDGET_UPDATED = "budget.updated", _("Budget changed")
        BUDGET_DELETED = "budget.deleted", _("Budget deleted")
        RATE_LIMIT_CHANGED = "rate_limit.changed", _("Rate limit changed")
        PRICE_CREATED = "price.created", _("Price added")
        PRICE_CHANGED = "price.changed", _("Price changed")
        PRICE_DELETED = "price.deleted", _("Price deleted")
        MEMBER_INVITED = "member.invited", _("Member invited")
        INVITATION_RESENT = "invitation.resent", _("Invitation sent again")
        INVITATION_UPDATED = "invitation.updated", _("Invitation changed")
        INVITATION_REVOKED = "invitation.revoked", _("Invitation revoked")
        MEMBER_JOINED = "member.joined", _("Member joined")
        MEMBER_ADDED = "member.added", _("Member added")
        MEMBER_ROLE_CHANGED = "member.role_changed", _("Member's role changed")
        MEMBER_REMOVED = "member.removed", _("Member removed")
        TWO_FACTOR_CHANGED = "organization.two_factor_changed", _("Two-factor requirement changed")
        ORGANIZATION_DELETED = "organization.deleted", _("Organization deleted")
        PROJECT_DELETED = "project.deleted", _("Project deleted")
        PERSONA_CREATED = "persona.created", _("Persona added")
        PERSONA_UPDATED = "persona.updated", _("Persona changed")
        PERSONA_DELETED = "persona.deleted", _("Persona deleted")
        MODERATION_CHANGED = "moderation.changed", _("Moderation settings changed")
        USER_ACCESS_CHANGED = "user.access_changed", _("Account access changed (staff)")

    created_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)
    organization = models.ForeignKey(
        Organization,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audit_events",
        help_text="Empty: a global change (a price), or the organization was deleted.",
    )
    organization_name = models.CharField(max_length=100, blank=True)
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    project_name = models.CharField(max_length=100, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # The e-mail address, "API key lgw_…", "system", "staff (admin)" or "deleted user".
    actor_label = models.CharField(max_length=254)
    action = models.CharField(max_length=40, choices=Action.choices)
    target_type = models.CharField(max_length=100, blank=True)  # app_label.model
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=200, blank=True)
    # {"field": [before, after]}; a secret is only "changed".
    changes = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="audit_org_time_idx"),
            models.Index(fields=["action", "-created_at"], name="audit_action_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor_label} at {self.created_at:%Y-%m-%d %H:%M:%S}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise TypeError(APPEND_ONLY)
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(APPEND_ONLY)

    @property
    def actor_display(self) -> str:
        return str(ACTOR_WORDS.get(self.actor_label, self.actor_label))

    def change_rows(self) -> list[tuple[str, Any, Any, bool]]:
        """``(field, before, after, secret)`` of each change, for pages and the CSV."""
        rows = []
        for field, value in (self.changes or {}).items():
            if isinstance(value, list) and len(value) == 2:
                rows.append((field, value[0], value[1], False))
            else:  # a secret: only that it changed
                rows.append((field, None, None, True))
        return rows
