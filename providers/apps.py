"""The ``providers`` app: connections to model providers and the provider interface (``llm``)."""

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _ensure_default_connections(sender: AppConfig, **kwargs: Any) -> None:
    from .services import connections_ensure_defaults

    connections_ensure_defaults()


class ProvidersConfig(AppConfig):
    name = "providers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Every install has the built-in local model (and the server's OpenAI key, if any) as
        # soon as its tables exist: after migrate, and after a test flush.
        post_migrate.connect(_ensure_default_connections, sender=self)
