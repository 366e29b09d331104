"""Errors that carry their HTTP meaning, so every surface answers a refusal the same way.

``ServiceError``: a business rule refused the action; its message is shown to the user as it is,
its ``code`` names the rule, and it knows its HTTP ``status`` (and ``retry_after``, if trying
again later helps). ``ApiError``: a refusal already in OpenAI's error shape, answered as it is
(the ``/v1`` surface and the ``Idempotency-Key`` checks shared with the REST API).
"""

from __future__ import annotations

from typing import Any

# Codes whose status is not 400. A service raising one of these need not repeat its status.
STATUS_OF_CODE: dict[str, int] = {
    "forbidden": 403,
    "not_found": 404,
    "busy": 409,
    "not_busy": 409,
}


class ServiceError(Exception):
    """A business rule refused the action. The message is shown to the user as it is."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status: int = status if status is not None else STATUS_OF_CODE.get(code, 400)
        self.retry_after = retry_after

    @property
    def api_code(self) -> str:
        """The code an API client sees (a subclass may name the rule differently there)."""
        return self.code


class ApiError(Exception):
    """A refusal in OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

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
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid_request(message: str, *, param: str | None, code: str | None = None) -> ApiError:
    """A 400 naming the faulty parameter, as OpenAI words it."""
    return ApiError(400, message, type="invalid_request_error", code=code, param=param)
