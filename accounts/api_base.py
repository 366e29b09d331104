"""What every REST endpoint under ``/api/v1/`` stands on.

- Authentication: ``Authorization: Bearer lgw_…`` (a project key) or the browser session (with
  CSRF on writes, DRF's ``SessionAuthentication``). A key acts for its project only.
- ``ProjectEndpoint`` (Sentry's "one base endpoint resolves the organization"): resolves the
  ``project_id`` of the URL through the caller's scoped path before any handler runs, so an
  outsider's request is a 404 however the handler is written; checks the key's scope.
- Errors have one JSON shape, the same as ``/v1``'s (OpenAI's):
  ``{"error": {"message", "type", "code", "param"}}``, plus ``fields`` for a form of errors.
- ``AsyncProjectEndpoint``: the same for handlers that wait on a model (DRF views are sync, and
  a sync view under ASGI would hold the one thread all sync views share for a whole reply).
"""

from __future__ import annotations

import math
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from .api_auth import api_key_of
from .api_keys import INVALID_KEY_MESSAGE
from .errors import ServiceError
from .models import ApiKey, Membership, Project
from .selectors import membership_for, projects_for_user


def projects_for_request(request: Request):
    """The projects the caller may reach: a key's own project, or the user's projects."""
    key = api_key_of(request)
    if key is not None:
        return Project.objects.filter(pk=key.project_id).select_related("organization")
    return projects_for_user(request.user)


class ProjectEndpoint(GenericAPIView):
    """Resolves ``self.project`` (and ``self.membership`` for a person) before the handler.
    Lists use DRF's ``ListModelMixin`` with ``get_queryset`` built from ``self.project``."""

    project: Project
    membership: Membership | None
    api_key: ApiKey | None

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # Who asks, then which project, then what they may do there: another project's key
        # is refused as no key at all (401) before any permission could say more about it.
        self.perform_authentication(request)
        self.api_key = api_key_of(request)
        if self.api_key is None and not request.user.is_authenticated:
            raise exceptions.NotAuthenticated()
        self.project = self._resolve_project(request, kwargs.get("project_id"))
        super().initial(request, *args, **kwargs)
        self.membership = (
            None
            if self.api_key is not None
            else membership_for(user=request.user, organization=self.project.organization)
        )

    @staticmethod
    def _resolve_project(request: Request, project_id: Any) -> Project:
        key = api_key_of(request)
        if key is not None and str(key.project_id) != str(project_id):
            # Another project's key: to this project it is no key at all, and it is told so
            # in the very words a revoked or unknown key gets.
            raise exceptions.AuthenticationFailed(INVALID_KEY_MESSAGE, code="invalid_api_key")
        project = projects_for_request(request).filter(pk=project_id).first()
        if project is None:
            raise Http404("No such project.")
        return project

    def require_manager(self) -> Membership:
        """Project admins' actions: owners and admins of the organization, never a key."""
        if self.membership is None or not self.membership.can_manage:
            raise exceptions.PermissionDenied(
                "Only the organization's owners and admins can do this.", code="forbidden"
            )
        return self.membership


class AsyncDispatchMixin:
    """For an APIView whose handlers are coroutines (``async def get/post``): authentication,
    permissions and ``initial`` run in a worker thread, the handler on the event loop. Django
    sees the view as async because every handler is."""

    async def dispatch(self, request, *args: Any, **kwargs: Any):  # type: ignore[override]
        self.args, self.kwargs = args, kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            await sync_to_async(self.initial)(request, *args, **kwargs)
            method = request.method.lower()
            handler = getattr(self, method, None)
            if handler is None or method not in self.http_method_names:
                handler = self.http_method_not_allowed
            response = handler(request, *args, **kwargs)
            if hasattr(response, "__await__"):
                response = await response
        except Exception as exc:  # DRF's own contract: every exception becomes a response
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response


class AsyncProjectEndpoint(AsyncDispatchMixin, ProjectEndpoint):
    """A ProjectEndpoint for handlers that wait on a model."""


# --- errors ------------------------------------------------------------------------------------

# ServiceError codes whose status is not 400.
SERVICE_STATUS = {
    "forbidden": status.HTTP_403_FORBIDDEN,
    "not_found": status.HTTP_404_NOT_FOUND,
    "busy": status.HTTP_409_CONFLICT,
    "not_busy": status.HTTP_409_CONFLICT,
}

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


def error_body(
    *, status_code: int, message: str, code: str | None, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status_code, "api_error"),
            "code": code,
            "param": param,
            **extra,
        }
    }


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
    """Every refusal of ``/api/v1`` in one shape; services' errors become their status."""
    from billing.services import QuotaExceeded  # billing imports accounts: import late

    if isinstance(exc, QuotaExceeded):
        rate_limited = exc.code == "rate_limited"
        response = Response(
            error_body(
                status_code=429,
                message=exc.message,
                code="rate_limit_exceeded" if rate_limited else "budget_exceeded",
            ),
            status=429,
        )
        if rate_limited and exc.retry_after is not None:
            response["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response
    if isinstance(exc, ServiceError):
        status_code = SERVICE_STATUS.get(exc.code, status.HTTP_400_BAD_REQUEST)
        return Response(
            error_body(status_code=status_code, message=exc.message, code=exc.code),
            status=status_code,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    if isinstance(exc, exceptions.ValidationError):
        param, message = _first_message(exc.detail)
        response.data = error_body(
            status_code=response.status_code,
            message=f"{param}: {message}" if param else message,
            code="invalid_request",
            param=param,
            fields=exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail},
        )
        return response
    codes = exc.get_codes()
    response.data = error_body(
        status_code=response.status_code,
        message=str(exc.detail),
        code=codes if isinstance(codes, str) else None,
    )
    return response
