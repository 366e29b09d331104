"""The Celery app. Tasks live in each app's tasks.py and are found by autodiscovery."""

import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging
from django_structlog.celery.steps import DjangoStructLogInitStep

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.embedded")

app = Celery("gateway")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# A task binds the request id of whoever enqueued it (django-structlog), so its log lines and
# its upstream calls' lines carry it.
app.steps["worker"].add(DjangoStructLogInitStep)


@setup_logging.connect
def keep_django_logging(**kwargs: Any) -> None:
    """Workers log as the web processes do (settings.LOGGING: JSON lines in production):
    with a receiver here, Celery leaves logging alone instead of putting its own format on
    the root logger."""
