"""The ``gateway`` app: the OpenAI-compatible ``/v1`` endpoints."""

from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    default_auto_field = "django.db.models.BigAutoField"
