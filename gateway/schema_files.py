"""OpenAPI shapes of ``/v1/files`` and ``/v1/batches``, for the schema only (the views answer
with ``gateway.files.file_json`` and ``gateway.batches.batch_json``)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers

from .files import BATCH_ENDPOINTS, LIST_LIMIT_MAX

_NULLABLE: dict[str, Any] = {"allow_null": True}

FILE_OBJECT = inline_serializer(
    "OpenAIFile",
    {
        "id": serializers.CharField(),
        "object": serializers.ChoiceField(choices=["file"]),
        "bytes": serializers.IntegerField(),
        "created_at": serializers.IntegerField(),
        "filename": serializers.CharField(),
        "purpose": serializers.ChoiceField(choices=["batch", "batch_output"]),
        "status": serializers.ChoiceField(choices=["uploaded", "processed", "error"]),
        "expires_at": serializers.IntegerField(**_NULLABLE),
    },
)


def _list_of(name: str, item: serializers.Serializer) -> serializers.Serializer:
    return inline_serializer(
        name,
        {
            "object": serializers.ChoiceField(choices=["list"]),
            "data": item.__class__(many=True),
            "first_id": serializers.CharField(**_NULLABLE),
            "last_id": serializers.CharField(**_NULLABLE),
            "has_more": serializers.BooleanField(),
        },
    )


FILE_LIST = _list_of("OpenAIFileList", FILE_OBJECT)

FILE_DELETED = inline_serializer(
    "OpenAIFileDeleted",
    {
        "id": serializers.CharField(),
        "object": serializers.ChoiceField(choices=["file"]),
        "deleted": serializers.BooleanField(),
    },
)

FILE_UPLOAD = inline_serializer(
    "OpenAIFileUpload",
    {
        "file": serializers.FileField(
            help_text="JSONL: each non-empty line one request of a batch, "
            '{"custom_id", "method": "POST", "url", "body"}.'
        ),
        "purpose": serializers.ChoiceField(choices=["batch"]),
    },
)

FILE_CONTENT = OpenApiResponse(OpenApiTypes.BINARY, description="The file's bytes.")

FILE_LIST_PARAMETERS = [
    OpenApiParameter("purpose", OpenApiTypes.STR, description="Only files of this purpose."),
    OpenApiParameter(
        "limit", OpenApiTypes.INT, description=f"1 to {LIST_LIMIT_MAX:,} (the default)."
    ),
    OpenApiParameter("after", OpenApiTypes.STR, description="The id the previous page ended on."),
    OpenApiParameter("order", OpenApiTypes.STR, enum=["asc", "desc"], description="By creation."),
]

BATCH_CREATE_REQUEST = inline_serializer(
    "OpenAIBatchCreate",
    {
        "input_file_id": serializers.CharField(help_text="A file uploaded with purpose batch."),
        "endpoint": serializers.ChoiceField(choices=list(BATCH_ENDPOINTS)),
        "completion_window": serializers.ChoiceField(choices=["24h"]),
        "metadata": serializers.DictField(
            child=serializers.CharField(max_length=512), required=False, **_NULLABLE
        ),
    },
)

_BATCH_ERROR = inline_serializer(
    "OpenAIBatchError",
    {
        "code": serializers.CharField(**_NULLABLE),
        "message": serializers.CharField(**_NULLABLE),
        "param": serializers.CharField(**_NULLABLE),
        "line": serializers.IntegerField(**_NULLABLE),
    },
)

_TIMESTAMP: dict[str, Any] = {"allow_null": True, "help_text": "Unix seconds."}

BATCH_OBJECT = inline_serializer(
    "OpenAIBatch",
    {
        "id": serializers.CharField(),
        "object": serializers.ChoiceField(choices=["batch"]),
        "endpoint": serializers.CharField(),
        "errors": inline_serializer(
            "OpenAIBatchErrors",
            {
                "object": serializers.ChoiceField(choices=["list"]),
                "data": _BATCH_ERROR.__class__(many=True),
            },
            **_NULLABLE,
        ),
        "input_file_id": serializers.CharField(),
        "completion_window": serializers.CharField(),
        "status": serializers.ChoiceField(
            choices=[
                "validating",
                "failed",
                "in_progress",
                "finalizing",
                "completed",
                "expired",
                "cancelling",
                "cancelled",
            ]
        ),
        "output_file_id": serializers.CharField(**_NULLABLE),
        "error_file_id": serializers.CharField(**_NULLABLE),
        "created_at": serializers.IntegerField(),
        "in_progress_at": serializers.IntegerField(**_TIMESTAMP),
        "expires_at": serializers.IntegerField(**_TIMESTAMP),
        "finalizing_at": serializers.IntegerField(**_TIMESTAMP),
        "completed_at": serializers.IntegerField(**_TIMESTAMP),
        "failed_at": serializers.IntegerField(**_TIMESTAMP),
        "expired_at": serializers.IntegerField(**_TIMESTAMP),
        "cancelling_at": serializers.IntegerField(**_TIMESTAMP),
        "cancelled_at": serializers.IntegerField(**_TIMESTAMP),
        "request_counts": inline_serializer(
            "OpenAIBatchRequestCounts",
            {
                "total": serializers.IntegerField(),
                "completed": serializers.IntegerField(),
                "failed": serializers.IntegerField(),
            },
        ),
        "metadata": serializers.DictField(child=serializers.CharField(), **_NULLABLE),
        "model": serializers.CharField(
            help_text="The model the batch's first request names.", **_NULLABLE
        ),
        "usage": inline_serializer(
            "OpenAIBatchUsage",
            {
                "input_tokens": serializers.IntegerField(),
                "input_tokens_details": inline_serializer(
                    "OpenAIBatchInputTokensDetails", {"cached_tokens": serializers.IntegerField()}
                ),
                "output_tokens": serializers.IntegerField(),
                "output_tokens_details": inline_serializer(
                    "OpenAIBatchOutputTokensDetails",
                    {"reasoning_tokens": serializers.IntegerField()},
                ),
                "total_tokens": serializers.IntegerField(),
            },
            help_text="The tokens of the requests recorded so far, as billed.",
        ),
    },
)

BATCH_LIST = _list_of("OpenAIBatchList", BATCH_OBJECT)

BATCH_LIST_PARAMETERS = [
    OpenApiParameter("limit", OpenApiTypes.INT, description="1 to 100; 20 by default."),
    OpenApiParameter("after", OpenApiTypes.STR, description="The id the previous page ended on."),
]
