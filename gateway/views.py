"""OpenAI-compatible endpoints (``/v1``), authenticated by a project API key.

Thin: read the request, call ``gateway.services``, shape the HTTP answer. DRF views only so that
they appear in the OpenAPI schema: the key is checked by ``gateway_authenticate`` (OpenAI's error
words and shapes, not DRF's), the body is parsed by ``gateway.services`` as OpenAI parses it, and
the handlers are coroutines (a reply is awaited, never holding a thread). Never cookie
authenticated, hence exempt from CSRF. The key is never logged nor echoed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from django.http import HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request

from core import idempotency
from core.api import AsyncAPIView
from core.db import db_sync_to_async
from core.errors import ServiceError
from core.schema import IDEMPOTENCY_PARAMETER, OPENAI_ERROR

from . import moderation
from . import services as gateway_services
from .moderation import CheckFirst
from .schema import (
    CHAT_COMPLETION_EVENTS,
    CHAT_COMPLETION_REQUEST,
    CHAT_COMPLETION_RESPONSE,
    MODEL,
    MODEL_LIST,
)
from .services import GatewayCall, GatewayStream

logger = logging.getLogger(__name__)

# The operations' security requirements. drf-spectacular annotates ``auth`` as a list of
# names, yet writes it into the schema as it is: OpenAPI wants requirement objects.
KEY_AUTH: Any = [{"projectKey": []}]


def error_response(error: ServiceError) -> JsonResponse:
    """A refusal as OpenAI answers it: the error table's status, body and retry headers."""
    response = JsonResponse(error.body(), status=error.status, headers=error.headers())
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


class OpenAIEndpoint(AsyncAPIView):
    authentication_classes: list[Any] = []  # gateway_authenticate: OpenAI's 401, not DRF's
    permission_classes: list[Any] = []

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # OpenAI answers JSON or SSE whatever Accept says; so do we (never a 406).
        return super().perform_content_negotiation(request, force=True)


class ModelListView(OpenAIEndpoint):
    @extend_schema(
        operation_id="v1_models_list",
        auth=KEY_AUTH,
        responses={200: MODEL_LIST, 401: OPENAI_ERROR, 403: OPENAI_ERROR},
        tags=["OpenAI-compatible"],
    )
    async def get(self, request: Request) -> HttpResponse:
        try:
            listing = await db_sync_to_async(gateway_services.models_list)(
                authorization=request.headers.get("Authorization")
            )
        except ServiceError as error:
            return error_response(error)
        return JsonResponse(listing)


class ModelDetailView(OpenAIEndpoint):
    @extend_schema(
        operation_id="v1_models_retrieve",
        auth=KEY_AUTH,
        responses={200: MODEL, 401: OPENAI_ERROR, 403: OPENAI_ERROR, 404: OPENAI_ERROR},
        tags=["OpenAI-compatible"],
    )
    async def get(self, request: Request, model: str) -> HttpResponse:
        try:
            entry = await db_sync_to_async(gateway_services.model_get)(
                authorization=request.headers.get("Authorization"), model=model
            )
        except ServiceError as error:
            return error_response(error)
        return JsonResponse(entry)


class ChatCompletionsView(OpenAIEndpoint):
    @extend_schema(
        operation_id="v1_chat_completions_create",
        auth=KEY_AUTH,
        request=CHAT_COMPLETION_REQUEST,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={
            (200, "application/json"): CHAT_COMPLETION_RESPONSE,
            (200, "text/event-stream"): CHAT_COMPLETION_EVENTS,
            **{code: OPENAI_ERROR for code in (400, 401, 403, 404, 409, 429, 500, 502, 503, 504)},
        },
        tags=["OpenAI-compatible"],
    )
    async def post(self, request: Request) -> HttpResponseBase:
        authorization = request.headers.get("Authorization")
        body = request.body
        idempotency_key = request.headers.get(idempotency.HEADER)
        if idempotency_key is None:
            # The key check and the reserve in one trip to the database thread: each trip is
            # a thread hop, a tenth of a call's CPU (BENCHMARKS.md).
            def prepare() -> GatewayCall | CheckFirst:
                key = gateway_services.gateway_authenticate(
                    authorization=authorization, scopes=("chat",)
                )
                return moderation.chat_prepare_or_check(key=key, body=body)

            response, _ = await _chat_completions(prepare)
            return response
        try:
            api_key = await db_sync_to_async(gateway_services.gateway_authenticate)(
                authorization=authorization, scopes=("chat",)
            )
        except ServiceError as error:
            return error_response(error)
        try:
            started = await db_sync_to_async(idempotency.idempotency_begin)(
                caller=api_key, key=idempotency_key, fingerprint=body
            )
        except ServiceError as error:
            return error_response(error)
        if isinstance(started, idempotency.Replay):
            return started.response()
        try:
            response, completed = await _chat_completions(
                lambda: moderation.chat_prepare_or_check(key=api_key, body=body)
            )
        except BaseException:  # the client left: nothing to replay, a retry runs again
            await asyncio.shield(db_sync_to_async(idempotency.idempotency_abandon)(record=started))
            raise
        return await idempotency.remember(started, response, completed=completed)


def _never() -> bool:
    return False


async def _chat_completions(
    prepare: Callable[[], GatewayCall | CheckFirst],
) -> tuple[HttpResponseBase, Callable[[], bool]]:
    """The answer, and whether it completed (for a stream: known once it has been sent).
    ``prepare``: the database work before the upstream call (``chat_prepare``, or what
    moderation checks first), run on the database thread."""
    try:
        prepared = await db_sync_to_async(prepare)()
        if isinstance(prepared, CheckFirst):
            # The input is checked before the chat call is reserved: refused, it costs only
            # the check.
            await moderation.check(prepared)
            prepared = await db_sync_to_async(gateway_services.chat_prepare)(
                key=prepared.key, body=prepared.body
            )
        call = prepared
        if not call.stream:
            return JsonResponse(await gateway_services.complete(call)), _never
        stream = GatewayStream(call)
        await stream.open()
    except ServiceError as error:
        return error_response(error), _never
    except Exception:  # a failure of ours: an answer in OpenAI's shape, never an HTML page
        logger.exception("chat completion failed")
        return error_response(ServiceError(code="internal_error")), _never
    response = StreamingHttpResponse(stream.sse(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # no proxy buffering of the event stream
    return response, lambda: stream.completed
