"""One error table: each error code has one HTTP status, one OpenAI type, one retry rule and
one message, whichever surface tells it (the REST API, ``/v1``, the socket, the pages).

``ServiceError`` is how code refuses something: ``ServiceError(message, code=...)``. What the
code means on the wire comes from ``ERRORS``; a code not in the table is an invalid request
(400). ``ApiError`` is a ``ServiceError`` in OpenAI's request-validation words: it names the
faulty parameter (``param``) and may carry an explicit status and type (``/v1``'s parsing, the
``Idempotency-Key`` checks). Every surface renders them with ``error_body`` and
``error_headers``, so a refusal cannot read one way on ``/v1`` and another on the REST API.

Retry rules, as the official ``openai`` SDK reads them: ``after`` sends ``Retry-After`` (whole
seconds) and the SDK waits that long; ``never`` sends ``x-should-retry: false`` and the SDK
gives up at once (asking again cannot succeed: a budget, a quota); ``maybe`` leaves the choice
to the client (its defaults retry 408/409/429/5xx).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from django.utils.translation import gettext_lazy as _
from django_stubs_ext import StrOrPromise

Retry = Literal["after", "never", "maybe"]


@dataclass(frozen=True)
class ErrorKind:
    status: int
    type: str  # OpenAI's error type
    retry: Retry
    # What a person is told when the refusal says nothing more specific: translated when it is
    # told, into the language active then (the page's, the socket's; /v1 is always English).
    message: StrOrPromise


INVALID = ErrorKind(400, "invalid_request_error", "never", _("The request is not valid."))

ERRORS: dict[str, ErrorKind] = {
    # Who calls, and what they may do.
    "invalid_api_key": ErrorKind(
        401, "invalid_request_error", "never", _("The API key is missing, malformed or not valid.")
    ),
    "insufficient_scope": ErrorKind(
        403, "permission_error", "never", _("This API key lacks the scope this call needs.")
    ),
    "keys_not_allowed": ErrorKind(
        403, "permission_error", "never", _("API keys cannot do this; sign in as a project admin.")
    ),
    "forbidden": ErrorKind(
        403,
        "permission_error",
        "never",
        _("Only the organization's owners and admins can do this."),
    ),
    "not_found": ErrorKind(404, "not_found_error", "never", _("No such object.")),
    # Moderation (a project that turned it on): nothing was sent to the model.
    "content_flagged": ErrorKind(
        400,
        "invalid_request_error",
        "never",
        _("Moderation flagged the message; it was not sent."),
    ),
    "moderation_unavailable": ErrorKind(
        503,
        "api_error",
        "maybe",
        _("The moderation check could not be made, so nothing was sent. Try again shortly."),
    ),
    # Two-factor authentication: an organization that requires it, and wrong codes.
    "two_factor_required": ErrorKind(
        403,
        "permission_error",
        "never",
        _(
            "This organization requires two-factor authentication: turn it on in your account "
            "(/account/two-factor/) first."
        ),
    ),
    "two_factor_locked": ErrorKind(
        429, "requests", "after", _("Too many wrong codes. Wait a little and try again.")
    ),
    # Our own limits: nothing was sent upstream.
    "budget_exceeded": ErrorKind(
        429, "insufficient_quota", "never", _("A budget would be exceeded; the call was not made.")
    ),
    "organization_pending_deletion": ErrorKind(
        403,
        "permission_error",
        "never",
        _(
            "This organization is scheduled for deletion: it makes no new calls. An owner can "
            "cancel the deletion."
        ),
    ),
    "rate_limit_exceeded": ErrorKind(
        429, "requests", "after", _("Too many requests right now. Try again shortly.")
    ),
    "busy": ErrorKind(
        409, "conflict_error", "maybe", _("A reply is still being written. Wait for it or stop it.")
    ),
    "not_busy": ErrorKind(
        409, "conflict_error", "never", _("No reply is being written in this conversation.")
    ),
    "idempotency_key_reused": ErrorKind(
        409,
        "invalid_request_error",
        "never",
        _("This Idempotency-Key was used with a different request."),
    ),
    "idempotency_request_in_progress": ErrorKind(
        409,
        "invalid_request_error",
        "maybe",
        _("A request with this Idempotency-Key is still running; retry later."),
    ),
    # Rooms and personas.
    "not_room_owner": ErrorKind(
        403,
        "permission_error",
        "never",
        _("Only the person who made this room can change who is in it."),
    ),
    "persona_disabled": ErrorKind(
        409, "invalid_request_error", "never", _("This persona is turned off in this project.")
    ),
    "not_in_rooms": ErrorKind(
        409,
        "invalid_request_error",
        "never",
        _("In a room, call the persona again with its @tag instead."),
    ),
    "conflict": ErrorKind(
        409, "invalid_request_error", "never", _("That name is already taken in this project.")
    ),
    "not_a_room": ErrorKind(
        400, "invalid_request_error", "never", _("This conversation is not shared: it is no room.")
    ),
    # Summaries.
    "nothing_to_summarize": ErrorKind(
        409,
        "conflict_error",
        "never",
        _("Nothing to summarize yet: everything before the last exchange is summarized already."),
    ),
    # The model: what the project allows, what fits.
    "model_not_found": ErrorKind(
        404,
        "invalid_request_error",
        "never",
        _("The model does not exist or this project may not use it."),
    ),
    "context_length_exceeded": ErrorKind(
        400,
        "invalid_request_error",
        "never",
        _(
            "This conversation is too long for the model's context window. Start a new chat or "
            "shorten your message."
        ),
    ),
    # The upstream provider failed: said in our words, never the provider's secrets.
    "insufficient_quota": ErrorKind(
        429,
        "insufficient_quota",
        "never",
        _(
            "The provider account has run out of credit (insufficient quota). An admin needs "
            "to add credit; retrying will not help."
        ),
    ),
    "upstream_bad_request": ErrorKind(
        400, "invalid_request_error", "never", _("The model provider refused the request.")
    ),
    "upstream_auth_failed": ErrorKind(
        502,
        "api_error",
        "maybe",
        _("The model provider rejected our credentials. An admin needs to check the API key."),
    ),
    "upstream_timeout": ErrorKind(
        504, "api_error", "maybe", _("The model took too long to answer.")
    ),
    "upstream_address_refused": ErrorKind(
        403,
        "permission_error",
        "never",
        _(
            "The server's address policy does not allow requests to this provider's address "
            "(loopback, private, link-local or metadata). An operator can allow its network with "
            "UPSTREAM_ALLOWED_NETWORKS."
        ),
    ),
    "upstream_error": ErrorKind(
        502, "api_error", "maybe", _("The model provider failed or is unavailable right now.")
    ),
    "connection_key_unreadable": ErrorKind(
        502,
        "api_error",
        "never",
        _("The connection's key cannot be read with the configured encryption keys."),
    ),
    "interrupted": ErrorKind(
        503, "api_error", "maybe", _("The server stopped while this reply was being written.")
    ),
    "internal_error": ErrorKind(
        500, "api_error", "maybe", _("Something went wrong on our side; it has been logged.")
    ),
}

# Codes of earlier releases, still on saved messages: read as today's.
LEGACY_CODES = {
    "rate_limited": "rate_limit_exceeded",
    "quota_exhausted": "insufficient_quota",
    "bad_request": "upstream_bad_request",
    "context_too_long": "context_length_exceeded",
    "upstream_unavailable": "upstream_error",
    "timeout": "upstream_timeout",
    "auth": "upstream_auth_failed",
    "model_not_allowed": "model_not_found",
}


def kind_of(code: str | None) -> ErrorKind:
    """The table's row for ``code`` (an invalid request for a code it does not list)."""
    if code is None:
        return INVALID
    return ERRORS.get(LEGACY_CODES.get(code, code), INVALID)


def public_code(code: str) -> str:
    return LEGACY_CODES.get(code, code)


def retryable(code: str) -> bool:
    """Whether asking again (later) can succeed."""
    return kind_of(code).retry != "never"


class ServiceError(Exception):
    """A rule refused the action. The message is shown to the user as it is; the code decides
    status, type and retry rule (``ERRORS``)."""

    def __init__(
        self,
        message: StrOrPromise | None = None,
        *,
        code: str = "invalid",
        retry_after: float | None = None,
        param: str | None = None,
        status: int | None = None,
        type: str | None = None,
    ) -> None:
        kind = kind_of(code)
        self.code = public_code(code)
        # What clients see as ``code``: the same, except where OpenAI's words have none.
        self.wire_code: str | None = self.code
        # A plain string from here on: it is put in JSON and compared, and it is said in the
        # language active where the refusal is made.
        self.message: str = str(message or kind.message)
        super().__init__(self.message)
        self.status: int = status if status is not None else kind.status
        self.type: str = type or kind.type
        self.retry: Retry = kind.retry
        self.retry_after = retry_after
        self.param = param

    def body(self, **extra: Any) -> dict[str, Any]:
        return error_body(
            message=self.message, type=self.type, code=self.wire_code, param=self.param, **extra
        )

    def headers(self) -> dict[str, str]:
        return error_headers(self.retry, self.retry_after)


class ApiError(ServiceError):
    """A refusal in OpenAI's request-validation words, with its status given explicitly."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str,
        code: str | None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message,
            code=code or "invalid_request",
            status=status,
            type=type,
            param=param,
            retry_after=retry_after,
        )
        # OpenAI leaves the code null for most validation errors; so do we.
        self.wire_code = code


def invalid_request(message: str, *, param: str | None, code: str | None = None) -> ApiError:
    """A 400 naming the faulty parameter, as OpenAI words it."""
    return ApiError(400, message, type="invalid_request_error", code=code, param=param)


def error_body(
    *, message: str, type: str, code: str | None, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    """OpenAI's error shape, on every surface: ``{"error": {message, type, param, code}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code, **extra}}


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least one: what ``Retry-After`` carries."""
    return str(max(1, math.ceil(seconds)))


def error_headers(retry: Retry, retry_after: float | None) -> dict[str, str]:
    """The headers that tell a client (the openai SDK first) whether and when to ask again."""
    if retry == "never":
        return {"x-should-retry": "false"}
    if retry_after is not None:
        return {"Retry-After": retry_after_header(retry_after)}
    if retry == "after":
        return {"Retry-After": "1"}
    return {}
