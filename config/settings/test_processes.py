"""The production profile as the multi-process tests run it (tests/processes.py starts Daphne
and Celery with it, on the test run's PostgreSQL database and one Redis).

Everything production reads from the environment is read here the same way, and the test
passes it: ``DATABASE_URL`` (pytest-django's test database), ``REDIS_URL`` (the channel layer,
the cache and the broker), ``SECRET_KEY`` (the test's: the sessions it makes must be valid
here), ``FIELD_ENCRYPTION_KEYS`` (the test's: it encrypted the connections' keys),
``ALLOWED_HOSTS`` and ``EMAIL_URL``. What differs from production, and why, is below; a
module rather than more environment because production has no switch for most of it.
"""

from .base import env
from .production import *  # noqa: F403

# Plain HTTP on 127.0.0.1: no redirect to HTTPS (the cookies' Secure flag stays; the test's
# clients send the session cookie themselves).
SECURE_SSL_REDIRECT = False
# No collectstatic in a test run: the files from the source folders, unhashed (production's
# manifest storage needs collectstatic first: config.startup).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
SERVESTATIC_USE_FINDERS = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# This run's own names in the shared Redis: the channel layer's, the cache's and the queue's.
# A queue of its own also keeps out the tasks an earlier run's killed worker left unacknowledged.
_PREFIX = env.str("TEST_PROCESSES_PREFIX")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": REDIS_CHANNEL_LAYER,  # noqa: F405
        "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{_PREFIX}.asgi"},  # noqa: F405
    }
}
CACHES["default"]["KEY_PREFIX"] = _PREFIX  # noqa: F405
CELERY_TASK_DEFAULT_QUEUE = _PREFIX
BATCH_QUEUE = _PREFIX
CELERY_TASK_ROUTES = {"gateway.tasks.run_batch": {"queue": _PREFIX}}

# A task whose worker was killed is delivered again VISIBILITY seconds after it was taken, and
# the broker looks for such tasks every second (production: an hour, and every ~100 s). Longer
# than the tests take to see a task running and kill its worker.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("TEST_PROCESSES_VISIBILITY", default=10),
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
# The stale-stream sweep every second, on replies stale after a few seconds without a write
# (a live reply writes every CHAT_HEARTBEAT_INTERVAL at least).
CELERY_BEAT_SCHEDULE = {
    **CELERY_BEAT_SCHEDULE,  # noqa: F405
    "expire-stale-streams": {**CELERY_BEAT_SCHEDULE["expire-stale-streams"], "schedule": 1.0},  # noqa: F405
}
CHAT_STALE_STREAM_SECONDS = 6
CHAT_HEARTBEAT_INTERVAL = 1.0
# Every token its own frame, written at once: the tests follow the stream exactly.
CHAT_DELTA_INTERVAL = 0
CHAT_FLUSH_INTERVAL = 0.05

# As in the test profile: the fake upstream listens on 127.0.0.1 and its models have no price
# unless a test sets one; prices and budgets the test writes are seen at once.
UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]
BILLING_ALLOW_UNPRICED = True
CONFIG_CACHE_SECONDS = 0.0
CONFIG_CACHE_CHECK_SECONDS = 0.0
