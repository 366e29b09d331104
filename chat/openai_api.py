"""OpenAI-compatible endpoints (``/v1``), authenticated by a project API key.

Thin: read the request, call `gateway_services`, shape the HTTP answer. Never cookie
authenticated, hence exempt from CSRF. The key is never logged nor echoed.
"""

from __future__ import annotations

import json
import math

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from accounts.models import ApiKey

from . import gateway_services, idempotency
from .gateway_services import GatewayCall, GatewayError, GatewayStream


def error_response(error: GatewayError) -> JsonResponse:
    response = JsonResponse(error.body(), status=error.status)
    if error.retry_after is not None:
        response["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


@csrf_exempt
@require_GET
async def models(request: HttpRequest) -> HttpResponse:
    try:
        listing = await sync_to_async(gateway_services.models_list)(
            authorization=request.headers.get("Authorization")
        )
    except GatewayError as error:
        return error_response(error)
    return JsonResponse(listing)


@csrf_exempt
@require_POST
async def chat_completions(request: HttpRequest) -> HttpResponse:
    try:
        api_key = await sync_to_async(gateway_services.gateway_authenticate)(
            authorization=request.headers.get("Authorization"), scopes=("chat",)
        )
    except GatewayError as error:
        return error_response(error)
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is None:
        return await _chat_completions(request, api_key)
    try:
        started = await sync_to_async(idempotency.idempotency_begin)(
            api_key=api_key,
            key=idempotency_key,
            body=request.body,
            stream=gateway_services.wants_stream(request.body),
        )
    except GatewayError as error:
        return error_response(error)
    if isinstance(started, idempotency.Replay):
        response = JsonResponse(started.body, status=started.status)
        response["Idempotent-Replayed"] = "true"
        return response
    response = await _chat_completions(request, api_key)
    await sync_to_async(idempotency.idempotency_finish)(
        record=started, status=response.status_code, body=json.loads(response.content)
    )
    return response


async def _chat_completions(request: HttpRequest, api_key: ApiKey) -> HttpResponse:
    try:
        call: GatewayCall = await sync_to_async(gateway_services.chat_prepare)(
            key=api_key, body=request.body
        )
        if not call.stream:
            return JsonResponse(await gateway_services.complete(call))
        stream = GatewayStream(call)
        await stream.open()
    except GatewayError as error:
        return error_response(error)
    response = StreamingHttpResponse(stream.sse(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # no proxy buffering of the event stream
    return response
