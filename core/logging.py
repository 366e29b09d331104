"""Logs: one line per event, with the request id that follows a call from HTTP or a socket
through the provider call to its ledger row.

Every logger (ours, Django's, Celery's, the libraries') goes through the standard library and
one formatter (structlog's ``ProcessorFormatter``): JSON lines in the production profile,
readable console lines in the embedded one. Our own events are structlog loggers with fields
(``structlog.get_logger(__name__).info("upstream_call", model=..., ...)``); what is bound with
``bind_request_id`` (a request, a socket frame, a Celery task through django-structlog) is
added to every line logged meanwhile, whichever logger logs it.

``RequestLogMiddleware`` gives every request its id (a valid incoming ``X-Request-ID``, else a
new one), returns it as ``X-Request-ID`` and logs the request as one line when it is answered:
method, path (never the query string, nor the token of an e-mailed link: those are secrets),
status, the error code of a refusal, duration. An expected refusal (401, 403, 404, 429…) is
that one line and nothing more: Django's own line about it is left out of the output
(``DjangoRefusalsLoggedOnce``) and no traceback is attached to it (``RefusalsWithoutTraceback``);
a 500 keeps Django's line with its traceback. Nothing here logs headers, bodies or message
content.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import IO, Any, cast

import structlog
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

REQUEST_ID_HEADER = "X-Request-ID"
# What we take from a client or a proxy as a request id: short, and nothing that could forge a
# log line or a header (no spaces, quotes or control characters). Anything else is replaced.
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=+/@-]{0,127}")
# The operations endpoints, asked every few seconds by load balancers and Prometheus: their
# successful answers are logged at DEBUG only (a refusal or a failure still is a line).
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# URL parts that are secrets (links sent by e-mail: invitations, e-mail verification, password
# resets): a request to such a route is logged by its route, never its path.
SECRET_ROUTE_PARTS = frozenset({"token", "uidb64", "key", "secret"})
# A refusal's error code is read from its JSON body ({"error": {"code": ...}}) up to this size.
ERROR_BODY_LIMIT = 16 * 1024

access_log = structlog.get_logger("core.requests")


class RefusalsWithoutTraceback(logging.Filter):
    """A refusal we meant (401, 403, 404, 429…) is one line in the log, not a traceback: Django
    attaches the exception that made it (``PermissionDenied``, ``Http404``) to the record, and a
    log full of expected stack traces hides the real errors. 5xx records keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if isinstance(status, int) and status < 500:
            record.exc_info = None
            record.exc_text = None
        return True


class DjangoRefusalsLoggedOnce(logging.Filter):
    """For the output handlers: Django's ``django.request`` line about a response below 500
    ("Not Found: /x") is left out, since ``RequestLogMiddleware`` logs every response once with
    its request id and code. (A filter on the handler, not the logger: whoever listens on
    ``django.request`` itself still hears of every refusal.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        return not (record.name == "django.request" and isinstance(status, int) and status < 500)


# --- the request id ----------------------------------------------------------------------------


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(value: str | None) -> str | None:
    """``value`` if it may be used as a request id as it is (see ``VALID_REQUEST_ID``)."""
    if value and VALID_REQUEST_ID.fullmatch(value):
        return value
    return None


def current_request_id() -> str | None:
    """The request id bound in this context (a request, a socket frame, a task), if any."""
    value = structlog.contextvars.get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


def bind_request_id(request_id: str) -> None:
    """Bind ``request_id`` for the rest of this context (a task of its own: it ends with it)."""
    structlog.contextvars.bind_contextvars(request_id=request_id)


@contextlib.contextmanager
def bound_request_id(request_id: str | None = None) -> Iterator[str]:
    """Bind a request id (``request_id``, else a new one) until the block ends."""
    request_id = request_id or new_request_id()
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        yield request_id


# --- the request line --------------------------------------------------------------------------


def _error_code(response: HttpResponseBase) -> str | None:
    """The code of a refusal answered in our error shape (``{"error": {"code": ...}}``)."""
    if response.status_code < 400 or response.streaming:
        return None
    if not response.get("Content-Type", "").startswith("application/json"):
        return None
    content: bytes = getattr(response, "content", b"")
    if len(content) > ERROR_BODY_LIMIT:
        return None
    try:
        body = json.loads(content)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code[:64] if isinstance(code, str) else None


def _level(path: str, status: int) -> int:
    if status >= 500:
        return logging.ERROR
    if status >= 400:
        return logging.WARNING
    return logging.DEBUG if path in QUIET_PATHS else logging.INFO


def _loggable_path(request: HttpRequest) -> str:
    """The path, or for a route that carries a secret in it (an invitation's or a password
    reset's token) the route itself: ``/invitations/<str:token>/``."""
    match = getattr(request, "resolver_match", None)
    if match is not None and SECRET_ROUTE_PARTS & match.kwargs.keys():
        return f"/{match.route}"
    return request.path


def _log_request(request: HttpRequest, status: int, started: float, **fields: Any) -> None:
    from . import metrics  # not at import: the settings import this module

    seconds = time.monotonic() - started
    metrics.observe_request(
        path=request.path, method=request.method, status=status, seconds=seconds
    )
    access_log.log(
        _level(request.path, status),
        "request",
        method=request.method,
        path=_loggable_path(request),
        status=status,
        duration_ms=round(seconds * 1000, 1),
        **fields,
    )


class RequestLogMiddleware:
    """Bind the request's id, answer with it, log the request as one line and count it for
    /metrics (``core.metrics.observe_request``).

    Async in an async chain, sync in a sync one, never a thread hop of its own: it sits first
    in every chain, the gateway's ``/v1`` included (``config.handlers``). Under Daphne each
    request runs in a task of its own, so the id bound here holds until the response (a
    stream's too) has been sent, and ends with the task."""

    sync_capable = True
    async_capable = True

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]],
    ) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        # A sync chain runs on a thread that serves other requests after this one: unbind.
        with bound_request_id(self._request_id(request)) as request_id:
            started = time.monotonic()
            response = cast(HttpResponseBase, self.get_response(request))
            return self._answered(request, response, request_id, started)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        request_id = self._request_id(request)
        bind_request_id(request_id)
        started = time.monotonic()
        try:
            response = await cast(Awaitable[HttpResponseBase], self.get_response(request))
        except asyncio.CancelledError:  # the client went away before its answer
            _log_request(request, 499, started)
            raise
        return self._answered(request, response, request_id, started)

    @staticmethod
    def _request_id(request: HttpRequest) -> str:
        return valid_request_id(request.META.get("HTTP_X_REQUEST_ID")) or new_request_id()

    @staticmethod
    def _answered(
        request: HttpRequest, response: HttpResponseBase, request_id: str, started: float
    ) -> HttpResponseBase:
        response[REQUEST_ID_HEADER] = request_id
        fields: dict[str, Any] = {}
        code = _error_code(response)
        if code is not None:
            fields["code"] = code
        if response.streaming:
            fields["streaming"] = True  # logged as its headers go out; the body follows
        _log_request(request, response.status_code, started, **fields)
        return response


# --- configuration -----------------------------------------------------------------------------

# What every line gets, from structlog's loggers and the standard library's alike.
SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_structlog() -> None:
    """structlog's loggers hand their events to the standard library, where the formatter of
    the output handler renders them (``logging_config``). Called by the settings, once per
    process; calling it again changes nothing."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # cheap: a DEBUG line costs nothing at INFO
            *SHARED_PROCESSORS,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def formatter(*, json_lines: bool) -> structlog.stdlib.ProcessorFormatter:
    """The output formatter: a JSON object per line (a traceback as one string field), or a
    readable line. Tracebacks are plain: never with local variables, which may hold keys."""
    renderer: Any
    if json_lines:
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
        final = [structlog.processors.format_exc_info, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        final = [renderer]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=SHARED_PROCESSORS,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )


def logging_config(
    *, json_lines: bool, level: str = "INFO", stream: IO[str] | None = None
) -> dict[str, Any]:
    """``settings.LOGGING``: everything to one handler on stderr (``stream``: elsewhere), in
    JSON lines or readable ones, from ``level`` up."""
    handler: dict[str, Any] = {
        "class": "logging.StreamHandler",
        "formatter": "json" if json_lines else "console",
        "filters": ["refusals_without_traceback", "django_refusals_logged_once"],
    }
    if stream is not None:
        handler["stream"] = stream
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": formatter, "json_lines": True},
            "console": {"()": formatter, "json_lines": False},
        },
        "filters": LOGGING_FILTERS,
        "handlers": {"console": handler},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.request": DJANGO_REQUEST_LOGGER,
            # At INFO these log every request's URL (an MCP server's may carry a secret) and
            # the MCP sessions' ids: warnings and worse only.
            "httpx": {"level": "WARNING"},
            "httpx2": {"level": "WARNING"},
            "mcp": {"level": "WARNING"},
            # A failed readiness check is a warning with a traceback there; /readyz says which
            # failed and why in its answer and its own line (an unexpected error stays).
            "health_check": {"level": "ERROR"},
        },
    }


LOGGING_FILTERS: dict[str, Any] = {
    "refusals_without_traceback": {"()": "core.logging.RefusalsWithoutTraceback"},
    "django_refusals_logged_once": {"()": "core.logging.DjangoRefusalsLoggedOnce"},
}
# Expected refusals (401/403/404/429) carry no traceback, whoever listens on django.request.
DJANGO_REQUEST_LOGGER: dict[str, Any] = {
    "level": "WARNING",
    "filters": ["refusals_without_traceback"],
}
