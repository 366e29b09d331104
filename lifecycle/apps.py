"""The ``lifecycle`` app: a person's data taken or erased, retention, an organization's end."""

from django.apps import AppConfig


class LifecycleConfig(AppConfig):
    name = "lifecycle"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from billing import services as billing_services
        from core.config_cache import invalidate_on_change

        from .models import OrganizationDeletion
        from .services import spend_guard

        # Which organizations are scheduled for deletion is kept in memory (every upstream
        # call is checked against it), until a deletion is asked for, cancelled or done.
        invalidate_on_change(OrganizationDeletion)
        # billing imports nothing above it: it runs the checks apps above it add, before it
        # holds anything for a call.
        billing_services.spend_guard_add(spend_guard)
