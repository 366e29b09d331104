"""The embedded default: runs on a fresh machine with no servers and no environment variables.

SQLite in WAL mode, the in-memory channel layer, e-mail printed to the console, and Celery
with a broker on the local file system (the run command starts a worker beside Daphne).
"""

import secrets

from .base import *  # noqa: F403
from .base import VAR_DIR, env

DEBUG = env.bool("DEBUG", default=True)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
# A model server on this machine (Ollama on localhost:11434) is what the embedded profile is
# for; private networks still need listing.
UPSTREAM_ALLOWED_NETWORKS = env.list(
    "UPSTREAM_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"]
)

VAR_DIR.mkdir(exist_ok=True)


def _development_secret_key() -> str:
    # Generated once and kept beside the database, so sessions survive restarts and no key is
    # ever committed.
    path = VAR_DIR / "dev-secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env.str("SECRET_KEY", default="") or _development_secret_key()

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": env.str("SQLITE_PATH", default="") or VAR_DIR / "db.sqlite3",
        "OPTIONS": {
            # WAL lets readers run while a writer writes; IMMEDIATE makes write transactions
            # queue for the lock up front instead of failing half-way with "database is locked".
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
    }
}

# One thread for the gateway's database work: SQLite has one writer at a time, and queueing
# the writes in order here beats each waiting in SQLite's busy handler (core.db).
DB_THREADS = env.int("DB_THREADS", default=1)

CHANNEL_LAYERS = {"default": {"BACKEND": "core.channel_layers.InMemoryChannelLayer"}}

# Django's local-memory cache, its reads counted for /metrics (core.metrics).
CACHES = {"default": {"BACKEND": "core.metrics.MeteredLocMemCache"}}

EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"

# Daphne serves static files through ServeStatic straight from the source folders: no
# collectstatic step for the embedded profile.
SERVESTATIC_USE_FINDERS = True
SERVESTATIC_AUTOREFRESH = DEBUG

_broker_dir = VAR_DIR / "celery-broker"
for _sub in ("out", "processed", "control"):
    (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
CELERY_BROKER_URL = "filesystem://"
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "data_folder_in": str(_broker_dir / "out"),
    "data_folder_out": str(_broker_dir / "out"),
    "processed_folder": str(_broker_dir / "processed"),
    "control_folder": str(_broker_dir / "control"),
    "store_processed": False,
}


def _development_encryption_key() -> str:
    # Like the secret key: generated once, kept in var/, never committed.
    from cryptography.fernet import Fernet

    path = VAR_DIR / "field-encryption-key"
    if not path.exists():
        path.write_text(Fernet.generate_key().decode())
        path.chmod(0o600)
    return path.read_text().strip()


FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS", default=[]) or [
    _development_encryption_key()
]
