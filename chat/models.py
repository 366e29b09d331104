"""Conversations and their messages. Reached only through ``Conversation.objects.for_user`` (a
person's own conversations) or ``for_api_key`` (a project's API conversations)."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import AnyUser, ApiKey, Project


class ConversationQuerySet(models.QuerySet["Conversation"]):
    def for_user(self, user: AnyUser) -> ConversationQuerySet:
        """The user's own conversations, in projects of organizations they still belong to."""
        if not user.is_authenticated:
            return self.none()
        return self.filter(owner=user, project__organization__memberships__user=user)

    def for_api_key(self, key: ApiKey) -> ConversationQuerySet:
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
    stop = models.JSONField(
        null=True, blank=True, help_text="Up to 4 sequences where the model stops writing."
    )
    seed = models.BigIntegerField(
        null=True, blank=True, help_text="The same seed asks for the same answer (best effort)."
    )
    json_mode = models.BooleanField(
        default=False, help_text="Ask for a JSON object (response_format json_object)."
    )
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

    # Not stored: set on a reply where it is shown. What the ledger says it cost, what its
    # conversation has cost so far, and its text rendered (sanitized) from markdown.
    cost: Decimal | None
    conversation_cost: Decimal | None
    html: str

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["conversation", "id"], name="chat_msg_conv_idx"),
            models.Index(fields=["state", "updated_at"], name="chat_msg_state_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"
