"""Staff views of conversations, messages, personas and each project's chat settings."""

from django.contrib import admin

from .models import ChatSettings, Conversation, Folder, Message, Persona, RoomMember


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


@admin.register(RoomMember)
class RoomMemberAdmin(admin.ModelAdmin):
    """Who was chosen for a room shared with chosen members (its maker is not listed)."""

    list_display = ["conversation", "user", "added_at"]
    list_select_related = ["conversation", "user"]
    search_fields = ["conversation__title", "user__email", "user__name"]
    raw_id_fields = ["conversation", "user"]


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    list_display = [
        "tag", "name", "project", "model", "temperature", "top_p", "json_mode", "enabled",
        "preset", "updated_at",
    ]  # fmt: skip
    list_filter = ["enabled", "json_mode", "preset"]
    list_select_related = ["project__organization"]
    search_fields = ["tag", "name", "description", "project__name", "project__organization__name"]
    raw_id_fields = ["project"]
    readonly_fields = ["created_at", "updated_at"]


@admin.register(ChatSettings)
class ChatSettingsAdmin(admin.ModelAdmin):
    list_display = ["project", "summarize_after_tokens", "summary_persona"]
    list_select_related = ["project__organization", "summary_persona"]
    search_fields = ["project__name", "project__organization__name"]
    raw_id_fields = ["project", "summary_persona"]
