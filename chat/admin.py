"""Staff views of conversations, messages, personas and each project's chat settings; of tool
calls, tool servers, attachments and moderation flags (what the chat records is read-only here:
it is what happened)."""

from typing import Any

from django import forms
from django.contrib import admin
from django.db import models
from django.http import HttpRequest

from accounts.signals import AuditedAdmin

from . import moderation
from .models import (
    Attachment,
    ChatSettings,
    Conversation,
    Folder,
    Message,
    ModerationFlag,
    Persona,
    RoomMember,
    ToolCall,
    ToolServer,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Recorded by the chat as it happened: staff look, nobody edits or adds."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ToolCallInline(admin.TabularInline):
    model = ToolCall
    extra = 0
    can_delete = False
    readonly_fields = [
        "round", "call_id", "name", "arguments", "result", "is_error", "duration_ms",
    ]  # fmt: skip
    fields = list(readonly_fields)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = [
        "__str__", "project", "owner", "sharing", "api_key", "model", "archived",
        "last_message_at",
    ]  # fmt: skip
    list_filter = ["sharing", "archived", "model", "last_message_at"]
    list_select_related = ["project__organization", "owner", "api_key"]
    search_fields = ["title", "owner__email", "project__name", "project__organization__name"]
    raw_id_fields = ["project", "owner", "api_key", "folder"]
    readonly_fields = ["created_at", "updated_at"]


@admin.register(Folder)
class FolderAdmin(admin.ModelAdmin):
    """A person's sidebar folders (their chats point at them)."""

    list_display = ["name", "owner", "project", "created_at"]
    list_select_related = ["owner", "project__organization"]
    search_fields = ["name", "owner__email", "project__name"]
    raw_id_fields = ["project", "owner"]
    readonly_fields = ["created_at"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "id", "conversation", "role", "state", "model", "prompt_tokens", "completion_tokens",
        "created_at",
    ]  # fmt: skip
    list_filter = ["role", "state", "model", "created_at"]
    list_select_related = ["conversation"]
    search_fields = ["content", "conversation__title", "conversation__owner__email"]
    # parent: a select of every message would be the whole table.
    raw_id_fields = ["conversation", "parent", "author", "persona"]
    readonly_fields = ["created_at", "updated_at"]
    inlines = [ToolCallInline]


@admin.register(RoomMember)
class RoomMemberAdmin(admin.ModelAdmin):
    """Who was chosen for a room shared with chosen members (its maker is not listed)."""

    list_display = ["conversation", "user", "added_at"]
    list_select_related = ["conversation", "user"]
    search_fields = ["conversation__title", "user__email", "user__name"]
    raw_id_fields = ["conversation", "user"]


@admin.register(Persona)
class PersonaAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_actions = {
        "add": "persona.created",
        "change": "persona.updated",
        "delete": "persona.deleted",
    }
    list_display = [
        "tag", "name", "project", "model", "temperature", "top_p", "json_mode", "enabled",
        "preset", "updated_at",
    ]  # fmt: skip
    list_filter = ["enabled", "json_mode", "preset"]
    list_select_related = ["project__organization"]
    search_fields = ["tag", "name", "description", "project__name", "project__organization__name"]
    raw_id_fields = ["project"]
    readonly_fields = ["created_at", "updated_at"]


class ChatSettingsForm(forms.ModelForm):
    def clean_moderation_patterns(self) -> str:
        patterns: str = self.cleaned_data["moderation_patterns"]
        try:
            moderation.parse_patterns(patterns)
        except moderation.PatternError as error:
            raise forms.ValidationError(error.message) from None
        return patterns


@admin.register(ChatSettings)
class ChatSettingsAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_actions = dict.fromkeys(["add", "change"], "moderation.changed")
    audit_fields = ("moderation_enabled", "moderation_check_replies", "moderation_patterns")
    form = ChatSettingsForm
    list_display = [
        "project", "summarize_after_tokens", "summary_persona", "moderation_enabled",
        "moderation_check_replies",
    ]  # fmt: skip
    list_filter = ["moderation_enabled", "moderation_check_replies"]
    list_select_related = ["project__organization", "summary_persona"]
    search_fields = ["project__name", "project__organization__name"]
    raw_id_fields = ["project", "summary_persona"]
    fieldsets = [
        (None, {"fields": ["project"]}),
        ("Summaries", {"fields": ["summarize_after_tokens", "summary_persona"]}),
        (
            "Moderation",
            {"fields": ["moderation_enabled", "moderation_check_replies", "moderation_patterns"]},
        ),
    ]

    def save_model(self, request: HttpRequest, obj: ChatSettings, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        moderation.forget_config()  # kept in memory by every process until told

    def delete_model(self, request: HttpRequest, obj: ChatSettings) -> None:
        super().delete_model(request, obj)
        moderation.forget_config()


@admin.register(ToolCall)
class ToolCallAdmin(ReadOnlyAdmin):
    """Each tool call a reply made (also shown on its message)."""

    list_display = ["name", "call_id", "message", "round", "is_error", "duration_ms", "created_at"]
    list_filter = ["is_error", "name", "created_at"]
    list_select_related = ["message"]
    search_fields = ["name", "call_id", "arguments"]
    raw_id_fields = ["message"]


@admin.register(ToolServer)
class ToolServerAdmin(admin.ModelAdmin):
    """A project's MCP servers. Their headers are stored encrypted and never shown: only
    their names."""

    list_display = ["name", "project", "url", "enabled", "listed_at", "has_error"]
    list_filter = ["enabled"]
    list_select_related = ["project__organization"]
    search_fields = ["name", "url", "project__name", "project__organization__name"]
    raw_id_fields = ["project", "created_by"]
    # headers_encrypted is not editable (so never in a form) and is listed nowhere.
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    readonly_fields = ["header_names", "tools", "listed_at", "last_error", "created_at",
                       "updated_at"]  # fmt: skip

    @admin.display(boolean=True, description="error")
    def has_error(self, server: ToolServer) -> bool:
        return bool(server.last_error)


@admin.register(Attachment)
class AttachmentAdmin(ReadOnlyAdmin):
    list_display = ["name", "project", "conversation", "message", "content_type", "size",
                    "created_at"]  # fmt: skip
    list_filter = ["content_type", "created_at"]
    list_select_related = ["project__organization", "conversation"]
    search_fields = ["name", "sha256", "project__name", "uploaded_by__email"]
    raw_id_fields = ["project", "conversation", "message", "uploaded_by", "api_key"]


@admin.register(ModerationFlag)
class ModerationFlagAdmin(ReadOnlyAdmin):
    """What moderation flagged: appended by the chat and the gateway, never edited here."""

    list_display = ["created_at", "project", "source", "target", "categories", "checked_by",
                    "user", "api_key"]  # fmt: skip
    list_filter = ["source", "target", "project", "checked_by"]
    list_select_related = ["project__organization", "user", "api_key"]
    search_fields = ["excerpt", "user__email", "project__name"]
    raw_id_fields = ["project", "conversation", "message", "user", "api_key"]
    date_hierarchy = "created_at"
