"""OpenAPI shapes of ``/v1/responses``, for the schema only.

The endpoints parse bodies as OpenAI documents the Responses API (``gateway.responses``);
these serializers describe that contract for ``/api/schema/`` and its docs page.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers

from core.schema import server_sent_event

# Any: the DRF stubs type each keyword separately, so a shared ** of options needs it.
_OPTIONAL: dict[str, Any] = {"required": False, "allow_null": True}
_NULLABLE: dict[str, Any] = {"allow_null": True}

RESPONSE_CREATE_REQUEST = inline_serializer(
    "ResponseCreateRequest",
    {
        "model": serializers.CharField(help_text="One of GET /v1/models."),
        "input": serializers.JSONField(
            help_text="Text (one user message), or an array of input items: messages (role "
            "user, assistant, system or developer; content text or input_text / input_image "
            "parts), function_call and function_call_output items."
        ),
        "instructions": serializers.CharField(
            **_OPTIONAL,
            help_text="A system message put first; not carried over to responses that chain "
            "from this one.",
        ),
        "previous_response_id": serializers.CharField(
            **_OPTIONAL,
            help_text="A stored response of this project to continue: its chain is the history.",
        ),
        "store": serializers.BooleanField(
            **_OPTIONAL,
            help_text="Keep the response (default true): retrieve it, list its input items, "
            "chain from it.",
        ),
        "stream": serializers.BooleanField(
            **_OPTIONAL, help_text="Answer with the Responses API's typed events."
        ),
        "stream_options": serializers.DictField(**_OPTIONAL),
        "tools": serializers.ListField(
            child=serializers.DictField(),
            **_OPTIONAL,
            help_text="Function tools: {type: 'function', name, description, parameters, strict}.",
        ),
        "tool_choice": serializers.JSONField(
            **_OPTIONAL, help_text="'none', 'auto', 'required' or {type: 'function', name}."
        ),
        "parallel_tool_calls": serializers.BooleanField(**_OPTIONAL),
        "text": serializers.DictField(
            **_OPTIONAL,
            help_text="{format: {type: 'text' | 'json_object' | 'json_schema', name, schema, "
            "strict}, verbosity}.",
        ),
        "max_output_tokens": serializers.IntegerField(
            **_OPTIONAL,
            min_value=1,
            help_text="The reply cap; without one, the model's longest reply within what the "
            "budgets can pay for.",
        ),
        "temperature": serializers.FloatField(**_OPTIONAL, min_value=0, max_value=2),
        "top_p": serializers.FloatField(**_OPTIONAL, min_value=0, max_value=1),
        "truncation": serializers.ChoiceField(
            choices=["auto", "disabled"],
            **_OPTIONAL,
            help_text="auto (the default here): the oldest history is left out to fit the "
            "context window; disabled: all of it, or a 400.",
        ),
        "metadata": serializers.DictField(child=serializers.CharField(), **_OPTIONAL),
        "user": serializers.CharField(**_OPTIONAL),
        "safety_identifier": serializers.CharField(**_OPTIONAL),
        "prompt_cache_key": serializers.CharField(**_OPTIONAL),
        "prompt_cache_retention": serializers.CharField(**_OPTIONAL),
        "service_tier": serializers.CharField(**_OPTIONAL),
        "reasoning": serializers.DictField(**_OPTIONAL, help_text="{effort}."),
    },
)

_USAGE = inline_serializer(
    "ResponseUsage",
    {
        "input_tokens": serializers.IntegerField(),
        "input_tokens_details": serializers.DictField(),
        "output_tokens": serializers.IntegerField(),
        "output_tokens_details": serializers.DictField(),
        "total_tokens": serializers.IntegerField(),
    },
    **_NULLABLE,
)

RESPONSE = inline_serializer(
    "Response",
    {
        "id": serializers.CharField(),
        "object": serializers.ChoiceField(choices=["response"]),
        "created_at": serializers.IntegerField(),
        "status": serializers.ChoiceField(
            choices=["completed", "incomplete", "failed", "cancelled", "in_progress"]
        ),
        "background": serializers.BooleanField(),
        "completed_at": serializers.IntegerField(**_NULLABLE),
        "error": serializers.DictField(**_NULLABLE),
        "incomplete_details": serializers.DictField(**_NULLABLE),
        "instructions": serializers.CharField(**_NULLABLE),
        "max_output_tokens": serializers.IntegerField(**_NULLABLE),
        "max_tool_calls": serializers.IntegerField(**_NULLABLE),
        "model": serializers.CharField(),
        "output": serializers.ListField(
            child=serializers.DictField(),
            help_text="message items (output_text parts) and function_call items.",
        ),
        "parallel_tool_calls": serializers.BooleanField(),
        "previous_response_id": serializers.CharField(**_NULLABLE),
        "prompt_cache_key": serializers.CharField(**_NULLABLE),
        "prompt_cache_retention": serializers.CharField(**_NULLABLE),
        "reasoning": serializers.DictField(**_NULLABLE),
        "safety_identifier": serializers.CharField(**_NULLABLE),
        "service_tier": serializers.CharField(**_NULLABLE),
        "store": serializers.BooleanField(),
        "temperature": serializers.FloatField(**_NULLABLE),
        "text": serializers.DictField(),
        "tool_choice": serializers.JSONField(),
        "tools": serializers.ListField(child=serializers.DictField()),
        "top_logprobs": serializers.IntegerField(**_NULLABLE),
        "top_p": serializers.FloatField(**_NULLABLE),
        "truncation": serializers.CharField(),
        "usage": _USAGE,
        "user": serializers.CharField(**_NULLABLE),
        "metadata": serializers.DictField(child=serializers.CharField()),
    },
)

RESPONSE_DELETED = inline_serializer(
    "ResponseDeleted",
    {
        "id": serializers.CharField(),
        "object": serializers.ChoiceField(choices=["response"]),
        "deleted": serializers.BooleanField(),
    },
)

INPUT_ITEM_LIST = inline_serializer(
    "ResponseInputItemList",
    {
        "object": serializers.ChoiceField(choices=["list"]),
        "data": serializers.ListField(
            child=serializers.DictField(),
            help_text="message, function_call and function_call_output items, each with its id.",
        ),
        "first_id": serializers.CharField(**_NULLABLE),
        "last_id": serializers.CharField(**_NULLABLE),
        "has_more": serializers.BooleanField(),
    },
)

INPUT_ITEM_PARAMETERS = [
    OpenApiParameter(
        "after", OpenApiTypes.STR, OpenApiParameter.QUERY, description="An item id: list after it."
    ),
    OpenApiParameter(
        "before",
        OpenApiTypes.STR,
        OpenApiParameter.QUERY,
        description="An item id: list before it.",
    ),
    OpenApiParameter(
        "limit",
        OpenApiTypes.INT,
        OpenApiParameter.QUERY,
        description="1 to 100 items (default 20).",
    ),
    OpenApiParameter(
        "order",
        OpenApiTypes.STR,
        OpenApiParameter.QUERY,
        enum=["asc", "desc"],
        description="desc (the default): the last item first.",
    ),
    OpenApiParameter(
        "include",
        OpenApiTypes.STR,
        OpenApiParameter.QUERY,
        many=True,
        description="Accepted, changes nothing: every item is listed whole.",
    ),
]

STREAM_EVENT_TYPES = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "error",
]

RESPONSE_EVENTS = server_sent_event(
    events=STREAM_EVENT_TYPES,
    description="With stream: true, the Responses API's typed events, each with its "
    "sequence_number: response.created, response.in_progress, then for each output item "
    "output_item.added, its content (content_part.added, output_text.delta…, "
    "output_text.done, content_part.done; or function_call_arguments.delta…, "
    "function_call_arguments.done) and output_item.done; then response.completed (or "
    "response.incomplete at max_output_tokens). A failure after the first event: an error "
    "event, then response.failed.",
)
