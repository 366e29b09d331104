"""``POST /v1/moderations``: OpenAI's moderation call, authenticated by a project API key.

Thin: authenticate and prepare on the database thread in one trip (``gateway.moderation``),
then, when a connection answers, its metered calls; the answer or the refusal in OpenAI's
shapes. Who answers (a connection or the project's pattern list) is decided in
``gateway.moderation``; the official SDK's ``client.moderations.create(...)`` works unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from django.http import HttpResponse, JsonResponse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request

from core.db import db_sync_to_async
from core.errors import ServiceError
from core.schema import OPENAI_ERROR

from . import moderation
from . import services as gateway_services
from .moderation import PassThrough
from .views import KEY_AUTH, OpenAIEndpoint, error_response

logger = logging.getLogger(__name__)

MODERATION_REQUEST = inline_serializer(
    "ModerationRequest",
    {
        "input": serializers.JSONField(
            help_text="A string, an array of strings (one result each, at most "
            f"{moderation.MAX_INPUTS}), or an array of text content parts (one result). "
            "Image parts are refused: only text is checked."
        ),
        "model": serializers.CharField(
            required=False,
            help_text="The moderation model, for a connection that answers /v1/moderations "
            "(default omni-moderation-latest). Answered by the project's pattern list when "
            "none does.",
        ),
    },
)

MODERATION_RESPONSE = inline_serializer(
    "ModerationResponse",
    {
        "id": serializers.CharField(),
        "model": serializers.CharField(
            help_text="The model that answered; “patterns” for the project's pattern list."
        ),
        "results": inline_serializer(
            "ModerationResult",
            {
                "flagged": serializers.BooleanField(),
                "categories": serializers.DictField(
                    child=serializers.BooleanField(),
                    help_text="Every OpenAI category, and any other category flagged.",
                ),
                "category_scores": serializers.DictField(child=serializers.FloatField()),
                "category_applied_input_types": serializers.DictField(
                    child=serializers.ListField(child=serializers.CharField())
                ),
            },
            many=True,
        ),
    },
)


class ModerationsView(OpenAIEndpoint):
    @extend_schema(
        operation_id="v1_moderations_create",
        auth=KEY_AUTH,
        request=MODERATION_REQUEST,
        responses={
            200: MODERATION_RESPONSE,
            **{code: OPENAI_ERROR for code in (400, 401, 403, 404, 429, 500, 502, 503, 504)},
        },
        tags=["OpenAI-compatible"],
    )
    async def post(self, request: Request) -> HttpResponse:
        authorization = request.headers.get("Authorization")
        body = request.body

        def prepare() -> PassThrough | dict[str, Any]:
            key = gateway_services.gateway_authenticate(
                authorization=authorization, scopes=("chat",)
            )
            return moderation.moderations_prepare(key=key, body=body)

        try:
            prepared = await db_sync_to_async(prepare)()
            if isinstance(prepared, PassThrough):
                prepared = await moderation.moderations_create(prepared)
        except ServiceError as error:
            return error_response(error)
        except Exception:  # a failure of ours: an answer in OpenAI's shape, never an HTML page
            logger.exception("moderation failed")
            return error_response(ServiceError(code="internal_error"))
        return JsonResponse(prepared)
