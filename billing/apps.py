"""The ``billing`` app."""

from functools import partial
from typing import Any

from django.apps import AppConfig
from django.db.models.signals import pre_delete


def _merge_rollups_away(sender: type, instance: Any, *, field: str, **_: Any) -> None:
    # Deleting a project, user or key sets the ledger's references to it to NULL: its usage
    # rollups join the "none" group first, in the deletion's transaction (billing/rollups.py).
    # accounts does not know billing, so billing listens.
    from .rollups import rollups_merge_away

    rollups_merge_away(field=field, pk=instance.pk)


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model

        from accounts.models import ApiKey, Project
        from core.config_cache import invalidate_on_change

        from .models import Budget, ModelPrice, RateLimit

        # What every call reads (billing.services), kept in memory until one of these changes.
        invalidate_on_change(Budget, ModelPrice, RateLimit, ApiKey)

        for model, field in ((Project, "project"), (get_user_model(), "user"), (ApiKey, "api_key")):
            pre_delete.connect(
                partial(_merge_rollups_away, field=field),
                sender=model,
                weak=False,  # a partial: nothing else holds it
                dispatch_uid=f"billing.merge_rollups_away.{field}",
            )
