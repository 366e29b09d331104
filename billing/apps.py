"""The ``billing`` app."""

from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.models import ApiKey
        from core.config_cache import invalidate_on_change

        from .models import Budget, ModelPrice, RateLimit

        # What every call reads (billing.services), kept in memory until one of these changes.
        invalidate_on_change(Budget, ModelPrice, RateLimit, ApiKey)
