"""Settings shared by every profile.

Profiles: ``embedded`` (the default: no servers, no environment), ``production`` (everything
from the environment) and ``test``. Each profile module imports this one and overrides what it
must; anything read from the environment goes through django-environ here or in the profile.
"""

from datetime import timedelta
from pathlib import Path

import django_stubs_ext
import environ

from core import logging as core_logging

# Django's generic classes (ModelAdmin[Model], QuerySet[Model], forms.ModelForm[Model]) take a
# type argument at run time as they do for mypy.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent.parent
# Runtime state of the embedded profile (database, Celery's file broker, the dev secret key).
VAR_DIR = BASE_DIR / "var"

env = environ.Env()

DEBUG = False
SECRET_KEY: str  # set by each profile
ALLOWED_HOSTS: list[str] = []

INSTALLED_APPS = [
    # Daphne first so that `runserver` serves ASGI (HTTP and WebSocket) too.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    # Two-factor authentication: TOTP apps and recovery codes (accounts/two_factor.py).
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "csp",
    # /healthz and /readyz (core.health), and its `manage.py health_check readyz` command.
    "health_check",
    # The request id carried into Celery tasks (DJANGO_STRUCTLOG_CELERY_ENABLED below).
    "django_structlog",
    # The project's apps, in the order of their layers (each imports only those above it).
    "core",
    "accounts",
    "providers",
    "audit",
    "billing",
    "chat",
    "gateway",
    "lifecycle",
]

MIDDLEWARE = [
    # First: every request's id and its one log line (core.logging), async, no thread hop.
    "core.logging.RequestLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files and /v1 have handlers of their own, with less middleware (config.handlers).
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The language of the browser (Accept-Language), or the one chosen with set_language.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who changed what, from where: the request an audit event comes from (audit, no hop).
    "audit.middleware.request_context",
    # A signed-in person's own language choice wins over the browser's (accounts.User.language).
    "accounts.middleware.UserLanguageMiddleware",
    # request.user.otp_device: the device that verified this session (None until one did);
    # then a session of someone with a device counts only once it is verified.
    "django_otp.middleware.OTPMiddleware",
    "accounts.middleware.TwoFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a lockout signalled by the backend into a response.
    "axes.middleware.AxesMiddleware",
]

# Content-Security-Policy: everything from our own origin, and no inline script or style
# ('unsafe-inline' / 'unsafe-eval' would let an injected tag run). Pages keep every script and
# style in static files; data for scripts travels in json_script blocks or data-* attributes,
# which the browser never executes (tests/test_csp.py walks the templates to keep it so).
# connect-src 'self' covers the chat socket too (CSP3: 'self' matches ws:/wss: on our host).
# img-src allows data: for the icon placeholder and the Swagger UI's inline SVG icons.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    },
}

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
# The channel layer over Redis (production, and the tests marked ``redis``). Redis pub/sub, not
# channels_redis' list-based core layer: with hundreds of replies streaming at once the core
# layer's per-channel capacity (100) silently dropped deltas ("channels over capacity") and its
# blocking reads timed out on a busy event loop (benchmarks/gateway.py, 100 and 500
# conversations); a group send here is one PUBLISH, and delivery within the process is a queue.
REDIS_CHANNEL_LAYER = "channels_redis.pubsub.RedisPubSubChannelLayer"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "billing.context_processors.budget_alerts",
            ],
        },
    },
]

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    # django-axes counts failures and refuses locked-out logins before the real check runs.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Login throttling: five wrong passwords for one e-mail from one address lock that pair out.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("AXES_COOLOFF_MINUTES", default=15))
# Keyed on the pair so a stranger cannot lock a victim out by guessing at their e-mail.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_USERNAME_FORM_FIELD = "username"
AXES_USERNAME_CALLABLE = "accounts.lockout.lockout_username"
AXES_VERBOSE = False

# Two-factor authentication (django-otp). The issuer names us in authenticator apps. A wrong
# code locks the device for factor * 2^(failures - 1) seconds (1, 2, 4 … 512 s after ten), so
# guessing six digits is hopeless; a right code resets the count.
OTP_TOTP_ISSUER = "LLM Gateway"
OTP_TOTP_THROTTLE_FACTOR = 1
OTP_STATIC_THROTTLE_FACTOR = 1
# Staff see who has which device in the admin, never a TOTP secret or its QR code (whoever has
# it can make the person's codes) nor the recovery code digests.
OTP_ADMIN_HIDE_SENSITIVE_DATA = True

# English and Korean (locale/<code>/LC_MESSAGES/django.po; the .mo files are compiled by the
# build: `pybabel compile -D django -d locale`). The language is the person's choice
# (accounts.User.language), else the set_language cookie, else the browser's Accept-Language.
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("ko", "한국어")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="LLM Gateway <noreply@localhost>")

# How long an invitation link to an organization stays valid.
INVITATION_TTL = timedelta(days=env.int("INVITATION_TTL_DAYS", default=7))
# How long the link that confirms a new account's e-mail address works.
EMAIL_VERIFICATION_TTL = timedelta(days=env.int("EMAIL_VERIFICATION_TTL_DAYS", default=3))

# Celery: tasks are enqueued with transaction.on_commit so a worker never sees a rolled-back row.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# Batch lines run at low priority (gateway/tasks.py): in slices, queued behind other work, and
# on their own queue when this names one that dedicated workers consume (celery -Q batches).
BATCH_QUEUE = env.str("CELERY_BATCH_QUEUE", default="celery")
CELERY_TASK_ROUTES = {"gateway.tasks.run_batch": {"queue": BATCH_QUEUE}}
# On Redis (production), a task a worker took and never acknowledged (the late-acknowledged
# ones: titles, summaries, alerts, statements, batches, whose worker was killed) goes back on
# the queue this long after it was taken; kombu looks for such tasks every ~100 s. Longer than
# any task runs, or one still running is delivered twice (they are safe to run twice, but it
# costs). The embedded profile's file-system broker has options of its own.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
}

# Logs (core.logging): every logger through one formatter, JSON lines (LOG_JSON, the production
# profile's default) or readable ones, with the request id of the request, socket frame or task
# they belong to. Expected refusals (401/403/404/429) are one line without a traceback.
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING_FILTERS = core_logging.LOGGING_FILTERS
DJANGO_REQUEST_LOGGER = core_logging.DJANGO_REQUEST_LOGGER
LOGGING = core_logging.logging_config(
    json_lines=env.bool("LOG_JSON", default=False), level=LOG_LEVEL
)
core_logging.configure_structlog()
# django-structlog: a task enqueued during a request (or a socket frame) carries its request id
# to the worker, which binds it while the task runs (the worker's boot step: config.celery).
DJANGO_STRUCTLOG_CELERY_ENABLED = True

# Prometheus metrics on /metrics (core.metrics): for a scraper sending this token as a Bearer
# token, or a staff session; anyone else gets 404. Empty: staff only. Several processes on one
# host: PROMETHEUS_MULTIPROC_DIR (see core.metrics and the README).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# Collectors read at scrape time (each one cheap query).
METRICS_COLLECTORS = ["billing.metrics.OutstandingHolds"]

# --- Chat and the providers ------------------------------------------------------------------
# Provider keys are encrypted with these Fernet keys, newest first (see chat/crypto.py).
FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS", default=[])
# When set, every organization may use a shared OpenAI connection holding this key.
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
# The embedded local model: llama.cpp threads and context (0: the model's own, 8,192).
LOCAL_MODEL_THREADS = env.int("LOCAL_MODEL_THREADS", default=0)
LOCAL_MODEL_CONTEXT = env.int("LOCAL_MODEL_CONTEXT", default=0)
# The address policy (providers/addresses.py): requests made for a tenant (provider
# connections; later tool servers, webhooks) go to public addresses only, plus these networks
# (comma-separated CIDRs, e.g. 10.0.0.0/8,::1/128). Loopback, private, link-local, multicast
# and cloud metadata addresses are refused unless listed here.
UPSTREAM_ALLOWED_NETWORKS = env.list("UPSTREAM_ALLOWED_NETWORKS", default=[])

CHAT_MAX_MESSAGE_CHARS = env.int("CHAT_MAX_MESSAGE_CHARS", default=32_000)
# Tokens closer together than this (seconds) go to the browser in one frame (0: every token).
CHAT_DELTA_INTERVAL = env.float("CHAT_DELTA_INTERVAL", default=0.05)
# A streaming reply is written to the database at most this often (seconds), not per token.
CHAT_FLUSH_INTERVAL = env.float("CHAT_FLUSH_INTERVAL", default=1.0)
# The reply's cap when a conversation sets no max_tokens (sent upstream, and kept free in the
# context window).
CHAT_DEFAULT_REPLY_TOKENS = env.int("CHAT_DEFAULT_REPLY_TOKENS", default=1024)
# A streaming reply is written at least this often (seconds) even when no token arrives, so that
# one not written for CHAT_STALE_STREAM_SECONDS is known to belong to a process that died.
CHAT_HEARTBEAT_INTERVAL = env.float("CHAT_HEARTBEAT_INTERVAL", default=10.0)
CHAT_STALE_STREAM_SECONDS = env.int("CHAT_STALE_STREAM_SECONDS", default=30)
# After a stop, a reply still "streaming" and idle this long (seconds) has no task left to stop
# it (its process died): it is closed as stopped right away instead of waiting to go stale.
CHAT_ORPHAN_GRACE = env.float("CHAT_ORPHAN_GRACE", default=3.0)
# Plain messages one person may post to one room per minute (bot calls have the project's
# rate limits and budgets): a flood is refused, not stored.
CHAT_ROOM_MESSAGES_PER_MINUTE = env.int("CHAT_ROOM_MESSAGES_PER_MINUTE", default=30)
# Persona calls one member may make in a project's rooms per minute, on top of the project's
# (and their own budget's) limits: one person cannot spend the room's share of the rate limit.
CHAT_MEMBER_PERSONA_CALLS_PER_MINUTE = env.int("CHAT_MEMBER_PERSONA_CALLS_PER_MINUTE", default=10)
# Messages shown per page of a conversation; older ones are a link away.
CHAT_PAGE_SIZE = 50

# Tools: a reply makes at most CHAT_TOOL_MAX_ROUNDS rounds of tool calls and spends at most
# CHAT_TOOL_LOOP_SECONDS on them in all; a built-in tool call may take CHAT_TOOL_TIMEOUT seconds
# (an MCP server's, its own timeout).
CHAT_TOOL_MAX_ROUNDS = env.int("CHAT_TOOL_MAX_ROUNDS", default=5)
CHAT_TOOL_LOOP_SECONDS = env.float("CHAT_TOOL_LOOP_SECONDS", default=120.0)
CHAT_TOOL_TIMEOUT = env.float("CHAT_TOOL_TIMEOUT", default=10.0)
# Calls one round may make (run at once); the model is told the rest were not run.
CHAT_TOOL_MAX_CALLS = env.int("CHAT_TOOL_MAX_CALLS", default=8)
# What a tool may answer (characters): longer results are cut, and the model is told so.
CHAT_TOOL_RESULT_CHARS = env.int("CHAT_TOOL_RESULT_CHARS", default=16_000)

# Images attached to messages (PNG, JPEG, WebP, GIF), stored through the default storage under
# MEDIA_ROOT (never served as static files: only through the view that checks who may read).
MEDIA_ROOT = env.path("MEDIA_ROOT", default=VAR_DIR / "media")
CHAT_IMAGE_MAX_BYTES = env.int("CHAT_IMAGE_MAX_BYTES", default=5 * 1024 * 1024)
CHAT_IMAGE_MAX_COUNT = env.int("CHAT_IMAGE_MAX_COUNT", default=4)
CHAT_IMAGE_MAX_PIXELS = env.int("CHAT_IMAGE_MAX_PIXELS", default=40_000_000)

# Moderation (per project, off by default): the model asked of a connection's /v1/moderations.
MODERATION_MODEL = env.str("MODERATION_MODEL", default="omni-moderation-latest")
# /v1/files: the largest upload, and the most lines a batch's input may have.
GATEWAY_FILE_MAX_BYTES = env.int("GATEWAY_FILE_MAX_BYTES", default=100 * 1024 * 1024)
GATEWAY_BATCH_MAX_LINES = env.int("GATEWAY_BATCH_MAX_LINES", default=50_000)
# How /v1 reaches the projects' moderation (the gateway does not import the chat app).
GATEWAY_INPUT_MODERATION = "chat.moderation.gateway_moderation"

# --- Billing ---------------------------------------------------------------------------------
# How long money stays set aside for a call in flight before it is given back (a process that
# died mid-call cannot hold a budget forever).
BILLING_HOLD_SECONDS = env.int("BILLING_HOLD_SECONDS", default=15 * 60)
# A model with no price runs (unbudgeted, at no cost, its rows "unpriced") only where staff
# allowed it on its connection (ConnectionModel.unpriced_allowed); True: every such model.
BILLING_ALLOW_UNPRICED = env.bool("BILLING_ALLOW_UNPRICED", default=False)
# Prices, budgets, rate limits and model routes are kept in each process's memory between
# changes (core.config_cache): other processes see a change within CONFIG_CACHE_CHECK_SECONDS
# (through the shared cache), and nothing is kept longer than CONFIG_CACHE_SECONDS.
# Threads that run the gateway's database work and keep their connections (core.db); 0: each
# request's own thread, as Django does.
DB_THREADS = env.int("DB_THREADS", default=8)
CONFIG_CACHE_SECONDS = env.float("CONFIG_CACHE_SECONDS", default=30.0)
CONFIG_CACHE_CHECK_SECONDS = env.float("CONFIG_CACHE_CHECK_SECONDS", default=1.0)
# Links in e-mails sent from tasks, which have no request to build them from.
SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000/")

CELERY_BEAT_SCHEDULE = {
    "expire-budget-holds": {"task": "billing.tasks.expire_holds", "schedule": 300.0},
    # Closing is idempotent and a no-op once done, so hourly costs one small query and a beat
    # restarted near the month's end still closes it within the hour.
    "close-monthly-statements": {"task": "billing.tasks.close_last_month", "schedule": 3600.0},
    # Saved Idempotency-Key answers are replayed for 24 hours, then only take room.
    "purge-idempotency-records": {
        "task": "core.tasks.purge_idempotency_records",
        "schedule": 3600.0,
    },
    # Images uploaded for a message never sent are kept a day (a draft survives a reload).
    "purge-unsent-attachments": {
        "task": "chat.tasks.purge_unsent_attachments",
        "schedule": 3600.0,
    },
    # Batches no worker runs (one died, a rate limit paused it, its window ran out) go on.
    "sweep-batches": {"task": "gateway.tasks.sweep_batches", "schedule": 60.0},
    # Replies whose Daphne process died mid-stream: closed as incomplete, billed for the text
    # flushed so far, their holds freed (stale after CHAT_STALE_STREAM_SECONDS without a write).
    "expire-stale-streams": {"task": "chat.tasks.expire_stale_streams", "schedule": 30.0},
    # Daily and idempotent: conversations past their organization's retention period, and
    # organizations past their deletion grace (lifecycle).
    "purge-expired-conversations": {
        "task": "lifecycle.tasks.purge_expired_conversations",
        "schedule": 86400.0,
    },
    "delete-due-organizations": {
        "task": "lifecycle.tasks.delete_due_organizations",
        "schedule": 86400.0,
    },
}

# --- data lifecycle (lifecycle/) ---------------------------------------------------------------

# An organization an owner deletes stays this many days, spending nothing, until it goes.
ORG_DELETION_GRACE_DAYS = env.int("ORG_DELETION_GRACE_DAYS", default=14)
# A person's data export carries their images up to this many bytes in all (then listed only).
LIFECYCLE_EXPORT_IMAGE_BYTES = env.int("LIFECYCLE_EXPORT_IMAGE_BYTES", default=100 * 1024 * 1024)

# --- REST API (/api/v1/) -----------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # First, so a request without credentials gets 401 with 'WWW-Authenticate: Bearer'.
        "accounts.api_auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",  # CSRF enforced on writes
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "accounts.api_auth.IsSignedInOrKey",
        "accounts.api_auth.KeyHasScope",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.Pagination",
    "EXCEPTION_HANDLER": "core.api.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Decimals as strings: money is never a float, not even in JSON.
    "COERCE_DECIMAL_TO_STRING": True,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "LLM Gateway API",
    "DESCRIPTION": (
        "The workspace's REST API (`/api/v1/`) and its OpenAI-compatible endpoints (`/v1/`). "
        "Authenticate with a project API key, `Authorization: Bearer lgw_...`, or a signed-in "
        "session (with the CSRF token on writes). Errors: "
        '`{"error": {"message", "type", "code", "param"}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and Redoc from the sidecar package: the docs page works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Two choice sets share the field name "sharing": name each.
    "ENUM_NAME_OVERRIDES": {
        "SharingEnum": "chat.models.Conversation.Sharing",
        "NewRoomSharingEnum": "chat.api.NEW_ROOM_SHARING",
        "BudgetScopeEnum": ["organization", "project", "member", "api_key"],
        "MessageRoleEnum": "chat.models.Message.Role",
        # /v1's one-value "object" fields, named after what they are.
        "BatchObjectEnum": ["batch"],
        "FileObjectEnum": ["file"],
        "ResponseObjectEnum": ["response"],
        "ListObjectEnum": ["list"],
        "FilePurposeEnum": ["batch", "batch_output"],
    },
    "SCHEMA_PATH_PREFIX": r"/(api/v1|v1)",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.schema.add_error_responses",
    ],
}
