"""Staff views of conversations and messages."""

from django.contrib import admin

from .models import Conversation, Message


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = [
        "__str__", "project", "owner", "api_key", "model", "archived", "last_message_at",
    ]  # fmt: skip
    list_filter = ["archived", "model", "last_message_at"]
    list_select_related = ["project__organization", "owner", "api_key"]
    search_fields = ["title", "owner__email", "project__name", "project__organization__name"]
    raw_id_fields = ["project", "owner", "api_key"]
    readonly_fields = ["created_at", "updated_at"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "id", "conversation", "role", "state", "model", "prompt_tokens", "completion_tokens",
        "created_at",
    ]  # fmt: skip
    list_filter = ["role", "state", "model", "created_at"]
    list_select_related = ["conversation"]
    search_fields = ["content", "conversation__title", "conversation__owner__email"]
    raw_id_fields = ["conversation"]
    readonly_fields = ["created_at", "updated_at"]
