"""OpenAPI shapes of ``POST /v1/embeddings``, for the schema only (the body is parsed by
``gateway.embeddings.parse_embeddings_body``)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import inline_serializer
from rest_framework import serializers

from .embeddings import MAX_INPUTS

_OPTIONAL: dict[str, Any] = {"required": False, "allow_null": True}

EMBEDDING_REQUEST = inline_serializer(
    "EmbeddingRequest",
    {
        "model": serializers.CharField(help_text="One of GET /v1/models."),
        "input": serializers.JSONField(
            help_text="A string, an array of strings (at most "
            f"{MAX_INPUTS}, none empty), a token array or an array of token arrays "
            "(cl100k_base token ids, embedded as the text they decode to)."
        ),
        "encoding_format": serializers.ChoiceField(
            choices=["float", "base64"],
            **_OPTIONAL,
            help_text="float (the default) or base64: each vector's little-endian float32 bytes.",
        ),
        "dimensions": serializers.IntegerField(
            **_OPTIONAL,
            min_value=1,
            help_text="Shorter vectors, where the model allows it (the built-in model: only "
            "its own size).",
        ),
        "user": serializers.CharField(**_OPTIONAL, help_text="Accepted; not sent on."),
    },
)

EMBEDDING_RESPONSE = inline_serializer(
    "EmbeddingList",
    {
        "object": serializers.ChoiceField(choices=["list"]),
        "data": inline_serializer(
            "Embedding",
            {
                "object": serializers.ChoiceField(choices=["embedding"]),
                "index": serializers.IntegerField(),
                "embedding": serializers.JSONField(
                    help_text="An array of floats, or a base64 string with encoding_format: base64."
                ),
            },
            many=True,
        ),
        "model": serializers.CharField(),
        "usage": inline_serializer(
            "EmbeddingUsage",
            {
                "prompt_tokens": serializers.IntegerField(),
                "total_tokens": serializers.IntegerField(),
            },
        ),
    },
)
