"""What every DRF endpoint stands on: async handlers, and one error shape for every refusal.

Errors have one JSON shape, OpenAI's, on ``/api/v1`` as on ``/v1``:
``{"error": {"message", "type", "code", "param"}}``, plus ``fields`` for a form of errors.
``api_exception_handler`` (DRF's ``EXCEPTION_HANDLER``) turns a ``ServiceError`` into its own
status and code, and DRF's own exceptions, Django's 404 and 403 into the same shape.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponseBase
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from .errors import ServiceError, error_body

logger = logging.getLogger(__name__)

# DRF's own refusals (authentication, permissions, parsing, methods): their OpenAI type.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    406: "invalid_request_error",
    409: "conflict_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


def status_error_body(
    *, status_code: int, message: str, code: str | None, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The error shape for a refusal known only by its HTTP status (DRF's, Django's 404)."""
    return error_body(
        message=message,
        type=ERROR_TYPES.get(status_code, "api_error"),
        code=code,
        param=param,
        **extra,
    )


def service_error_response(exc: ServiceError) -> Response:
    """A refusal of ours as the API answers it: its status, body and retry headers."""
    return Response(exc.body(), status=exc.status, headers=exc.headers())


class AsyncAPIView(APIView):
    """An APIView whose handlers are coroutines (``async def get/post``): authentication,
    permissions and ``initial`` run in a worker thread, the handler on the event loop. Django
    sees the view as async because every handler is. (DRF views are sync, and a sync view under
    ASGI would hold the one thread all sync views share for as long as a model answers.)"""

    # The stubs know only DRF's sync dispatch; Django runs a view whose handlers are all
    # coroutines as async (View.view_is_async) and awaits this.
    async def dispatch(  # type: ignore[override]
        self, request: HttpRequest, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        self.args, self.kwargs = args, kwargs
        drf_request = self.initialize_request(request, *args, **kwargs)
        self.request = drf_request
        self.headers = self.default_response_headers
        try:
            await sync_to_async(self.initial)(drf_request, *args, **kwargs)
            method = (drf_request.method or "").lower()
            handler = getattr(self, method, None)
            if handler is None or method not in self.http_method_names:
                handler = self.http_method_not_allowed
            response = handler(drf_request, *args, **kwargs)
            if inspect.isawaitable(response):
                response = await response
        except Exception as exc:  # DRF's own contract: every exception becomes a response
            response = self.handle_exception(exc)
        self.response = self.finalize_response(drf_request, response, *args, **kwargs)
        return self.response


def _first_message(detail: Any) -> tuple[str | None, str]:
    """The first field and its first message of a ValidationError's detail."""
    if isinstance(detail, dict):
        for field_name, value in detail.items():
            _, message = _first_message(value)
            return (None if field_name == "non_field_errors" else str(field_name)), message
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return None, str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every refusal of the API in one shape; services' errors answer as the error table says."""
    if isinstance(exc, ServiceError):
        return service_error_response(exc)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    handled = drf_exception_handler(exc, context)
    if handled is None:
        # Not a refusal but a failure of ours: logged with its traceback, answered in the
        # API's own shape (never Django's HTML page, never a traceback).
        logger.error("API view failed", exc_info=exc)
        return service_error_response(ServiceError(code="internal_error"))
    if not isinstance(exc, exceptions.APIException):
        return handled
    response = handled
    if isinstance(exc, exceptions.ValidationError):
        param, message = _first_message(exc.detail)
        response.data = status_error_body(
            status_code=response.status_code,
            message=f"{param}: {message}" if param else message,
            code="invalid_request",
            param=param,
            fields=exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail},
        )
        return response
    codes = exc.get_codes()
    response.data = status_error_body(
        status_code=response.status_code,
        message=str(exc.detail),
        code=codes if isinstance(codes, str) else None,
    )
    return response
