"""The ``core`` app: shared infrastructure (see the package docstring)."""

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    default_auto_field = "django.db.models.BigAutoField"
