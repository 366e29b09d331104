"""``/v1/responses``: thin views over ``gateway.responses``, as ``gateway.views`` does for chat
completions (the key checked by ``gateway_authenticate``, OpenAI's error shapes, coroutine
handlers, never cookie authenticated)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from django.http import HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request

from core import idempotency
from core.db import db_sync_to_async
from core.errors import ServiceError
from core.schema import IDEMPOTENCY_PARAMETER, OPENAI_ERROR

from . import responses
from .responses import PendingCheck, ResponseCall, ResponseStream
from .schema_responses import (
    INPUT_ITEM_LIST,
    INPUT_ITEM_PARAMETERS,
    RESPONSE,
    RESPONSE_CREATE_REQUEST,
    RESPONSE_DELETED,
    RESPONSE_EVENTS,
)
from .services import gateway_authenticate
from .views import KEY_AUTH, OpenAIEndpoint, error_response

logger = logging.getLogger(__name__)

TAGS = ["OpenAI-compatible"]
# An Idempotency-Key is the caller's, whichever endpoint it is sent to: the path is part of
# what makes two requests the same.
FINGERPRINT_PREFIX = b"POST /v1/responses\n"


def _never() -> bool:
    return False


async def _create(
    prepare: Callable[[], ResponseCall | PendingCheck],
) -> tuple[HttpResponseBase, Callable[[], bool]]:
    """The answer, and whether it completed (for a stream: known once it has been sent)."""
    try:
        call = await responses.response_start(prepare)
        if not call.parsed.stream:
            return JsonResponse(await responses.response_complete(call)), _never
        stream = ResponseStream(call)
        await stream.open()
    except ServiceError as error:
        return error_response(error), _never
    except Exception:  # a failure of ours: an answer in OpenAI's shape, never an HTML page
        logger.exception("response create failed")
        return error_response(ServiceError(code="internal_error")), _never
    response = StreamingHttpResponse(stream.sse(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # no proxy buffering of the event stream
    return response, lambda: stream.completed


class ResponsesView(OpenAIEndpoint):
    @extend_schema(
        operation_id="v1_responses_create",
        auth=KEY_AUTH,
        request=RESPONSE_CREATE_REQUEST,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={
            (200, "application/json"): RESPONSE,
            (200, "text/event-stream"): RESPONSE_EVENTS,
            **{code: OPENAI_ERROR for code in (400, 401, 403, 404, 409, 429, 500, 502, 503, 504)},
        },
        tags=TAGS,
    )
    async def post(self, request: Request) -> HttpResponseBase:
        authorization = request.headers.get("Authorization")
        body = request.body
        idempotency_key = request.headers.get(idempotency.HEADER)
        if idempotency_key is None:
            # The key check and the reserve in one trip to the database thread.
            def prepare() -> ResponseCall | PendingCheck:
                key = gateway_authenticate(authorization=authorization, scopes=("chat",))
                return responses.response_prepare_or_check(key=key, body=body)

            response, _ = await _create(prepare)
            return response
        try:
            api_key = await db_sync_to_async(gateway_authenticate)(
                authorization=authorization, scopes=("chat",)
            )
            started = await db_sync_to_async(idempotency.idempotency_begin)(
                caller=api_key, key=idempotency_key, fingerprint=FINGERPRINT_PREFIX + body
            )
        except ServiceError as error:
            return error_response(error)
        if isinstance(started, idempotency.Replay):
            return started.response()
        try:
            response, completed = await _create(
                lambda: responses.response_prepare_or_check(key=api_key, body=body)
            )
        except BaseException:  # the client left: nothing to replay, a retry runs again
            await asyncio.shield(db_sync_to_async(idempotency.idempotency_abandon)(record=started))
            raise
        return await idempotency.remember(started, response, completed=completed)


class ResponseDetailView(OpenAIEndpoint):
    @extend_schema(
        operation_id="v1_responses_retrieve",
        auth=KEY_AUTH,
        responses={200: RESPONSE, 401: OPENAI_ERROR, 403: OPENAI_ERROR, 404: OPENAI_ERROR},
        tags=TAGS,
    )
    async def get(self, request: Request, response_id: str) -> HttpResponse:
        try:
            answer = await db_sync_to_async(responses.response_retrieve)(
                authorization=request.headers.get("Authorization"), response=response_id
            )
        except ServiceError as error:
            return error_response(error)
        return JsonResponse(answer)

    @extend_schema(
        operation_id="v1_responses_destroy",
        auth=KEY_AUTH,
        responses={
            200: RESPONSE_DELETED,
            401: OPENAI_ERROR,
            403: OPENAI_ERROR,
            404: OPENAI_ERROR,
        },
        tags=TAGS,
    )
    async def delete(self, request: Request, response_id: str) -> HttpResponse:
        try:
            answer = await db_sync_to_async(responses.response_delete)(
                authorization=request.headers.get("Authorization"), response=response_id
            )
        except ServiceError as error:
            return error_response(error)
        return JsonResponse(answer)


class ResponseInputItemsView(OpenAIEndpoint):
    @extend_schema(
        operation_id="v1_responses_input_items_list",
        auth=KEY_AUTH,
        parameters=INPUT_ITEM_PARAMETERS,
        responses={
            200: INPUT_ITEM_LIST,
            400: OPENAI_ERROR,
            401: OPENAI_ERROR,
            403: OPENAI_ERROR,
            404: OPENAI_ERROR,
        },
        tags=TAGS,
    )
    async def get(self, request: Request, response_id: str) -> HttpResponse:
        try:
            answer = await db_sync_to_async(responses.response_input_items)(
                authorization=request.headers.get("Authorization"),
                response=response_id,
                query={name: str(value) for name, value in request.query_params.items()},
            )
        except ServiceError as error:
            return error_response(error)
        return JsonResponse(answer)
