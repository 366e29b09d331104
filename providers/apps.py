"""The ``providers`` app: connections to model providers and the provider interface (``llm``)."""

from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.db.models.signals import post_migrate


def _ensure_default_connections(sender: AppConfig, **kwargs: Any) -> None:
    from .services import connections_ensure_defaults

    connections_ensure_defaults()


def _check_allowed_networks(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """A typo in UPSTREAM_ALLOWED_NETWORKS is told at start, not at the first provider call."""
    from .addresses import parse_networks

    try:
        parse_networks(settings.UPSTREAM_ALLOWED_NETWORKS)
    except ValueError as exc:
        return [checks.Error(str(exc), id="providers.E001")]
    return []


class ProvidersConfig(AppConfig):
    name = "providers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Every install has the built-in local model (and the server's OpenAI key, if any) as
        # soon as its tables exist: after migrate, and after a test flush.
        post_migrate.connect(_ensure_default_connections, sender=self)
        checks.register(_check_allowed_networks)
        from accounts.models import Project
        from core.config_cache import invalidate_on_change

        from .models import ConnectionModel, ProjectModel, ProviderConnection

        # Which connection serves a project's model (specs.spec_for), kept until these change.
        invalidate_on_change(ProviderConnection, ConnectionModel, ProjectModel, Project)
