"""OpenAPI shapes of the OpenAI-compatible endpoints, for the schema only.

The endpoints parse bodies as OpenAI does (``gateway.services.parse_chat_body``); these
serializers describe that contract for ``/api/schema/`` and its docs page.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import inline_serializer
from rest_framework import serializers

from core.schema import server_sent_event

MODEL = inline_serializer(
    "OpenAIModel",
    {
        "id": serializers.CharField(),
        "object": serializers.ChoiceField(choices=["model"]),
        "created": serializers.IntegerField(),
        "owned_by": serializers.CharField(),
    },
)

MODEL_LIST = inline_serializer(
    "OpenAIModelList",
    {"object": serializers.ChoiceField(choices=["list"]), "data": MODEL.__class__(many=True)},
)

_MESSAGE = inline_serializer(
    "ChatMessageInput",
    {
        "role": serializers.ChoiceField(
            choices=["system", "developer", "user", "assistant", "tool", "function"]
        ),
        "content": serializers.JSONField(
            allow_null=True, required=False, help_text="Text, or an array of content parts."
        ),
        "name": serializers.CharField(required=False),
        "tool_call_id": serializers.CharField(required=False),
        "tool_calls": serializers.ListField(child=serializers.DictField(), required=False),
    },
)

# Any: the DRF stubs type each keyword separately, so a shared ** of options needs it.
_OPTIONAL: dict[str, Any] = {"required": False, "allow_null": True}

CHAT_COMPLETION_REQUEST = inline_serializer(
    "ChatCompletionRequest",
    {
        "model": serializers.CharField(help_text="One of GET /v1/models."),
        "messages": _MESSAGE.__class__(many=True, allow_empty=False),
        "temperature": serializers.FloatField(**_OPTIONAL, min_value=0, max_value=2),
        "top_p": serializers.FloatField(**_OPTIONAL, min_value=0, max_value=1),
        "max_tokens": serializers.IntegerField(
            **_OPTIONAL,
            min_value=1,
            help_text="The reply cap; without one, the model's longest reply within what the "
            "budgets can pay for. Sent upstream as given.",
        ),
        "max_completion_tokens": serializers.IntegerField(
            **_OPTIONAL, min_value=1, help_text="As max_tokens; sent upstream under this name."
        ),
        "stop": serializers.JSONField(
            **_OPTIONAL, help_text="A string, or an array of up to 4 strings."
        ),
        "seed": serializers.IntegerField(**_OPTIONAL),
        "presence_penalty": serializers.FloatField(**_OPTIONAL, min_value=-2, max_value=2),
        "frequency_penalty": serializers.FloatField(**_OPTIONAL, min_value=-2, max_value=2),
        "logit_bias": serializers.DictField(
            child=serializers.IntegerField(min_value=-100, max_value=100), **_OPTIONAL
        ),
        "logprobs": serializers.BooleanField(**_OPTIONAL),
        "top_logprobs": serializers.IntegerField(**_OPTIONAL, min_value=0, max_value=20),
        "response_format": serializers.DictField(**_OPTIONAL),
        "tools": serializers.ListField(child=serializers.DictField(), **_OPTIONAL),
        "tool_choice": serializers.JSONField(
            **_OPTIONAL, help_text="'auto', 'none', 'required' or an object."
        ),
        "parallel_tool_calls": serializers.BooleanField(**_OPTIONAL),
        "n": serializers.IntegerField(**_OPTIONAL, min_value=1, max_value=1, help_text="Only 1."),
        "user": serializers.CharField(**_OPTIONAL),
        "reasoning_effort": serializers.CharField(**_OPTIONAL),
        "service_tier": serializers.CharField(**_OPTIONAL),
        "metadata": serializers.DictField(child=serializers.CharField(), **_OPTIONAL),
        "store": serializers.BooleanField(**_OPTIONAL),
        "modalities": serializers.ListField(child=serializers.CharField(), **_OPTIONAL),
        "audio": serializers.DictField(**_OPTIONAL),
        "prediction": serializers.DictField(**_OPTIONAL),
        "prompt_cache_key": serializers.CharField(**_OPTIONAL),
        "safety_identifier": serializers.CharField(**_OPTIONAL),
        "verbosity": serializers.CharField(**_OPTIONAL),
        "web_search_options": serializers.DictField(**_OPTIONAL),
        "stream": serializers.BooleanField(**_OPTIONAL),
        "stream_options": inline_serializer(
            "StreamOptions",
            {"include_usage": serializers.BooleanField(required=False)},
            **_OPTIONAL,
        ),
    },
)

_USAGE = inline_serializer(
    "CompletionUsage",
    {
        "prompt_tokens": serializers.IntegerField(),
        "completion_tokens": serializers.IntegerField(),
        "total_tokens": serializers.IntegerField(),
        "prompt_tokens_details": inline_serializer(
            "PromptTokensDetails", {"cached_tokens": serializers.IntegerField()}
        ),
    },
)

CHAT_COMPLETION_RESPONSE = inline_serializer(
    "ChatCompletion",
    {
        "id": serializers.CharField(),
        "object": serializers.ChoiceField(choices=["chat.completion"]),
        "created": serializers.IntegerField(),
        "model": serializers.CharField(),
        "choices": inline_serializer(
            "ChatCompletionChoice",
            {
                "index": serializers.IntegerField(),
                "message": inline_serializer(
                    "ChatCompletionMessage",
                    {
                        "role": serializers.ChoiceField(choices=["assistant"]),
                        "content": serializers.CharField(allow_null=True),
                        "tool_calls": serializers.ListField(
                            child=serializers.DictField(), required=False
                        ),
                        "refusal": serializers.CharField(required=False, allow_null=True),
                    },
                ),
                "logprobs": serializers.DictField(allow_null=True),
                "finish_reason": serializers.CharField(),
            },
            many=True,
        ),
        "usage": _USAGE,
    },
)


CHAT_COMPLETION_EVENTS = server_sent_event(
    events=None,
    description="With stream: true, chat.completion.chunk objects (with stream_options."
    "include_usage a last one with usage and no choices), then [DONE]; an error mid-stream is "
    "an {error} object, then [DONE].",
)
