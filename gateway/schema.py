"""OpenAPI shapes of the OpenAI-compatible endpoints, for the schema only.

The endpoints parse bodies as OpenAI does (``gateway.services.parse_chat_body``); these
serializers describe that contract for ``/api/schema/`` and its docs page.
"""

from __future__ import annotations

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
            choices=["system", "developer", "user", "assistant", "tool"]
        ),
        "content": serializers.CharField(
            allow_null=True, required=False, help_text="Text, or an array of content parts."
        ),
        "name": serializers.CharField(required=False),
        "tool_call_id": serializers.CharField(required=False),
    },
)

CHAT_COMPLETION_REQUEST = inline_serializer(
    "ChatCompletionRequest",
    {
        "model": serializers.CharField(help_text="One of GET /v1/models."),
        "messages": _MESSAGE.__class__(many=True, allow_empty=False),
        "temperature": serializers.FloatField(required=False, allow_null=True),
        "top_p": serializers.FloatField(required=False, allow_null=True),
        "max_tokens": serializers.IntegerField(required=False, allow_null=True, min_value=1),
        "max_completion_tokens": serializers.IntegerField(
            required=False, allow_null=True, min_value=1
        ),
        "stop": serializers.ListField(
            child=serializers.CharField(), required=False, allow_null=True
        ),
        "seed": serializers.IntegerField(required=False, allow_null=True),
        "presence_penalty": serializers.FloatField(required=False, allow_null=True),
        "frequency_penalty": serializers.FloatField(required=False, allow_null=True),
        "response_format": serializers.DictField(required=False, allow_null=True),
        "tools": serializers.ListField(
            child=serializers.DictField(), required=False, allow_null=True
        ),
        "tool_choice": serializers.JSONField(
            required=False, allow_null=True, help_text="'auto', 'none', 'required' or an object."
        ),
        "parallel_tool_calls": serializers.BooleanField(required=False, allow_null=True),
        "n": serializers.IntegerField(
            required=False, allow_null=True, min_value=1, max_value=1, help_text="Only 1."
        ),
        "user": serializers.CharField(required=False, allow_null=True),
        "stream": serializers.BooleanField(required=False, allow_null=True),
        "stream_options": inline_serializer(
            "StreamOptions",
            {"include_usage": serializers.BooleanField(required=False)},
            required=False,
            allow_null=True,
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
    "an {error} object.",
)
