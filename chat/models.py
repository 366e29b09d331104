"""Conversations (private chats and shared rooms), their messages, and the project's personas.

Conversations are reached only through ``Conversation.objects.for_user`` (a person's own
conversations and the rooms they are in) or ``for_api_key`` (a project's API conversations);
personas through ``Persona.objects.for_project``; a person's sidebar folders through
``Folder.objects.for_user``.

Messages form a tree: each follows its ``parent`` (the message before it), and regenerating a
reply or editing a message adds a sibling, a new *version* of that turn, instead of overwriting
it. Among siblings one is ``selected``; the conversation's current branch is the chain of
selected messages from the first one down, marked ``on_path`` (kept in step by
``chat.services``), which is what the page shows and the model is sent. Along a branch ids only
grow (a message is always created after its parent), so a branch ordered by id is in order.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy

from accounts.models import AnyUser, ApiKey, Project

if TYPE_CHECKING:
    from .selectors import Versions


class ConversationQuerySet(models.QuerySet["Conversation"]):
    def for_user(self, user: AnyUser) -> ConversationQuerySet:
        """The user's own conversations, in projects of organizations they still belong to."""
        if not user.is_authenticated:
            return self.none()
        reaches = (
            Q(owner=user)
            | Q(sharing=Conversation.Sharing.PROJECT)
            | Q(
                sharing=Conversation.Sharing.MEMBERS,
                pk__in=RoomMember.objects.filter(user=user).values("conversation_id"),
            )
        )
        # The organization check stays whatever the sharing: a person removed from the
        # organization loses its rooms at once.
        return self.filter(reaches, project__organization__memberships__user=user)

    def rooms(self) -> ConversationQuerySet:
        return self.exclude(sharing=Conversation.Sharing.PRIVATE)

    def private(self) -> ConversationQuerySet:
        return self.filter(sharing=Conversation.Sharing.PRIVATE)

    def for_api_key(self, key: ApiKey) -> ConversationQuerySet:
        """The project's API conversations: those started with any of its keys. A key is the
        project's, not a person's, so it never reaches a member's own chats."""
        return self.filter(project_id=key.project_id, owner__isnull=True)

    def for_project(self, project: Project) -> ConversationQuerySet:
        return self.filter(project=project)


class PersonaQuerySet(models.QuerySet["Persona"]):
    def for_project(self, project: Project) -> PersonaQuerySet:
        return self.filter(project=project)

    def enabled(self) -> PersonaQuerySet:
        return self.filter(enabled=True)


class Persona(models.Model):
    """A named system prompt with its model and sampling settings, called in a room by its
    @tag (``@chatbot``, ``@요약``) or picked when a conversation starts."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="personas")
    name = models.CharField(max_length=80)
    # Without the "@"; stored case-folded (NFKC), so "@ChatBot" and "@chatbot" are one tag.
    tag = models.CharField(max_length=32)
    description = models.CharField(max_length=300, blank=True)
    system_prompt = models.TextField(blank=True)
    model = models.CharField(
        max_length=200, blank=True, help_text="Empty: the project's default model."
    )
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    presence_penalty = models.FloatField(null=True, blank=True)
    frequency_penalty = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    json_mode = models.BooleanField(default=False)
    # A JSON Schema the reply must match (OpenAI's ``json_schema`` object: name, schema,
    # strict); takes the place of ``json_mode`` when set.
    json_schema = models.JSONField(null=True, blank=True)
    # The tools it may call (``chat.tools`` names; an MCP server's as ``mcp:<server id>``).
    tools = models.JSONField(default=list, blank=True)
    avatar = models.CharField(max_length=8, blank=True, help_text="An emoji, shown by its name.")
    color = models.CharField(max_length=7, default="#4f46e5", help_text="#rrggbb")
    enabled = models.BooleanField(default=True)
    # The shipped preset it was made from ("chatbot", "summary_ko"…), blank for one of the
    # project's own.
    preset = models.CharField(max_length=40, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PersonaQuerySet.as_manager()

    class Meta:
        ordering = ["project", "tag"]
        constraints = [
            models.UniqueConstraint(fields=["project", "tag"], name="chat_persona_tag_unique"),
        ]

    def __str__(self) -> str:
        return f"@{self.tag} ({self.name})"


class FolderQuerySet(models.QuerySet["Folder"]):
    def for_user(self, user: AnyUser) -> FolderQuerySet:
        """The user's own folders, in projects of organizations they still belong to."""
        if not user.is_authenticated:
            return self.none()
        return self.filter(owner=user, project__organization__memberships__user=user)

    def for_project(self, project: Project) -> FolderQuerySet:
        return self.filter(project=project)


class Folder(models.Model):
    """A person's folder of their own chats in a project (the sidebar groups them by it)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="chat_folders")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_folders"
    )
    name = models.CharField(max_length=80)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = FolderQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "owner", "name"], name="chat_folder_name_unique"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Conversation(models.Model):
    class Sharing(models.TextChoices):
        PRIVATE = "private", gettext_lazy("Only me")
        MEMBERS = "members", gettext_lazy("Chosen members")
        PROJECT = "project", gettext_lazy("Everyone in the project")

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
    json_schema = models.JSONField(
        null=True,
        blank=True,
        help_text="Ask for JSON matching this schema (response_format json_schema: "
        '{"name", "schema", "strict"}); takes the place of json_mode.',
    )
    tools = models.JSONField(
        default=list,
        blank=True,
        help_text="Tools the model may call (chat.tools names; an MCP server's as mcp:<id>).",
    )
    archived = models.BooleanField(default=False)
    # The owner's sidebar: pinned chats come first; a chat may sit in one of their folders.
    pinned = models.BooleanField(default=False)
    folder = models.ForeignKey(
        Folder,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="conversations",
    )
    # A private conversation answers every message; a room (shared with chosen members or the
    # whole project) answers only messages that start with a persona's @tag.
    sharing = models.CharField(max_length=10, choices=Sharing.choices, default=Sharing.PRIVATE)
    persona = models.ForeignKey(
        Persona,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="conversations",
        help_text="The persona picked when it started (its settings were copied here).",
    )
    history_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Send at most this many earlier messages (empty: all that fit).",
    )
    # The running summary of the oldest turns, sent in their place: every message with an id up
    # to ``summary_through`` is folded into it.
    summary = models.TextField(blank=True)
    summary_through = models.BigIntegerField(null=True, blank=True)
    summary_error = models.TextField(blank=True)
    summary_updated_at = models.DateTimeField(null=True, blank=True)
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
        return self.title or str(
            gettext_lazy("New room") if self.is_room else gettext_lazy("New chat")
        )

    @property
    def is_room(self) -> bool:
        return self.sharing != self.Sharing.PRIVATE


class RoomMember(models.Model):
    """A person a room is shared with (rooms shared with the whole project need none)."""

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="room_members"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="room_memberships"
    )
    added_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "added_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "user"], name="chat_room_member_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.conversation}"


class MessageQuerySet(models.QuerySet["Message"]):
    def on_branch(self) -> MessageQuerySet:
        """The current branch of a conversation: what its page shows and its model is sent."""
        return self.filter(on_path=True)


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system", "System"
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"
        TOOL = "tool", "Tool"

    class State(models.TextChoices):
        COMPLETE = "complete", gettext_lazy("Complete")
        STREAMING = "streaming", gettext_lazy("Streaming")
        STOPPED = "stopped", gettext_lazy("Stopped")
        ERROR = "error", gettext_lazy("Error")
        INCOMPLETE = "incomplete", gettext_lazy("Incomplete")

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    # The message this one follows (None: the first of its conversation, or a version of it).
    # DO_NOTHING: a conversation's messages go with it in one delete; a cascade here would walk
    # a long conversation one message at a time.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.DO_NOTHING, related_name="children"
    )
    # The version of its turn shown among its siblings (those with the same parent).
    selected = models.BooleanField(default=True)
    # On the conversation's current branch: it and every message before it are selected.
    on_path = models.BooleanField(default=True)
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    # Who wrote a user message, or who called for an assistant reply (and pays for it): rooms
    # show it. Null for a key's message or a deleted account.
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="chat_messages",
    )
    # Which persona wrote an assistant reply, when one did.
    persona = models.ForeignKey(
        Persona, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages"
    )
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
    # A reply asked for as JSON: whether it parsed (and matched the schema). None: not asked.
    json_valid = models.BooleanField(null=True, blank=True)
    json_error = models.CharField(max_length=300, blank=True)
    # Upstream calls the reply took: one, plus one per round of tool calls answered.
    tool_rounds = models.PositiveSmallIntegerField(default=0)
    # A user message moderation refused: kept for its author and managers, never sent to a
    # model (``selectors.history_for_prompt`` leaves it out).
    flagged = models.BooleanField(default=False)
    # The billing reservation of the call writing this reply: if its process dies, whoever
    # closes the reply settles the call under this id, so the ledger still gets its one row.
    request_id = models.UUIDField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Not stored: set on a reply where it is shown. What the ledger says it cost, what its
    # conversation has cost so far, and its text rendered (sanitized) from markdown. ``unpriced``:
    # its model ran without a price, so ``cost`` is None (unknown, not $0).
    cost: Decimal | None
    unpriced: bool
    conversation_cost: Decimal | None
    html: str
    versions: Versions | None  # which version of its turn it is, when there are several

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["conversation", "id"], name="chat_msg_conv_idx"),
            # The transcript and the prompt's history: the current branch, in order.
            models.Index(fields=["conversation", "on_path", "id"], name="chat_msg_path_idx"),
            models.Index(fields=["state", "updated_at"], name="chat_msg_state_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


class ChatSettings(models.Model):
    """A project's chat settings: when long conversations are summarized, and by whom."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="chat_settings")
    summarize_after_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Fold the oldest turns into a summary once the history passes this many "
        "tokens (empty: only when it no longer fits the model's window).",
    )
    summary_persona = models.ForeignKey(
        Persona,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Who writes summaries (empty: the project's @summary persona).",
    )
    # Moderation: off by default. On, every input is checked before it is sent (by the
    # connection's /v1/moderations where it has one, else by the patterns below).
    moderation_enabled = models.BooleanField(default=False)
    moderation_check_replies = models.BooleanField(
        default=False, help_text="Check each finished reply too."
    )
    moderation_patterns = models.TextField(
        blank=True,
        help_text="One rule per line, “category: regular expression” (case-insensitive), "
        "used where the connection has no /v1/moderations.",
    )

    def __str__(self) -> str:
        return f"Chat settings of {self.project}"


class ToolCall(models.Model):
    """One tool call a reply made, in the round it was made, with what the tool answered.

    The reply's text (of every round) is its message's content; the calls are kept here, with
    the upstream's ``tool_call_id``, so the transcript can show each and the history can be
    rebuilt."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="tool_calls")
    round = models.PositiveSmallIntegerField()  # 1: asked by the reply's first upstream call
    call_id = models.CharField(max_length=100)  # the upstream's tool_call_id
    name = models.CharField(max_length=128)
    arguments = models.TextField(blank=True)  # JSON text, as the model wrote it
    result = models.TextField(blank=True)  # what the model was sent back
    is_error = models.BooleanField(default=False)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["message", "round", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.call_id})"


class ToolServerQuerySet(models.QuerySet["ToolServer"]):
    def for_project(self, project: Project) -> ToolServerQuerySet:
        return self.filter(project=project)

    def enabled(self) -> ToolServerQuerySet:
        return self.filter(enabled=True)


class ToolServer(models.Model):
    """An MCP server (streamable HTTP) whose tools a project's conversations may call, added by
    its managers. Its address goes through the same policy as provider connections; its
    headers (an Authorization, say) are stored only as a Fernet token."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tool_servers")
    name = models.CharField(max_length=80)
    url = models.URLField(max_length=500)
    # Write-only: the Fernet token of the headers as a JSON object, and their names (shown).
    headers_encrypted = models.TextField(blank=True, editable=False)
    header_names = models.CharField(max_length=300, blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    timeout = models.FloatField(default=20.0, help_text="Seconds a tool call may take.")
    # The server's tools as last listed: [{"name", "description", "input_schema"}].
    tools = models.JSONField(default=list, blank=True, editable=False)
    listed_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ToolServerQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="chat_toolserver_name"),
        ]

    def __str__(self) -> str:
        return self.name


def attachment_path(instance: Attachment, filename: str) -> str:
    """Under the tenant: a file's path says whose it is, and its name is not the uploader's."""
    project = instance.project
    return f"attachments/o{project.organization_id}/p{project.pk}/{uuid.uuid4().hex}/{filename}"


class AttachmentQuerySet(models.QuerySet["Attachment"]):
    def for_project(self, project: Project) -> AttachmentQuerySet:
        return self.filter(project=project)


class Attachment(models.Model):
    """An image attached to a message (uploaded first, then sent with it), stored through
    Django's storage under its tenant and served only to those who may read its conversation."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="attachments")
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="attachments"
    )
    # Null until the message it was uploaded for is sent.
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.CASCADE, related_name="attachments"
    )
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    file = models.FileField(upload_to=attachment_path, max_length=300)
    name = models.CharField(max_length=200, help_text="The file's name as uploaded (shown).")
    content_type = models.CharField(max_length=40)  # image/png, image/jpeg, image/webp, image/gif
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size = models.PositiveIntegerField()  # bytes
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = AttachmentQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class ModerationFlagQuerySet(models.QuerySet["ModerationFlag"]):
    def for_project(self, project: Project) -> ModerationFlagQuerySet:
        return self.filter(project=project)


class ModerationFlag(models.Model):
    """An input (or a reply) moderation flagged: what was refused, why, and whose it was, for
    the project's managers and staff."""

    class Source(models.TextChoices):
        CHAT = "chat", gettext_lazy("Chat")
        API = "api", gettext_lazy("REST API")
        GATEWAY = "gateway", gettext_lazy("/v1 API")

    class Target(models.TextChoices):
        INPUT = "input", gettext_lazy("Input")
        REPLY = "reply", gettext_lazy("Reply")

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    conversation = models.ForeignKey(
        Conversation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    source = models.CharField(max_length=10, choices=Source.choices)
    target = models.CharField(max_length=10, choices=Target.choices, default=Target.INPUT)
    categories = models.JSONField(default=list)  # OpenAI's category names, or the list's own
    # "connection:<model>" (the provider's /v1/moderations) or "patterns" (the project's list).
    checked_by = models.CharField(max_length=200)
    excerpt = models.TextField(blank=True)  # the start of what was flagged
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ModerationFlagQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["project", "-created_at"], name="chat_modflag_project_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.source} {self.target}: {', '.join(self.categories)}"
