"""The ``lifecycle`` app: a person's data taken or erased, retention, an organization's end."""

from django.apps import AppConfig


class LifecycleConfig(AppConfig):
    name = "lifecycle"
    default_auto_field = "django.db.models.BigAutoField"
