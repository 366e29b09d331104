"""OpenAI-compatible endpoints (``/v1``), authenticated by a project API key.

Thin: read the request, call `gateway_services`, shape the HTTP answer. Never cookie
authenticated, hence exempt from CSRF. The key is never logged nor echoed.
"""

from __future__ import annotations

import math

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from . import gateway_services
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
        call: GatewayCall = await sync_to_async(gateway_services.chat_prepare)(
            authorization=request.headers.get("Authorization"), body=request.body
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
