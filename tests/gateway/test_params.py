"""`parse_chat_body`: every Chat Completions parameter checked for type and range as OpenAI
documents it, refused with a 400 naming the parameter, and passed on unchanged otherwise."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import pytest

from core.errors import ApiError
from gateway.params import ParsedChat, parse_chat_body
from providers.llm.base import ChatRequest

HELLO = [{"role": "user", "content": "hi"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


def parse(**params: Any) -> ParsedChat:
    return parse_chat_body(body=json.dumps({"model": "m", "messages": HELLO, **params}).encode())


def refusal(body: dict[str, Any] | bytes) -> ApiError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ApiError) as caught:
        parse_chat_body(body=raw)
    error = caught.value
    assert error.status == 400
    assert error.type == "invalid_request_error"
    return error


def refused(**params: Any) -> ApiError:
    return refusal({"model": "m", "messages": HELLO, **params})


# --- every documented parameter, passed on unchanged ------------------------------------------

EVERYTHING: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": 0.9,
    "frequency_penalty": -0.5,
    "presence_penalty": 1.5,
    "logit_bias": {"50256": -100, "15339": 5},
    "logprobs": True,
    "top_logprobs": 3,
    "max_tokens": 100,
    "max_completion_tokens": 50,
    "seed": 42,
    "stop": ["\n\n", "END"],
    "response_format": {"type": "json_object"},
    "tools": [TOOL],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "user": "user-1",
    "reasoning_effort": "low",
    "service_tier": "flex",
    "metadata": {"team": "search", "run": "7"},
    "store": True,
    "modalities": ["text", "audio"],
    "audio": {"format": "mp3", "voice": "alloy"},
    "prediction": {"type": "content", "content": "old text"},
    "prompt_cache_key": "tenant-7",
    "prompt_cache_options": {"mode": "implicit", "ttl": "30m"},
    "prompt_cache_retention": "24h",
    "safety_identifier": "hash-of-user",
    "verbosity": "low",
    "web_search_options": {"search_context_size": "low"},
    "moderation": {"model": "omni-moderation-latest", "policy": {"input": {"mode": "score"}}},
}


def test_every_documented_parameter_reaches_the_request_unchanged():
    parsed = parse(**EVERYTHING, n=1, stream=True, stream_options={"include_usage": True})

    for name, value in EVERYTHING.items():
        assert getattr(parsed.request, name) == value, name
    assert parsed.request.model == "m"
    assert parsed.request.messages == HELLO
    assert parsed.stream is True
    assert parsed.include_usage is True


def test_every_request_field_is_a_parameter_the_parser_knows():
    # A field the parser never fills would be a parameter silently dropped.
    names = {f.name for f in fields(ChatRequest)} - {"model", "messages"}
    assert names == set(EVERYTHING)


@pytest.mark.parametrize("name", sorted(EVERYTHING))
def test_null_means_not_sent(name):
    assert getattr(parse(**{name: None}).request, name) is None


def test_null_stream_options_and_n_mean_not_sent():
    parsed = parse(n=None, stream=None, stream_options=None)

    assert (parsed.stream, parsed.include_usage) == (False, False)


# --- the reply cap ---------------------------------------------------------------------------


def test_max_completion_tokens_is_not_rewritten_to_max_tokens():
    parsed = parse(max_completion_tokens=7)

    assert parsed.request.max_completion_tokens == 7
    assert parsed.request.max_tokens is None
    assert parsed.max_tokens == 7


def test_max_tokens_stays_max_tokens():
    parsed = parse(max_tokens=9)

    assert (parsed.request.max_tokens, parsed.request.max_completion_tokens) == (9, None)
    assert parsed.max_tokens == 9


def test_with_both_caps_each_is_kept_and_max_completion_tokens_is_the_cap():
    parsed = parse(max_tokens=9, max_completion_tokens=7)

    assert (parsed.request.max_tokens, parsed.request.max_completion_tokens) == (9, 7)
    assert parsed.max_tokens == 7


def test_without_a_cap_there_is_none():
    assert parse().max_tokens is None


# --- accepted values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "name", "expected"),
    [
        ({"temperature": 0}, "temperature", 0),
        ({"temperature": 2}, "temperature", 2),
        ({"temperature": 1.25}, "temperature", 1.25),
        ({"top_p": 0}, "top_p", 0),
        ({"top_p": 1}, "top_p", 1),
        ({"frequency_penalty": -2}, "frequency_penalty", -2),
        ({"frequency_penalty": 2.0}, "frequency_penalty", 2.0),
        ({"presence_penalty": -2.0}, "presence_penalty", -2.0),
        ({"presence_penalty": 2}, "presence_penalty", 2),
        ({"logit_bias": {}}, "logit_bias", {}),
        ({"logit_bias": {"0": 100, "7": -100}}, "logit_bias", {"0": 100, "7": -100}),
        ({"logprobs": False}, "logprobs", False),
        ({"logprobs": True, "top_logprobs": 0}, "top_logprobs", 0),
        ({"logprobs": True, "top_logprobs": 20}, "top_logprobs", 20),
        ({"max_tokens": 1}, "max_tokens", 1),
        ({"max_completion_tokens": 1}, "max_completion_tokens", 1),
        ({"seed": 0}, "seed", 0),
        ({"seed": -5}, "seed", -5),
        ({"seed": 2**63 - 1}, "seed", 2**63 - 1),
        ({"seed": -(2**63)}, "seed", -(2**63)),
        ({"stop": "END"}, "stop", ["END"]),  # a string is a list of one
        ({"stop": []}, "stop", []),
        ({"stop": ["a", "b", "c", "d"]}, "stop", ["a", "b", "c", "d"]),
        ({"response_format": {"type": "text"}}, "response_format", {"type": "text"}),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "Answer-1_x"}}},
            "response_format",
            {"type": "json_schema", "json_schema": {"name": "Answer-1_x"}},
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "answer",
                        "description": "One answer.",
                        "schema": {"type": "object"},
                        "strict": None,
                    },
                }
            },
            "response_format",
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "answer",
                    "description": "One answer.",
                    "schema": {"type": "object"},
                    "strict": None,
                },
            },
        ),
        ({"tools": []}, "tools", []),
        (
            {"tools": [{"type": "function", "function": {"name": "a" * 64}}]},
            "tools",
            [{"type": "function", "function": {"name": "a" * 64}}],
        ),
        ({"tool_choice": "none"}, "tool_choice", "none"),
        ({"tool_choice": "auto"}, "tool_choice", "auto"),
        ({"tool_choice": "required"}, "tool_choice", "required"),
        (
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {"mode": "required", "tools": [TOOL]},
                }
            },
            "tool_choice",
            {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [TOOL]}},
        ),
        ({"parallel_tool_calls": True}, "parallel_tool_calls", True),
        ({"user": ""}, "user", ""),
        ({"reasoning_effort": "none"}, "reasoning_effort", "none"),
        ({"reasoning_effort": "minimal"}, "reasoning_effort", "minimal"),
        ({"reasoning_effort": "medium"}, "reasoning_effort", "medium"),
        ({"reasoning_effort": "high"}, "reasoning_effort", "high"),
        ({"reasoning_effort": "xhigh"}, "reasoning_effort", "xhigh"),
        ({"service_tier": "auto"}, "service_tier", "auto"),
        ({"service_tier": "default"}, "service_tier", "default"),
        ({"service_tier": "scale"}, "service_tier", "scale"),
        ({"service_tier": "priority"}, "service_tier", "priority"),
        ({"metadata": {}}, "metadata", {}),
        (
            {"metadata": {f"k{i}": "v" for i in range(16)}},
            "metadata",
            {f"k{i}": "v" for i in range(16)},
        ),
        ({"metadata": {"k" * 64: "v" * 512}}, "metadata", {"k" * 64: "v" * 512}),
        ({"store": False}, "store", False),
        ({"modalities": ["text"]}, "modalities", ["text"]),
        (
            {"audio": {"format": "wav", "voice": {"id": "voice_1234"}}},
            "audio",
            {"format": "wav", "voice": {"id": "voice_1234"}},
        ),
        (
            {"prediction": {"type": "content", "content": [{"type": "text", "text": "x"}]}},
            "prediction",
            {"type": "content", "content": [{"type": "text", "text": "x"}]},
        ),
        ({"prompt_cache_key": "k"}, "prompt_cache_key", "k"),
        ({"prompt_cache_retention": "in_memory"}, "prompt_cache_retention", "in_memory"),
        ({"safety_identifier": "s" * 128}, "safety_identifier", "s" * 128),
        ({"verbosity": "medium"}, "verbosity", "medium"),
        ({"verbosity": "high"}, "verbosity", "high"),
        ({"web_search_options": {}}, "web_search_options", {}),
        (
            {
                "web_search_options": {
                    "user_location": {
                        "type": "approximate",
                        "approximate": {"city": "Seoul", "country": "KR"},
                    }
                }
            },
            "web_search_options",
            {
                "user_location": {
                    "type": "approximate",
                    "approximate": {"city": "Seoul", "country": "KR"},
                }
            },
        ),
        ({"moderation": {"model": "m"}}, "moderation", {"model": "m"}),
        (
            {"prompt_cache_options": {"mode": "explicit"}},
            "prompt_cache_options",
            {"mode": "explicit"},
        ),
    ],
)
def test_documented_values_are_accepted(params, name, expected):
    assert getattr(parse(**params).request, name) == expected


def test_n_of_one_is_accepted():
    assert parse(n=1).request.model == "m"


@pytest.mark.parametrize(
    ("stream", "options", "include_usage"),
    [
        (True, {"include_usage": True}, True),
        (True, {"include_usage": False}, False),
        (True, {}, False),
        (True, {"include_obfuscation": False}, False),
        (False, None, False),
    ],
)
def test_stream_options(stream, options, include_usage):
    parsed = parse(stream=stream, stream_options=options)

    assert (parsed.stream, parsed.include_usage) == (stream, include_usage)


# --- refusals naming the parameter ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": 7}, "temperature"),  # the issue: 7 answered 200
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_p": -1}, "top_p"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"presence_penalty": "0"}, "presence_penalty"),
        ({"logit_bias": [1]}, "logit_bias"),
        ({"logit_bias": {"hello": 1}}, "logit_bias"),
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"logit_bias": {"12": 101}}, "logit_bias.12"),
        ({"logit_bias": {"12": -101}}, "logit_bias.12"),
        ({"logit_bias": {"12": 1.5}}, "logit_bias.12"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"logprobs": 1}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 2.0}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),  # only with logprobs true
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_completion_tokens": "5"}, "max_completion_tokens"),
        ({"n": 2}, "n"),
        ({"n": 0}, "n"),
        ({"n": True}, "n"),
        ({"n": "1"}, "n"),
        ({"seed": 1.5}, "seed"),
        ({"seed": "1"}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"stop": [1]}, "stop"),
        ({"stop": 3}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"response_format": "json"}, "response_format"),
        ({"response_format": {}}, "response_format.type"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {}}},
            "response_format.json_schema.name",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "has space"}}},
            "response_format.json_schema.name",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x" * 65}}},
            "response_format.json_schema.name",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": 1}}},
            "response_format.json_schema.schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "strict": "yes"},
                }
            },
            "response_format.json_schema.strict",
        ),
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": ["search"]}, "tools[0]"),
        ({"tools": [{"function": {"name": "f"}}]}, "tools[0].type"),
        ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [TOOL, {"type": "function", "function": {}}]}, "tools[1].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "get weather"}}]},
            "tools[0].function.name",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f" * 65}}]},
            "tools[0].function.name",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": 1}}]},
            "tools[0].function.description",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "strict": "no"}}]},
            "tools[0].function.strict",
        ),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": 1}, "tool_choice"),
        ({"tool_choice": {}}, "tool_choice.type"),
        ({"tool_choice": {"type": "function"}}, "tool_choice.function"),
        ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name"),
        ({"tool_choice": {"type": "custom", "custom": {"name": "f"}}}, "tool_choice.type"),
        (
            {"tool_choice": {"type": "allowed_tools", "allowed_tools": {"tools": []}}},
            "tool_choice.allowed_tools.mode",
        ),
        (
            {"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}},
            "tool_choice.allowed_tools.tools",
        ),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"user": 5}, "user"),
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
        ({"stream": False, "stream_options": {}}, "stream_options"),
        ({"stream": True, "stream_options": []}, "stream_options"),
        (
            {"stream": True, "stream_options": {"include_usage": "yes"}},
            "stream_options.include_usage",
        ),
        ({"stream": True, "stream_options": {"usage": True}}, "stream_options.usage"),
        (
            {"stream": True, "stream_options": {"include_obfuscation": 0}},
            "stream_options.include_obfuscation",
        ),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"reasoning_effort": 1}, "reasoning_effort"),
        ({"service_tier": "cheap"}, "service_tier"),
        ({"metadata": ["a"]}, "metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"store": 1}, "store"),
        ({"modalities": "text"}, "modalities"),
        ({"modalities": ["text", "video"]}, "modalities[1]"),
        ({"modalities": ["text", "audio"]}, "audio"),  # audio output needs `audio`
        ({"audio": "mp3"}, "audio"),
        ({"audio": {"voice": "alloy"}}, "audio.format"),
        ({"audio": {"format": "ogg", "voice": "alloy"}}, "audio.format"),
        ({"audio": {"format": "mp3"}}, "audio.voice"),
        ({"audio": {"format": "mp3", "voice": 3}}, "audio.voice"),
        ({"audio": {"format": "mp3", "voice": {}}}, "audio.voice.id"),
        ({"prediction": {"content": "x"}}, "prediction.type"),
        ({"prediction": {"type": "diff", "content": "x"}}, "prediction.type"),
        ({"prediction": {"type": "content"}}, "prediction.content"),
        (
            {"prediction": {"type": "content", "content": [{"type": "image_url"}]}},
            "prediction.content[0].type",
        ),
        ({"prompt_cache_key": 3}, "prompt_cache_key"),
        ({"prompt_cache_options": {"mode": "always"}}, "prompt_cache_options.mode"),
        ({"prompt_cache_options": {"ttl": "1h"}}, "prompt_cache_options.ttl"),
        ({"prompt_cache_retention": "1h"}, "prompt_cache_retention"),
        ({"safety_identifier": "s" * 129}, "safety_identifier"),
        ({"safety_identifier": 1}, "safety_identifier"),
        ({"verbosity": "max"}, "verbosity"),
        ({"web_search_options": "on"}, "web_search_options"),
        (
            {"web_search_options": {"search_context_size": "huge"}},
            "web_search_options.search_context_size",
        ),
        (
            {"web_search_options": {"user_location": {"type": "exact", "approximate": {}}}},
            "web_search_options.user_location.type",
        ),
        (
            {"web_search_options": {"user_location": {"type": "approximate"}}},
            "web_search_options.user_location.approximate",
        ),
        (
            {
                "web_search_options": {
                    "user_location": {"type": "approximate", "approximate": {"city": 1}}
                }
            },
            "web_search_options.user_location.approximate.city",
        ),
        ({"moderation": {}}, "moderation.model"),
        (
            {"moderation": {"model": "m", "policy": {"output": {"mode": "warn"}}}},
            "moderation.policy.output.mode",
        ),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
    ],
)
def test_a_bad_value_is_refused_naming_the_param(params, param):
    assert refused(**params).param == param


def test_an_unknown_parameter_is_refused_as_openai_does():
    error = refused(temprature=0.5)

    assert error.param == "temprature"
    assert error.message == "Unrecognized request argument supplied: temprature"


def test_the_existing_refusals_keep_their_words():
    assert refused(n=2).message == "Only n=1 is supported: one choice per request."
    assert refused(max_tokens=0).message == "'max_tokens' must be a positive integer."
    assert refused(stream="yes").message == "'stream' must be a boolean."
    assert refused(temperature="hot").message == "'temperature' must be a number."
    assert refused(stop=[1]).message == "'stop' must be a string or an array of strings."


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b'{"model": "m", "messages": [], "temperature": NaN}', None, "invalid_json"),
        (b'{"model": "m", "messages": [], "seed": Infinity}', None, "invalid_json"),
        (b"\xff\xfe", None, "invalid_json"),
        (b"[1, 2]", None, None),
        (json.dumps({"messages": HELLO}).encode(), "model", None),
        (json.dumps({"model": "", "messages": HELLO}).encode(), "model", None),
        (json.dumps({"model": 3, "messages": HELLO}).encode(), "model", None),
        (json.dumps({"model": "m"}).encode(), "messages", None),
    ],
)
def test_a_malformed_body_is_refused(body, param, code):
    error = refusal(body)

    assert (error.param, error.wire_code) == (param, code)


# --- messages ----------------------------------------------------------------------------------

GOOD_MESSAGES: list[dict[str, Any]] = [
    {"role": "developer", "content": "Be brief.", "name": "ops"},
    {"role": "system", "content": [{"type": "text", "text": "Answer in English."}]},
    {
        "role": "user",
        "name": "ana",
        "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"file_id": "file-1"}},
            {
                "type": "text",
                "text": "Thanks.",
                "prompt_cache_breakpoint": {"mode": "explicit", "ttl": "12h"},
            },
        ],
    },
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "Sunny"}]},
    {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]},
    {"role": "assistant", "content": "Sunny.", "refusal": None, "audio": {"id": "audio_1"}},
    {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
    {"role": "function", "name": "f", "content": None},
    {
        "role": "assistant",
        "tool_calls": [{"id": "c2", "type": "custom", "custom": {"name": "g", "input": "x"}}],
    },
    {"role": "user", "content": "And tomorrow?", "extension": "kept"},  # unknown keys pass
]


def test_every_role_and_content_shape_is_accepted_and_passed_on_unchanged():
    parsed = parse_chat_body(body=json.dumps({"model": "m", "messages": GOOD_MESSAGES}).encode())

    assert parsed.request.messages == GOOD_MESSAGES


def _messages_refused(messages: list[Any]) -> str | None:
    return refusal({"model": "m", "messages": messages}).param


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("hi", "messages"),
        ([], "messages"),
        (["hi"], "messages[0]"),
        ([{"content": "x"}], "messages[0].role"),
        ([{"role": 1, "content": "x"}], "messages[0].role"),
        ([{"role": "robot", "content": "x"}], "messages[0].role"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        ([{"role": "user", "content": "x", "name": 1}], "messages[0].name"),
        ([{"role": "system"}], "messages[0].content"),
        ([{"role": "developer", "content": {"text": "x"}}], "messages[0].content"),
        ([{"role": "user", "content": ["x"]}], "messages[0].content[0]"),
        ([{"role": "user", "content": [{"text": "x"}]}], "messages[0].content[0].type"),
        ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text"),
        (
            [{"role": "user", "content": [{"type": "text", "text": 1}]}],
            "messages[0].content[0].text",
        ),
        (
            [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}],
            "messages[0].content[0].type",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            "messages[0].content[0].image_url.url",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "4k"}}],
                }
            ],
            "messages[0].content[0].image_url.detail",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": "x"}}],
                }
            ],
            "messages[0].content[0].input_audio.format",
        ),
        (
            [{"role": "user", "content": [{"type": "file", "file": {"file_id": 1}}]}],
            "messages[0].content[0].file.file_id",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "x", "prompt_cache_breakpoint": {"ttl": "1h"}}
                    ],
                }
            ],
            "messages[0].content[0].prompt_cache_breakpoint.mode",
        ),
        (
            [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}],
            "messages[0].content[0].type",
        ),
        ([*HELLO, {"role": "assistant"}], "messages[1].content"),
        ([*HELLO, {"role": "assistant", "content": 1}], "messages[1].content"),
        ([*HELLO, {"role": "assistant", "tool_calls": CALL}], "messages[1].tool_calls"),
        (
            [*HELLO, {"role": "assistant", "tool_calls": [{**CALL, "id": None}]}],
            "messages[1].tool_calls[0].id",
        ),
        (
            [*HELLO, {"role": "assistant", "tool_calls": [{**CALL, "type": "code"}]}],
            "messages[1].tool_calls[0].type",
        ),
        (
            [*HELLO, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}],
            "messages[1].tool_calls[0].function",
        ),
        (
            [
                *HELLO,
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {}}}],
                },
            ],
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            [*HELLO, {"role": "assistant", "tool_calls": [{"id": "c", "type": "custom"}]}],
            "messages[1].tool_calls[0].custom",
        ),
        (
            [*HELLO, {"role": "assistant", "content": "x", "refusal": 1}],
            "messages[1].refusal",
        ),
        (
            [*HELLO, {"role": "assistant", "content": "x", "audio": {}}],
            "messages[1].audio.id",
        ),
        (
            [*HELLO, {"role": "assistant", "function_call": {"name": "f"}}],
            "messages[1].function_call.arguments",
        ),
        ([*HELLO, {"role": "tool", "content": "x"}], "messages[1].tool_call_id"),
        ([*HELLO, {"role": "tool", "tool_call_id": 1, "content": "x"}], "messages[1].tool_call_id"),
        ([*HELLO, {"role": "tool", "tool_call_id": "c"}], "messages[1].content"),
        ([*HELLO, {"role": "function", "name": "f"}], "messages[1].content"),
        ([*HELLO, {"role": "function", "content": "x"}], "messages[1].name"),
        ([*HELLO, {"role": "function", "name": "f", "content": 1}], "messages[1].content"),
    ],
)
def test_a_malformed_message_is_refused_naming_where(messages, param):
    assert _messages_refused(messages) == param
