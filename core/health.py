"""``/healthz`` (the process is alive) and ``/readyz`` (it can serve: its database, cache,
channel layer and Celery broker answer), for load balancers and orchestrators.

Both are served outside the page machinery (``config.handlers``: no sessions, CSRF, language,
two-factor steps, login lockout, host check or HTTPS redirect), so a load balancer reaching a
process by its address gets an answer. ``/healthz`` touches nothing. ``/readyz`` runs
django-health-check's checks (its v4 API: ``HealthCheck.get_result``, which bounds each check
by its timeout and turns any failure into a short reason) at once: 200 when all pass, 503
naming each check that failed and why. Reasons never carry an address or a password.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
import uuid
from collections.abc import Iterator
from typing import Any

import structlog
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.cache import add_never_cache_headers

# django-health-check ships no types (no py.typed): its classes are Any here.
from health_check.base import HealthCheck
from health_check.checks import Cache, Database
from health_check.exceptions import ServiceUnavailable
from health_check.views import HealthCheckView
from kombu import Connection

log = structlog.get_logger(__name__)

PING = {"type": "health.ping"}


@dataclasses.dataclass
class ChannelLayer(HealthCheck):  # type: ignore[misc]
    """The channel layer carries a message: in memory, a send and its receive; on Redis, a
    publish (the command every group send uses) to a channel no one listens on — a round trip
    through pub/sub would leave a subscription behind on every probe."""

    timeout: datetime.timedelta = dataclasses.field(
        default=datetime.timedelta(seconds=3), repr=False
    )

    async def run(self) -> None:
        layer: Any = get_channel_layer()
        if layer is None:
            raise ServiceUnavailable("No channel layer is configured.")
        try:
            if isinstance(layer, InMemoryChannelLayer):
                channel = await layer.new_channel("health.")
                await layer.send(channel, PING)
                await layer.receive(channel)
            else:
                await layer.send(f"health.{uuid.uuid4().hex}", PING)
        except Exception as exc:
            raise ServiceUnavailable(
                f"The channel layer did not answer ({type(exc).__name__})."
            ) from exc


@dataclasses.dataclass
class Broker(HealthCheck):  # type: ignore[misc]
    """Celery's broker takes connections (``CELERY_BROKER_URL``); on the file system (the
    embedded profile) its folders are there and writable. Whether workers run is not asked:
    a web process serves without them, and tasks wait in the broker."""

    timeout: datetime.timedelta = dataclasses.field(
        default=datetime.timedelta(seconds=3), repr=False
    )

    def run(self) -> None:
        url = settings.CELERY_BROKER_URL
        options: dict[str, Any] = dict(getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}))
        if url.startswith("filesystem://"):
            self._check_folders(options)
            return
        seconds = max(1, int(self.timeout.total_seconds()))
        try:
            with Connection(url, connect_timeout=seconds, transport_options=options) as broker:
                broker.ensure_connection(max_retries=1, interval_start=0, timeout=seconds)
        except Exception as exc:  # kombu's, the transport's own, a socket's: all say "down"
            raise ServiceUnavailable(f"The broker did not answer ({type(exc).__name__}).") from exc

    @staticmethod
    def _check_folders(options: dict[str, Any]) -> None:
        for key in ("data_folder_in", "data_folder_out"):
            folder = options.get(key)
            if not folder or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                raise ServiceUnavailable(f"The broker's {key} is missing or not writable.")


def readiness_checks() -> dict[str, HealthCheck]:
    """What /readyz asks, by the name it answers with."""
    return {
        "database": Database(),
        "cache": Cache(),
        "channel_layer": ChannelLayer(),
        "broker": Broker(),
    }


async def healthz(request: HttpRequest) -> HttpResponse:
    """Alive: the process answers. Nothing else is touched, so a failing database never gets
    a healthy process restarted."""
    response = JsonResponse({"status": "ok"})
    add_never_cache_headers(response)
    return response


class ReadinessView(HealthCheckView):  # type: ignore[misc]
    """Every readiness check at once; JSON whatever the client accepts. (``manage.py
    health_check readyz --no-http`` runs the same checks in the command's own process.)"""

    def get_checks(self) -> Iterator[HealthCheck]:
        yield from readiness_checks().values()

    async def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        checks = readiness_checks()
        with self.get_executor() as executor:
            results = await asyncio.gather(*(c.get_result(executor) for c in checks.values()))
        failed = {
            name: str(result.error)
            for name, result in zip(checks, results, strict=True)
            if result.error is not None
        }
        body = {
            "status": "unavailable" if failed else "ok",
            "checks": {
                name: {
                    "status": "fail" if name in failed else "ok",
                    **({"error": failed[name]} if name in failed else {}),
                    "ms": round(result.time_taken * 1000, 1),
                }
                for name, result in zip(checks, results, strict=True)
            },
        }
        if failed:
            log.warning("not_ready", failed=failed)
        return JsonResponse(body, status=503 if failed else 200)
