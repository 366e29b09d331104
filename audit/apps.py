"""The ``audit`` app: an append-only record of who changed money and access, and when."""

from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"
