"""Provider connections, the models each serves, and the models each project allows.

Reached through ``ProviderConnection.objects.for_project`` (what a project may use) and
``managed_by`` (what an organization's managers may edit). A connection's key is stored only as
a Fernet token (``providers.crypto``) with a hint that may be shown.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.models import Organization, Project


class ProviderConnectionQuerySet(models.QuerySet["ProviderConnection"]):
    def for_project(self, project: Project) -> ProviderConnectionQuerySet:
        """Connections a project may use: its own, its organization's shared ones, and the
        global ones staff keep (the local model, the server's OPENAI_API_KEY)."""
        return self.filter(
            models.Q(organization__isnull=True)
            | models.Q(organization=project.organization_id, project__isnull=True)
            | models.Q(project=project)
        )

    def managed_by(self, organization: Organization) -> ProviderConnectionQuerySet:
        """The ones an organization's owners and admins may edit (never the global ones)."""
        return self.filter(organization=organization)


class ProviderConnection(models.Model):
    class Kind(models.TextChoices):
        LOCAL = "local", gettext_lazy("Local model (built in)")
        OPENAI = "openai", "OpenAI"
        COMPATIBLE = "openai_compatible", gettext_lazy("OpenAI-compatible server")

    # Both empty: a global connection, kept by staff in the admin.
    organization = models.ForeignKey(
        "accounts.Organization",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="provider_connections",
    )
    project = models.ForeignKey(
        Project,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="provider_connections",
        help_text="Empty: shared by every project of the organization.",
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    name = models.CharField(max_length=100)
    base_url = models.URLField(blank=True, help_text="For OpenAI-compatible servers.")
    # Write-only: the Fernet token of the key, and what may be shown of it (sk-…abcd).
    api_key_encrypted = models.TextField(blank=True, editable=False)
    api_key_hint = models.CharField(max_length=20, blank=True, editable=False)
    openai_organization = models.CharField(max_length=100, blank=True)
    openai_project = models.CharField(max_length=100, blank=True)
    timeout = models.FloatField(default=60.0, help_text="Seconds to wait between chunks.")
    max_retries = models.PositiveSmallIntegerField(default=2)
    supports_moderation = models.BooleanField(
        default=False, help_text="It answers /v1/moderations (OpenAI does)."
    )
    supports_responses = models.BooleanField(
        default=False,
        help_text="It speaks the Responses API (/v1/responses): previous_response_id is "
        "passed through instead of the history being rebuilt.",
    )
    supports_batches = models.BooleanField(
        default=False,
        help_text="Batches are handed to its own Batch API (/v1/files, /v1/batches).",
    )
    models_refreshed_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProviderConnectionQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(project__isnull=True) | models.Q(organization__isnull=False),
                name="chat_connection_project_has_org",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_global(self) -> bool:
        return self.organization_id is None

    @property
    def scope_label(self) -> str:
        if self.is_global:
            return _("everyone")
        return _("this project") if self.project_id else _("all projects of the organization")


class ConnectionModel(models.Model):
    """A model a connection serves, fetched from its /v1/models or typed in."""

    connection = models.ForeignKey(
        ProviderConnection, on_delete=models.CASCADE, related_name="models"
    )
    name = models.CharField(max_length=200)
    context_window = models.PositiveIntegerField(default=8192)
    max_output_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="The longest reply the model may write; empty: what its context window leaves.",
    )
    supports_vision = models.BooleanField(default=False)
    supports_tools = models.BooleanField(default=False)
    supports_json = models.BooleanField(default=False)
    supports_embeddings = models.BooleanField(
        default=False, help_text="An embedding model (/v1/embeddings)."
    )
    # A model with no price is refused under any budget; without one it is usable only when
    # staff said so here, and its ledger rows say "unpriced" rather than $0.
    unpriced_allowed = models.BooleanField(
        default=False, help_text="Staff: let it be used without a price (and without budgets)."
    )
    fetched = models.BooleanField(default=False, help_text="Listed by the provider itself.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["connection", "name"], name="chat_connmodel_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.connection})"


class ProjectModel(models.Model):
    """A model a project's members may use. With none listed, a project may use every model of
    the connections it sees, the local model being the default."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="allowed_models")
    model = models.ForeignKey(ConnectionModel, on_delete=models.CASCADE, related_name="+")
    # The model's name, kept here so that a project cannot allow two models of the same name:
    # conversations and API calls name their model, and the name must say which.
    name = models.CharField(max_length=200)
    is_default = models.BooleanField(default=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="chat_projectmodel_name"),
            models.UniqueConstraint(
                fields=["project"],
                condition=models.Q(is_default=True),
                name="chat_projectmodel_one_default",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} in {self.project}"
