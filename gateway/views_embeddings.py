"""``POST /v1/embeddings``: OpenAI's embeddings call, authenticated by a project API key.

Thin: authenticate, validate and reserve on the database thread in one trip
(``gateway.embeddings``), make the metered call, answer in OpenAI's shapes. The official SDK's
``client.embeddings.create(...)`` works unchanged (it asks for base64 unless told otherwise).
"""

from __future__ import annotations

import logging

from django.http import HttpResponse, JsonResponse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request

from core.db import db_sync_to_async
from core.errors import ServiceError
from core.schema import OPENAI_ERROR
from providers.llm.local_provider import EMBEDDING_CONTEXT

from . import embeddings
from . import services as gateway_services
from .embeddings import EmbeddingsCall
from .schema_embeddings import EMBEDDING_REQUEST, EMBEDDING_RESPONSE
from .views import KEY_AUTH, OpenAIEndpoint, error_response

logger = logging.getLogger(__name__)


class EmbeddingsView(OpenAIEndpoint):
    @extend_schema(
        operation_id="v1_embeddings_create",
        description="OpenAI's embeddings call: vectors for each input, from a connection's "
        "model (passed through) or the built-in model (llama.cpp's embedding mode, unit "
        f"length, at most {EMBEDDING_CONTEXT} tokens an input). Metered by input tokens: "
        "budgets and rate limits refuse before anything is sent, and every call made is one "
        "ledger row.",
        auth=KEY_AUTH,
        request=EMBEDDING_REQUEST,
        responses={
            200: EMBEDDING_RESPONSE,
            **{code: OPENAI_ERROR for code in (400, 401, 403, 404, 429, 500, 502, 503, 504)},
        },
        tags=["OpenAI-compatible"],
    )
    async def post(self, request: Request) -> HttpResponse:
        authorization = request.headers.get("Authorization")
        body = request.body

        # The key check and the reserve in one trip to the database thread.
        def prepare() -> EmbeddingsCall:
            key = gateway_services.gateway_authenticate(
                authorization=authorization, scopes=("chat",)
            )
            return embeddings.embeddings_prepare(key=key, body=body)

        try:
            call = await db_sync_to_async(prepare)()
            answer = await embeddings.embeddings_create(call)
        except ServiceError as error:
            return error_response(error)
        except Exception:  # a failure of ours: an answer in OpenAI's shape, never an HTML page
            logger.exception("embeddings failed")
            return error_response(ServiceError(code="internal_error"))
        return JsonResponse(answer)
