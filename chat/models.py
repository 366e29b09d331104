"""Conversations and their messages. Reached only through ``Conversation.objects.for_user`` (a
person's own conversations) or ``for_api_key`` (a project's API conversations)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Project


class ConversationQuerySet(models.QuerySet["Conversation"]):
    def for_user(self, user) -> ConversationQuerySet:
        """The user's own conversations, in projects of organizations they still belong to."""
        if not user.is_authenticated:
            return self.none()
        return self.filter(owner=user, project__organization__memberships__user=user)

    def for_api_key(self, key) -> ConversationQuerySet:
        """The project's API conversations: those started with any of its keys. A key is the
        project's, not a person's, so it never reaches a member's own chats."""
        return self.filter(project_id=key.project_id, owner__isnull=True)

    def for_project(self, project: Project) -> ConversationQuerySet:
        return self.filter(project=project)


class Conversation(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="conversations")
    # Null for a conversation started through the REST API with a project key: it belongs to
    # the project's API side (see ``for_api_key``), not to a person.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="conversations",
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="conversations",
        help_text="The key that started it, for a conversation started through the API.",
    )
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200)
    system_prompt = models.TextField(blank=True)
    # Sampling parameters; None means "the provider's default".
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    presence_penalty = models.FloatField(null=True, blank=True)
    frequency_penalty = models.FloatField(null=True, blank=True)
    archived = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_message_at = models.DateTimeField(default=timezone.now)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-last_message_at", "-id"]
        indexes = [
            # The sidebar: one user's conversations in a project, most recent first.
            models.Index(
                fields=["project", "owner", "archived", "-last_message_at"],
                name="chat_conv_sidebar_idx",
            ),
        ]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    @property
    def display_title(self) -> str:
        return self.title or "New chat"


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system", "System"
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"
        TOOL = "tool", "Tool"

    class State(models.TextChoices):
        COMPLETE = "complete", "Complete"
        STREAMING = "streaming", "Streaming"
        STOPPED = "stopped", "Stopped"
        ERROR = "error", "Error"
        INCOMPLETE = "incomplete", "Incomplete"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.COMPLETE)
    error_code = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)
    model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    cached_tokens = models.PositiveIntegerField(null=True, blank=True)
    usage_estimated = models.BooleanField(
        default=False, help_text="The upstream reported no usage; tokens were counted here."
    )
    finish_reason = models.CharField(max_length=40, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    omitted_messages = models.PositiveIntegerField(
        default=0, help_text="Older messages left out of the prompt to fit the context window."
    )
    # The billing reservation of the call writing this reply: if its process dies, whoever
    # closes the reply settles the call under this id, so the ledger still gets its one row.
    request_id = models.UUIDField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["conversation", "id"], name="chat_msg_conv_idx"),
            models.Index(fields=["state", "updated_at"], name="chat_msg_state_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"

    @property
    def is_final(self) -> bool:
        return self.state != self.State.STREAMING


# --- provider connections ----------------------------------------------------------------------


class ProviderConnectionQuerySet(models.QuerySet["ProviderConnection"]):
    def for_project(self, project: Project) -> ProviderConnectionQuerySet:
        """Connections a project may use: its own, its organization's shared ones, and the
        global ones staff keep (the local model, the server's OPENAI_API_KEY)."""
        return self.filter(
            models.Q(organization__isnull=True)
            | models.Q(organization=project.organization_id, project__isnull=True)
            | models.Q(project=project)
        )

    def managed_by(self, organization) -> ProviderConnectionQuerySet:
        """The ones an organization's owners and admins may edit (never the global ones)."""
        return self.filter(organization=organization)


class ProviderConnection(models.Model):
    class Kind(models.TextChoices):
        LOCAL = "local", "Local model (built in)"
        OPENAI = "openai", "OpenAI"
        COMPATIBLE = "openai_compatible", "OpenAI-compatible server"

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
            return "everyone"
        return "this project" if self.project_id else "all projects of the organization"


class ConnectionModel(models.Model):
    """A model a connection serves, fetched from its /v1/models or typed in."""

    connection = models.ForeignKey(
        ProviderConnection, on_delete=models.CASCADE, related_name="models"
    )
    name = models.CharField(max_length=200)
    context_window = models.PositiveIntegerField(default=8192)
    supports_vision = models.BooleanField(default=False)
    supports_tools = models.BooleanField(default=False)
    supports_json = models.BooleanField(default=False)
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
