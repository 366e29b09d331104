"""The ``chat`` app: conversations, messages, the live socket, the pages and REST API for them."""

from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"
