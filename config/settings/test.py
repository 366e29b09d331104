"""Test profile: fast hashing, in-memory everything, Celery tasks run in-process."""

import os

from .base import *  # noqa: F403
from .base import BASE_DIR, VAR_DIR, env

VAR_DIR.mkdir(exist_ok=True)

DEBUG = False
SECRET_KEY = "test-secret-key-not-for-production-use-0123456789abcdef"
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "var" / "test.sqlite3",
        # A file, not shared-cache memory: socket tests write from several threads, and
        # shared-cache SQLite fails those with "table is locked" instead of waiting.
        # One per process: two test runs on one machine must not share (and corrupt) it.
        "TEST": {"NAME": BASE_DIR / "var" / f"test-db-{os.getpid()}.sqlite3"},
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
    }
}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CHANNEL_LAYERS = {"default": {"BACKEND": "core.channel_layers.InMemoryChannelLayer"}}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
# Uploaded images (chat attachments) of test runs, apart from the development server's; tests
# that look at files point it at a temporary folder of their own.
MEDIA_ROOT = VAR_DIR / "test-media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_URL = "memory://"

# No console output of our own; Django's request logger keeps its filter, as in production.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": LOGGING_FILTERS,  # noqa: F405
    "loggers": {"django.request": DJANGO_REQUEST_LOGGER},  # noqa: F405
}

# Serve static files from the source folders: tests never run collectstatic.
SERVESTATIC_USE_FINDERS = True
SERVESTATIC_AUTOREFRESH = True

# A fixed test key (never used anywhere else); tests that rotate keys override it.
FIELD_ENCRYPTION_KEYS = ["3s_AUNnaaNuG5IwIAsFIlviEFWHg9LF_oecoJKLE5bc="]
# The fake upstream listens on 127.0.0.1; the address policy's tests set their own networks.
UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]
# The fake upstream's models have no price: they run unpriced, as before issue 17, except in
# the tests of that rule (tests/billing/test_unpriced.py sets it back to False).
BILLING_ALLOW_UNPRICED = True
CHAT_FLUSH_INTERVAL = 0.05
CHAT_DELTA_INTERVAL = 0  # every token its own frame, so tests can follow the stream exactly

# Tests run in one process: a change is seen at once (core.config_cache).
CONFIG_CACHE_CHECK_SECONDS = 0.0
# A test's transaction lives on its own connection: database work stays on the request's
# thread, where the test client runs it (core.db; the tests that need the threads set them).
DB_THREADS = env.int("DB_THREADS", default=0)
