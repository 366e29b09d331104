"""The request being served, for the audit events its changes record: the services that make
changes are called with a Membership, not the request, so the address it came from (and, for a
service that is not told who acts, the person) is read from here.

Sync and async alike, so that an async view is not sent to a thread for it. Put it after
``AuthenticationMiddleware``. Daphne behind a proxy needs ``--proxy-headers`` for
``REMOTE_ADDR`` to be the client's rather than the proxy's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

_current: ContextVar[HttpRequest | None] = ContextVar("audit_request", default=None)


def current_request() -> HttpRequest | None:
    """The request this code runs for, if it runs for one (not in a task or a command)."""
    return _current.get()


Handler = Callable[[HttpRequest], HttpResponseBase]
AsyncHandler = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


@sync_and_async_middleware
def request_context(
    get_response: Handler | AsyncHandler,
) -> Handler | AsyncHandler:
    if iscoroutinefunction(get_response):
        async_response: AsyncHandler = get_response

        async def middleware_async(request: HttpRequest) -> HttpResponseBase:
            token = _current.set(request)
            try:
                return await async_response(request)
            finally:
                _current.reset(token)

        return middleware_async

    sync_response: Handler = get_response  # type: ignore[assignment]

    def middleware(request: HttpRequest) -> HttpResponseBase:
        token = _current.set(request)
        try:
            return sync_response(request)
        finally:
            _current.reset(token)

    return middleware
