"""Production: everything comes from the environment (see the README's production section)."""

import os

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import LOG_LEVEL, core_logging, env

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Required: provider keys cannot be stored without them (comma-separated, newest first).
FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS")

DATABASES = {"default": env.db("DATABASE_URL")}
# 0: under ASGI each request's sync code runs on a thread of its own, and a connection kept by
# each of those threads ran PostgreSQL out of connection slots under load (benchmarks/gateway.py).
# The gateway's and the chat's database work keeps its DB_THREADS connections (core.db); put a
# pooler (PgBouncer) in front for the rest.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# django-prometheus' PostgreSQL backend: Django's own, its connections and queries counted for
# /metrics (a counter and a timer per statement: microseconds).
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["ENGINE"] = "django_prometheus.db.backends.postgresql"

REDIS_URL = env.str("REDIS_URL")
CHANNEL_LAYERS = {
    "default": {"BACKEND": REDIS_CHANNEL_LAYER, "CONFIG": {"hosts": [REDIS_URL]}},  # noqa: F405
}
CACHES = {
    "default": {
        # Django's Redis cache, one connection pool per process (see core.cache), its reads
        # counted for /metrics (core.metrics).
        "BACKEND": "core.metrics.MeteredRedisCache",
        "LOCATION": REDIS_URL,
    }
}
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)

# EMAIL_URL, e.g. smtp+tls://user:password@smtp.example.com:587
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
SERVER_EMAIL = env.str("SERVER_EMAIL", default=DEFAULT_FROM_EMAIL)  # noqa: F405

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "servestatic.storage.CompressedManifestStaticFilesStorage"},
}

# Logs as JSON lines, one object per line (core.logging); LOG_JSON=false for readable ones.
LOGGING = core_logging.logging_config(
    json_lines=env.bool("LOG_JSON", default=True), level=LOG_LEVEL
)

# /metrics (core.metrics): a scraper's Bearer token, long enough not to be guessed.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
if METRICS_TOKEN and len(METRICS_TOKEN) < 32:
    raise ImproperlyConfigured(
        "METRICS_TOKEN must be at least 32 characters, e.g. the output of "
        "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`."
    )
# Daphne processes and Celery workers of one host report together through this directory
# (prometheus_client's multiprocess mode: set in every process's environment, emptied at each
# restart of them all; see core.metrics).
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _metrics_dir and not os.path.isdir(_metrics_dir):
    raise ImproperlyConfigured(
        f"PROMETHEUS_MULTIPROC_DIR ({_metrics_dir}) is not a directory: create it (empty) "
        "before starting the processes."
    )

if not DEBUG:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    # Load balancers and Prometheus reach a process by its address over plain HTTP
    # (config.handlers serves these paths without the host check as well).
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    # Behind a TLS-terminating proxy that sets X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    LANGUAGE_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
