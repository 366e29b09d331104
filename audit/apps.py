"""The ``audit`` app: an append-only record of who changed money and access, and when."""

from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Every app records through accounts.signals.record_change (accounts cannot import
        # this app): this is the one receiver that writes the events.
        from accounts.signals import changed

        from .services import record_received

        changed.connect(record_received, dispatch_uid="audit.record")
