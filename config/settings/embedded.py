"""The embedded default: runs on a fresh machine with no servers and no environment variables.

SQLite in WAL mode, the in-memory channel layer, e-mail printed to the console, and Celery
with a broker on the local file system (the run command starts a worker beside Daphne).
"""

import secrets

from .base import *  # noqa: F403
from .base import VAR_DIR, env

DEBUG = env.bool("DEBUG", default=True)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])

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
        "NAME": VAR_DIR / "db.sqlite3",
        "OPTIONS": {
            # WAL lets readers run while a writer writes; IMMEDIATE makes write transactions
            # queue for the lock up front instead of failing half-way with "database is locked".
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
    }
}

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"

# Daphne serves static files through WhiteNoise straight from the source folders: no
# collectstatic step for the embedded profile.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

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

# Until the local model lands, `make run` starts the project's fake OpenAI-compatible upstream
# on this port and chats with it; set LLM_BASE_URL / OPENAI_API_KEY to use a real one.
FAKE_UPSTREAM_PORT = env.int("FAKE_UPSTREAM_PORT", default=8001)
LLM_BASE_URL = env.str("LLM_BASE_URL", default=f"http://127.0.0.1:{FAKE_UPSTREAM_PORT}/v1")
LLM_API_KEY = env.str("OPENAI_API_KEY", default="sk-local-fake-upstream")
LLM_MODELS = env.list("LLM_MODELS", default=["fake-gpt", "fake-gpt-mini"])
LLM_DEFAULT_MODEL = LLM_MODELS[0]
