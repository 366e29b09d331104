"""Prometheus metrics on ``/metrics``, for whoever may scrape them and no one else.

Who may: a scraper with ``Authorization: Bearer <METRICS_TOKEN>`` (compared in constant time;
no token set, no scraper), or a signed-in staff member whose second factor is verified (when
they have one). Anyone else gets the 404 of a path that does not exist.

What: the process's own collectors (prometheus_client's process and platform metrics, the
database and cache metrics of django-prometheus where the profile uses its backends), the HTTP
requests (counted here, by ``core.logging.RequestLogMiddleware``: django-prometheus'
middleware would cost every request thread hops), every counter, gauge and histogram defined
with prometheus_client (``billing.metrics``), and the collectors named in
``settings.METRICS_COLLECTORS``, which read their figures at scrape time (outstanding holds,
from the database).

Several processes on one host (Daphne processes, Celery workers): set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory they all share, in the environment of each
before it starts (prometheus_client reads it at import). Each process then writes its samples
to files there, named by its process id, and a scrape of any web process sums them (gauges as
their ``multiprocess_mode`` says). Empty the directory whenever the whole set restarts, and
give it only to the long-running processes (a ``migrate`` would add its queries). Processes in
different containers must not share one (their process ids collide). Per-process collectors
(CPU, memory, open files) are not available in that mode: they cannot be added up.
"""

from __future__ import annotations

import atexit
import hmac
import os
from collections.abc import Iterable
from typing import Any, ClassVar

from django.conf import settings
from django.core.cache.backends.locmem import LocMemCache
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.cache import add_never_cache_headers
from django.utils.module_loading import import_string
from django_otp import user_has_device
from django_prometheus.cache.metrics import (
    django_cache_get_total,
    django_cache_hits_total,
    django_cache_misses_total,
)
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .cache import SharedRedisCache

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


if multiprocess_dir():
    # Live gauges (streams in flight) of a process that ends stop counting; one killed outright
    # leaves its files until the directory is emptied at the next restart.
    atexit.register(lambda: multiprocess.mark_process_dead(os.getpid()))  # type: ignore[no-untyped-call]


# --- HTTP requests (ours: django-prometheus' middleware hops to a thread for each hook) ---------

HTTP_REQUESTS = Counter(
    "gateway_http_requests_total",
    "HTTP requests answered, by surface (v1, api, pages, admin, ops), method and status.",
    ["surface", "method", "status"],
)
HTTP_DURATION = Histogram(
    "gateway_http_request_duration_seconds",
    "From a request's arrival to its response starting (a stream's headers), by surface.",
    ["surface"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SURFACES = (("/v1/", "v1"), ("/api/", "api"), ("/admin/", "admin"))
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_request(*, path: str, method: str | None, status: int, seconds: float) -> None:
    """One request answered (``core.logging.RequestLogMiddleware``): labels from fixed sets
    only, whatever the client sent."""
    surface = "ops" if path in OPS_PATHS else "pages"
    for prefix, name in SURFACES:
        if path.startswith(prefix):
            surface = name
            break
    method = method if method in METHODS else "other"
    HTTP_REQUESTS.labels(surface, method, str(status)).inc()
    HTTP_DURATION.labels(surface).observe(seconds)


class _ProcessRegistry(Collector):
    """Everything registered in this process (prometheus_client's default registry)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def scrape_registry() -> CollectorRegistry:
    """What one scrape reports: this process's metrics, or every process's through the
    multiprocess directory, and the scrape-time collectors of ``METRICS_COLLECTORS``."""
    # No describe(): names are not checked for clashes at registration (each comes from one
    # place), and nothing is collected twice.
    registry = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir()
    if path:
        multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ProcessRegistry())
    for dotted in getattr(settings, "METRICS_COLLECTORS", ()):
        registry.register(import_string(dotted)())
    return registry


def _bearer_token_valid(request: HttpRequest) -> bool:
    expected = getattr(settings, "METRICS_TOKEN", "")
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if not expected or scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def _is_verified_staff(request: HttpRequest) -> bool:
    user: Any = request.user
    if not (user.is_authenticated and user.is_active and user.is_staff):
        return False
    # A session still owing its second factor is no one here, as everywhere (OTPMiddleware
    # names the device that verified it; accounts.middleware holds the same rule for pages).
    return getattr(user, "otp_device", None) is not None or not user_has_device(user)


def may_scrape(request: HttpRequest) -> bool:
    return _bearer_token_valid(request) or _is_verified_staff(request)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``/metrics`` in Prometheus' text format (or OpenMetrics, when the scraper asks for it).
    Sync: collecting reads files and the database."""
    if request.method not in ("GET", "HEAD") or not may_scrape(request):
        raise Http404
    encoder, content_type = choose_encoder(request.META.get("HTTP_ACCEPT", ""))
    response = HttpResponse(encoder(scrape_registry()), content_type=content_type)
    add_never_cache_headers(response)
    return response


# --- cache metrics (django-prometheus' counters, on our backends) ------------------------------

_MISSING = object()


class _CountedGets:
    """``get`` counted as django-prometheus counts it: requests, hits and misses."""

    metrics_backend: ClassVar[str]

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        django_cache_get_total.labels(backend=self.metrics_backend).inc()
        value = super().get(key, _MISSING, version)  # type: ignore[misc]
        if value is _MISSING:
            django_cache_misses_total.labels(backend=self.metrics_backend).inc()
            return default
        django_cache_hits_total.labels(backend=self.metrics_backend).inc()
        return value


class MeteredRedisCache(_CountedGets, SharedRedisCache):
    """The production cache (``core.cache.SharedRedisCache``), its reads counted."""

    metrics_backend = "redis"


class MeteredLocMemCache(_CountedGets, LocMemCache):
    """The embedded profile's cache, its reads counted. (django-prometheus' own answers the
    default for a cached falsy value, a 0 or an empty string: not used.)"""

    metrics_backend = "locmem"
