"""OpenAPI pieces every API shares: the error component, Server-Sent Events, the
``Idempotency-Key`` header, and the hook that documents every refusal of ``/api/v1``."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers

from .idempotency import HEADER as IDEMPOTENCY_HEADER

# Every refusal, of /v1 and of /api/v1 alike: OpenAI's error shape (``fields`` on our REST
# API's invalid input). The schema's "Error" component; see add_error_responses below.
OPENAI_ERROR = inline_serializer(
    "Error",
    {
        "error": inline_serializer(
            "ErrorDetail",
            {
                "message": serializers.CharField(),
                "type": serializers.CharField(),
                "param": serializers.CharField(allow_null=True),
                "code": serializers.CharField(allow_null=True),
                "fields": serializers.DictField(
                    required=False, help_text="Field name → its messages, for invalid input."
                ),
            },
        )
    },
)

IDEMPOTENCY_PARAMETER = OpenApiParameter(
    IDEMPOTENCY_HEADER,
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="A repeat within 24 hours gets the saved answer (JSON or the event stream) and "
    "is not billed again; with a different body, 409.",
)


def server_sent_event(*, events: list[str] | None, description: str) -> dict[str, Any]:
    """The schema of one Server-Sent Event (how schemathesis and OpenAPI 3.2 read a
    ``text/event-stream`` body: each event an object of its fields)."""
    fields: dict[str, Any] = {
        "data": {"type": "string", "description": "JSON (or, for /v1, the final [DONE])."}
    }
    if events is not None:
        fields["event"] = {"type": "string", "enum": events}
    return {
        "type": "object",
        "description": description,
        "properties": fields,
        "required": ["data", *(["event"] if events is not None else [])],
    }


ERROR_STATUSES = {
    "400": "Invalid input: the error names the field (param) and the problem.",
    "401": "No credentials, or a key that is malformed, unknown, revoked, expired or another "
    "project's (always the same body).",
    "403": "Signed in or keyed, but not allowed: a key without the scope, a member asking for "
    "an admin's action.",
    "404": "No such object for this caller (another tenant's objects answer the same).",
    "405": "The path does not take this method.",
    "415": "The body must be JSON (Content-Type: application/json).",
    "429": "A budget or rate limit refused the call (rate limits send Retry-After).",
}


def add_error_responses(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every /api/v1 operation documents its refusals."""
    # The component is OPENAI_ERROR above, which the operations of /api/v1 and /v1 name.
    if "Error" not in result.get("components", {}).get("schemas", {}):
        raise ValueError("The shared Error component (core.schema.OPENAI_ERROR) is missing.")
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in result["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for operation in operations.values():
            for status, description in ERROR_STATUSES.items():
                operation["responses"].setdefault(
                    status,
                    {"description": description, "content": content},
                )
    return result
