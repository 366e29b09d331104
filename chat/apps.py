"""The ``chat`` app: conversations, rooms, personas, the live socket, the pages and REST API."""

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_save


def _seed_personas(sender: type, instance: Any, created: bool, raw: bool = False, **_: Any) -> None:
    # Every new project starts with the shipped personas (accounts does not know chat, so the
    # chat app listens rather than being called).
    if created and not raw:
        from .personas import personas_seed

        personas_seed(instance)


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.models import Project

        post_save.connect(_seed_personas, sender=Project, dispatch_uid="chat.seed_personas")
        # A project's moderation settings are kept in memory (chat.moderation.config_for).
        from core.config_cache import invalidate_on_change

        from .models import ChatSettings

        invalidate_on_change(ChatSettings)
        # Files go with their rows (a conversation, a message or a project deleted).
        from django.db.models.signals import post_delete

        from . import attachments
        from .models import Attachment

        post_delete.connect(
            attachments.attachment_files_delete,
            sender=Attachment,
            dispatch_uid="chat.attachment_files",
        )
