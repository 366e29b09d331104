"""The body of ``POST /v1/chat/completions``, checked parameter by parameter as OpenAI documents
the Chat Completions create call (the ``openai`` SDK's ``CompletionCreateParams``, generated from
OpenAI's OpenAPI spec, is the reference).

Every parameter is checked for type and range; a refusal is a 400 in OpenAI's shape whose
``param`` names the faulty parameter, nested where it is nested (``messages[2].content``,
``tools[0].function.name``). A parameter no OpenAI documentation knows is refused as OpenAI
refuses it ("Unrecognized request argument supplied: foo"), so nothing a client sends is dropped
without a word. ``null`` for an optional parameter means "not sent".

What happens to each parameter:

- ``model`` and ``messages`` make the ``ChatRequest``; ``stream`` and ``stream_options`` shape
  the gateway's own answer; ``n`` is refused unless it is 1 (one choice per request).
- Every other parameter goes on the ``ChatRequest`` under its own name, unchanged, for the
  provider to send on or to refuse (``Provider.unsupported``). ``max_completion_tokens`` is not
  turned into ``max_tokens``: OpenAI's reasoning models refuse the latter. The one rewrite:
  a ``stop`` string becomes a list of that one string, which means the same.
- ``functions`` and ``function_call`` (deprecated in favour of ``tools`` and ``tool_choice``)
  and tools of ``type: "custom"`` are refused: their replies come in shapes the gateway does
  not pass on (``function_call`` deltas, custom tool calls), so accepting them would answer
  with an empty reply.

Nested objects are checked for what the documentation says of the keys it names; keys it does
not name are passed on as they are (OpenAI-compatible servers accept extensions there, such as
extra message fields), except in ``stream_options``, which the gateway itself consumes. A
``response_format`` ``json_schema``'s ``schema`` must be valid JSON Schema (code
``invalid_json_schema``), so a broken one costs nothing upstream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]
from jsonschema.validators import (  # type: ignore[import-untyped]
    Draft202012Validator,
    validator_for,
)

from core.errors import invalid_request
from providers.llm.base import ChatRequest


@dataclass(frozen=True)
class ParsedChat:
    request: ChatRequest
    stream: bool
    include_usage: bool
    # The reply cap the client asked for, if any: `max_completion_tokens`, else `max_tokens`
    # (both are also on `request`, each as sent).
    max_tokens: int | None


# --- value checks: each returns the value or raises a 400 naming `param` -------------------------

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_TOKEN_ID = re.compile(r"[0-9]+")


def _fail(message: str, param: str | None, code: str | None = None) -> NoReturn:
    raise invalid_request(message, param=param, code=code)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _listed(values: Sequence[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def _number(value: Any, param: str, low: float, high: float) -> float:
    if not _is_number(value):
        _fail(f"'{param}' must be a number.", param)
    if not low <= value <= high:
        _fail(f"'{param}' must be between {low:g} and {high:g}; got {value}.", param)
    return value


def _integer(value: Any, param: str, low: int | None = None, high: int | None = None) -> int:
    if not _is_int(value):
        _fail(f"'{param}' must be an integer.", param)
    if low is not None and value < low:
        _fail(f"'{param}' must be at least {low}; got {value}.", param)
    if high is not None and value > high:
        _fail(f"'{param}' must be at most {high}; got {value}.", param)
    return value


def _boolean(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        _fail(f"'{param}' must be a boolean.", param)
    return value


def _string(value: Any, param: str, max_length: int | None = None) -> str:
    if not isinstance(value, str):
        _fail(f"'{param}' must be a string.", param)
    if max_length is not None and len(value) > max_length:
        _fail(f"'{param}' must be at most {max_length} characters long.", param)
    return value


def _choice(value: Any, param: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        _fail(f"'{param}' must be one of {_listed(choices)}.", param)
    return value


def _name(value: Any, param: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        _fail(
            f"'{param}' must be 1 to 64 characters: letters, digits, underscores and dashes.",
            param,
        )
    return value


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(f"'{param}' must be an object.", param)
    return value


def _array(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        _fail(f"'{param}' must be an array.", param)
    return value


def _required(container: dict[str, Any], key: str, param: str) -> Any:
    value = container.get(key)
    if value is None:
        _fail(f"Missing required parameter: '{param}.{key}'.", f"{param}.{key}")
    return value


def _optional(
    container: dict[str, Any], key: str, param: str, check: Callable[[Any, str], Any]
) -> None:
    if container.get(key) is not None:
        check(container[key], f"{param}.{key}")


def _one_of(*choices: str) -> Callable[[Any, str], str]:
    return lambda value, param: _choice(value, param, choices)


# --- messages ------------------------------------------------------------------------------------

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# The content parts each kind of content may hold.
_TEXT_ONLY = ("text",)
_USER_PARTS = ("text", "image_url", "input_audio", "file")
_ASSISTANT_PARTS = ("text", "refusal")


def _content_part(value: Any, param: str, kinds: Sequence[str]) -> None:
    part = _object(value, param)
    kind = _choice(part.get("type"), f"{param}.type", kinds)
    if kind == "text":
        _string(_required(part, "text", param), f"{param}.text")
    elif kind == "refusal":
        _string(_required(part, "refusal", param), f"{param}.refusal")
    elif kind == "image_url":
        image = _object(_required(part, "image_url", param), f"{param}.image_url")
        _string(_required(image, "url", f"{param}.image_url"), f"{param}.image_url.url")
        _optional(image, "detail", f"{param}.image_url", _one_of("auto", "low", "high", "original"))
    elif kind == "input_audio":
        audio = _object(_required(part, "input_audio", param), f"{param}.input_audio")
        _string(_required(audio, "data", f"{param}.input_audio"), f"{param}.input_audio.data")
        _choice(
            _required(audio, "format", f"{param}.input_audio"),
            f"{param}.input_audio.format",
            ("wav", "mp3"),
        )
    else:  # file
        file = _object(_required(part, "file", param), f"{param}.file")
        for key in ("file_data", "file_id", "filename"):
            _optional(file, key, f"{param}.file", _string)
    if part.get("prompt_cache_breakpoint") is not None:
        where = f"{param}.prompt_cache_breakpoint"
        breakpoint = _object(part["prompt_cache_breakpoint"], where)
        _choice(_required(breakpoint, "mode", where), f"{where}.mode", ("explicit",))
        _optional(breakpoint, "ttl", where, _one_of("30m", "12h"))


def _content(value: Any, param: str, kinds: Sequence[str]) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        _fail(f"'{param}' must be a string or an array of content parts.", param)
    for index, part in enumerate(value):
        _content_part(part, f"{param}[{index}]", kinds)


def _tool_calls(value: Any, param: str) -> None:
    """An assistant message's `tool_calls`: the calls the model made, sent back as history."""
    for index, item in enumerate(_array(value, param)):
        where = f"{param}[{index}]"
        call = _object(item, where)
        _string(_required(call, "id", where), f"{where}.id")
        kind = _choice(_required(call, "type", where), f"{where}.type", ("function", "custom"))
        if kind == "function":
            function = _object(_required(call, "function", where), f"{where}.function")
            for key in ("name", "arguments"):
                _string(_required(function, key, f"{where}.function"), f"{where}.function.{key}")
        else:
            custom = _object(_required(call, "custom", where), f"{where}.custom")
            for key in ("name", "input"):
                _string(_required(custom, key, f"{where}.custom"), f"{where}.custom.{key}")


def _message(value: Any, param: str) -> None:
    if not isinstance(value, dict):
        _fail(f"'{param}' must be an object.", param)
    message: dict[str, Any] = value
    role = message.get("role")
    if not isinstance(role, str):
        _fail(f"'{param}.role' must be a string.", f"{param}.role")
    _choice(role, f"{param}.role", _ROLES)
    content = message.get("content")
    if role in ("system", "developer", "user", "assistant"):
        _optional(message, "name", param, _string)
    if role in ("system", "developer", "tool"):
        _content(_required(message, "content", param), f"{param}.content", _TEXT_ONLY)
    elif role == "user":
        _content(_required(message, "content", param), f"{param}.content", _USER_PARTS)
    elif role == "assistant":
        # Content may be left out only by a message that calls tools (or a function).
        calls = (message.get("tool_calls"), message.get("function_call"))
        if content is None and calls == (None, None):
            _required(message, "content", param)
        if content is not None:
            _content(content, f"{param}.content", _ASSISTANT_PARTS)
        _optional(message, "tool_calls", param, _tool_calls)
        _optional(message, "refusal", param, _string)
        if message.get("function_call") is not None:
            where = f"{param}.function_call"
            call = _object(message["function_call"], where)
            for key in ("name", "arguments"):
                _string(_required(call, key, where), f"{where}.{key}")
        if message.get("audio") is not None:
            audio = _object(message["audio"], f"{param}.audio")
            _string(_required(audio, "id", f"{param}.audio"), f"{param}.audio.id")
    if role == "tool":
        _string(_required(message, "tool_call_id", param), f"{param}.tool_call_id")
    elif role == "function":  # deprecated, but still valid history
        if "content" not in message:
            _fail(f"Missing required parameter: '{param}.content'.", f"{param}.content")
        _optional(message, "content", param, _string)  # null is allowed here
        _string(_required(message, "name", param), f"{param}.name")


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        _fail("'messages' must be a non-empty array of messages.", "messages")
    for index, message in enumerate(value):
        _message(message, f"messages[{index}]")
    return value


# --- the other parameters --------------------------------------------------------------------

_NUMBER_PARAMS = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
}


def _ranged(low: float, high: float) -> Callable[[Any, str], float]:
    return lambda value, param: _number(value, param, low, high)


def _positive_int(value: Any, param: str) -> int:
    if not _is_int(value) or value < 1:
        _fail(f"'{param}' must be a positive integer.", param)
    return value


def _seed(value: Any, param: str) -> int:
    return _integer(value, param, _INT64_MIN, _INT64_MAX)


def _top_logprobs(value: Any, param: str) -> int:
    return _integer(value, param, 0, 20)


def _stop(value: Any, param: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        _fail(f"'{param}' must be a string or an array of strings.", param)
    if len(value) > 4:
        _fail(f"'{param}' may hold at most 4 sequences; got {len(value)}.", param)
    return value


def _logit_bias(value: Any, param: str) -> dict[str, int]:
    bias = _object(value, param)
    for token, amount in bias.items():
        if not _TOKEN_ID.fullmatch(token):
            _fail(
                f"Invalid key in '{param}': {token!r}. Keys must be token IDs "
                "(non-negative integers, as strings).",
                param,
            )
        _integer(amount, f"{param}.{token}", -100, 100)
    return bias


def _metadata(value: Any, param: str) -> dict[str, str]:
    metadata = _object(value, param)
    if len(metadata) > 16:
        _fail(f"'{param}' may hold at most 16 key-value pairs; got {len(metadata)}.", param)
    for key, item in metadata.items():
        if len(key) > 64:
            _fail(f"'{param}' keys must be at most 64 characters long: {key[:64]!r}…", param)
        _string(item, f"{param}.{key}", max_length=512)
    return metadata


def _modalities(value: Any, param: str) -> list[str]:
    modalities = _array(value, param)
    for index, modality in enumerate(modalities):
        _choice(modality, f"{param}[{index}]", ("text", "audio"))
    return modalities


def _audio(value: Any, param: str) -> dict[str, Any]:
    audio = _object(value, param)
    _choice(
        _required(audio, "format", param),
        f"{param}.format",
        ("wav", "aac", "mp3", "flac", "opus", "pcm16"),
    )
    voice = _required(audio, "voice", param)
    if isinstance(voice, dict):
        _string(_required(voice, "id", f"{param}.voice"), f"{param}.voice.id")
    elif not isinstance(voice, str):
        _fail(f"'{param}.voice' must be a voice name or an object with an 'id'.", f"{param}.voice")
    return audio


def _prediction(value: Any, param: str) -> dict[str, Any]:
    prediction = _object(value, param)
    _choice(_required(prediction, "type", param), f"{param}.type", ("content",))
    _content(_required(prediction, "content", param), f"{param}.content", _TEXT_ONLY)
    return prediction


def _response_format(value: Any, param: str) -> dict[str, Any]:
    response_format = _object(value, param)
    kind = _choice(
        _required(response_format, "type", param),
        f"{param}.type",
        ("text", "json_object", "json_schema"),
    )
    if kind == "json_schema":
        where = f"{param}.json_schema"
        schema = _object(_required(response_format, "json_schema", param), where)
        name = _name(_required(schema, "name", where), f"{where}.name")
        _optional(schema, "description", where, _string)
        if schema.get("schema") is not None:
            _json_schema(schema["schema"], f"{where}.schema", name)
        _optional(schema, "strict", where, _boolean)
    return response_format


# The code of a refused schema, as chat.structured names it on the other surfaces.
_SCHEMA_CODE = "invalid_json_schema"


def _json_schema(value: Any, param: str, name: str) -> dict[str, Any]:
    """A JSON Schema, checked against its draft's metaschema (the latest draft unless
    ``$schema`` names another), as ``chat.structured`` checks a conversation's: a schema no
    reply could be checked against is refused before anything is sent or reserved."""
    schema = _object(value, param)
    declared = schema.get("$schema")
    if declared is not None and not isinstance(declared, str):
        _fail(f"'{param}.$schema' must be the URI of a JSON Schema draft.", param, _SCHEMA_CODE)
    validator = validator_for(schema, default=None)
    if validator is None:
        if declared is not None:
            _fail(f"Unknown '$schema' in '{param}': {declared[:100]}.", param, _SCHEMA_CODE)
        validator = Draft202012Validator
    try:
        validator.check_schema(schema)
    except SchemaError as error:
        problem = error.message if len(error.message) <= 200 else error.message[:199] + "…"
        _fail(
            f"Invalid schema for response_format '{name}': not valid JSON Schema at "
            f"{error.json_path}: {problem}",
            param,
            _SCHEMA_CODE,
        )
    except RecursionError:
        _fail(f"'{param}' is nested too deeply.", param, _SCHEMA_CODE)
    return schema


def _custom_refused(param: str) -> NoReturn:
    _fail(
        "Custom tools are not supported by this gateway: only function tools ('type': 'function').",
        param,
    )


def _tools(value: Any, param: str) -> list[dict[str, Any]]:
    tools = _array(value, param)
    for index, item in enumerate(tools):
        where = f"{param}[{index}]"
        tool = _object(item, where)
        if tool.get("type") == "custom":
            _custom_refused(f"{where}.type")
        _choice(_required(tool, "type", where), f"{where}.type", ("function",))
        function = _object(_required(tool, "function", where), f"{where}.function")
        _name(_required(function, "name", f"{where}.function"), f"{where}.function.name")
        _optional(function, "description", f"{where}.function", _string)
        _optional(function, "parameters", f"{where}.function", _object)
        _optional(function, "strict", f"{where}.function", _boolean)
    return tools


def _tool_choice(value: Any, param: str) -> str | dict[str, Any]:
    if isinstance(value, str):
        return _choice(value, param, ("none", "auto", "required"))
    if not isinstance(value, dict):
        _fail(f"'{param}' must be 'none', 'auto', 'required' or an object.", param)
    choice: dict[str, Any] = value
    if choice.get("type") == "custom":
        _custom_refused(f"{param}.type")
    kind = _choice(_required(choice, "type", param), f"{param}.type", ("function", "allowed_tools"))
    if kind == "function":
        function = _object(_required(choice, "function", param), f"{param}.function")
        _string(_required(function, "name", f"{param}.function"), f"{param}.function.name")
    else:
        where = f"{param}.allowed_tools"
        allowed = _object(_required(choice, "allowed_tools", param), where)
        _choice(_required(allowed, "mode", where), f"{where}.mode", ("auto", "required"))
        for index, tool in enumerate(_array(_required(allowed, "tools", where), f"{where}.tools")):
            _object(tool, f"{where}.tools[{index}]")
    return choice


def _web_search_options(value: Any, param: str) -> dict[str, Any]:
    options = _object(value, param)
    _optional(options, "search_context_size", param, _one_of("low", "medium", "high"))
    if options.get("user_location") is not None:
        where = f"{param}.user_location"
        location = _object(options["user_location"], where)
        _choice(_required(location, "type", where), f"{where}.type", ("approximate",))
        approximate = _object(_required(location, "approximate", where), f"{where}.approximate")
        for key in ("city", "country", "region", "timezone"):
            _optional(approximate, key, f"{where}.approximate", _string)
    return options


def _moderation(value: Any, param: str) -> dict[str, Any]:
    moderation = _object(value, param)
    _string(_required(moderation, "model", param), f"{param}.model")
    if moderation.get("policy") is not None:
        where = f"{param}.policy"
        policy = _object(moderation["policy"], where)
        for side in ("input", "output"):
            if policy.get(side) is not None:
                rule = _object(policy[side], f"{where}.{side}")
                mode = _required(rule, "mode", f"{where}.{side}")
                _choice(mode, f"{where}.{side}.mode", ("score", "block"))
    return moderation


def _prompt_cache_options(value: Any, param: str) -> dict[str, Any]:
    options = _object(value, param)
    _optional(options, "mode", param, _one_of("implicit", "explicit"))
    _optional(options, "ttl", param, _one_of("30m"))
    return options


def _safety_identifier(value: Any, param: str) -> str:
    return _string(value, param, max_length=128)


# The parameters that go on the `ChatRequest` as they are (each is one of its fields), in the
# order they are checked: what each must be.
_PASSTHROUGH: dict[str, Callable[[Any, str], Any]] = {
    **{name: _ranged(*bounds) for name, bounds in _NUMBER_PARAMS.items()},
    "max_tokens": _positive_int,
    "max_completion_tokens": _positive_int,
    "stop": _stop,
    "seed": _seed,
    "logit_bias": _logit_bias,
    "logprobs": _boolean,
    "top_logprobs": _top_logprobs,
    "response_format": _response_format,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _boolean,
    "reasoning_effort": _one_of("none", "minimal", "low", "medium", "high", "xhigh", "max"),
    "verbosity": _one_of("low", "medium", "high"),
    "modalities": _modalities,
    "audio": _audio,
    "prediction": _prediction,
    "web_search_options": _web_search_options,
    "service_tier": _one_of("auto", "default", "flex", "scale", "priority", "fast"),
    "store": _boolean,
    "metadata": _metadata,
    "user": _string,
    "safety_identifier": _safety_identifier,
    "prompt_cache_key": _string,
    "prompt_cache_options": _prompt_cache_options,
    "prompt_cache_retention": _one_of("in_memory", "24h"),
    "moderation": _moderation,
}

# Documented, deprecated, and refused: why, and what to use instead.
_REFUSED = {
    "functions": "'functions' is deprecated and not supported by this gateway; use 'tools'.",
    "function_call": (
        "'function_call' is deprecated and not supported by this gateway; use 'tool_choice'."
    ),
}

# What the gateway itself reads.
_OWN = ("model", "messages", "n", "stream", "stream_options")

_KNOWN = frozenset((*_OWN, *_PASSTHROUGH, *_REFUSED))


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")


def _stream_options(value: Any, stream: bool) -> bool:
    """`include_usage` from `stream_options`, which only a streaming request may send."""
    if value is None:
        return False
    options = _object(value, "stream_options")
    if not stream:
        _fail(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    for key in options:
        if key not in ("include_usage", "include_obfuscation"):
            _fail(f"Unrecognized stream_options argument supplied: {key}", f"stream_options.{key}")
    # The gateway's own chunks carry no obfuscation padding: asking for it or not changes nothing.
    _optional(options, "include_obfuscation", "stream_options", _boolean)
    include_usage = options.get("include_usage")
    return include_usage is not None and _boolean(include_usage, "stream_options.include_usage")


def json_object(body: bytes | dict[str, Any]) -> dict[str, Any]:
    """A request's JSON body as an object (a batch line's ``body`` comes parsed), or a 400."""
    if isinstance(body, dict):
        return body
    try:
        # NaN and Infinity are Python's extensions, not JSON.
        data = json.loads(body, parse_constant=_not_json)
    except (ValueError, RecursionError):
        raise invalid_request(
            "The request body is not valid JSON.", param=None, code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        _fail("The request body must be a JSON object.", None)
    return data


def parse_chat_body(*, body: bytes) -> ParsedChat:
    """The chat completion request of a JSON body, or a 400 naming the faulty parameter."""
    data = json_object(body)
    for name in data:
        if name not in _KNOWN:
            _fail(f"Unrecognized request argument supplied: {name}", name)
    if "model" not in data:
        _fail("Missing required parameter: 'model'.", "model")
    model = data["model"]
    if not isinstance(model, str) or not model:
        _fail("'model' must be a non-empty string.", "model")
    if "messages" not in data:
        _fail("Missing required parameter: 'messages'.", "messages")
    messages = _messages(data["messages"])

    options: dict[str, Any] = {}
    for name, check in _PASSTHROUGH.items():
        if data.get(name) is not None:
            options[name] = check(data[name], name)
    for name, why in _REFUSED.items():
        if data.get(name) is not None:
            _fail(why, name)
    if options.get("top_logprobs") is not None and options.get("logprobs") is not True:
        _fail("'top_logprobs' is only allowed when 'logprobs' is true.", "top_logprobs")
    if "audio" in options.get("modalities", ()) and "audio" not in options:
        _fail("'audio' is required when 'modalities' includes 'audio'.", "audio")
    if data.get("n") is not None:
        _integer(data["n"], "n", 1, 128)
        if data["n"] != 1:
            _fail("Only n=1 is supported: one choice per request.", "n")

    stream = data.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        _fail("'stream' must be a boolean.", "stream")
    include_usage = _stream_options(data.get("stream_options"), stream)

    max_completion_tokens = options.get("max_completion_tokens")
    return ParsedChat(
        request=ChatRequest(model=model, messages=messages, **options),
        stream=stream,
        include_usage=include_usage,
        max_tokens=(
            max_completion_tokens
            if max_completion_tokens is not None
            else options.get("max_tokens")
        ),
    )
