"""The Responses API (``/v1/responses``): create, retrieve, delete, list input items.

A create is checked parameter by parameter as OpenAI documents it (the ``openai`` SDK's
``ResponseCreateParams``); what it asks is turned into one chat completion and made through
the one metered path, as ``/v1/chat/completions`` makes its calls (``gateway.services``):
reserve, call capped at what was held, settle once, one ledger row (source ``api``, or
``batch`` for a batch line).

- **Chat-completions upstreams** (the default, and the built-in local model): ``instructions``
  become a system message first; the stored chain of ``previous_response_id`` is walked back
  (its input items and output, never its instructions, as OpenAI documents) and kept newest
  first while it fits the model's context window (``truncation: "disabled"`` keeps all of it or
  refuses); ``input`` (text, or message / ``function_call`` / ``function_call_output`` items)
  follows. ``tools`` (function tools, in the Responses' flat shape), ``tool_choice`` and
  ``text.format`` become their chat counterparts, ``max_output_tokens`` the reply cap. The
  chat body is then checked by the chat completions' own rules (``gateway.params``), with
  every refusal naming the Responses parameter.
- **Connections that speak the Responses API** (``ProviderConnection.supports_responses``):
  the body goes to the upstream's own ``/v1/responses`` (``Provider.respond``), with
  ``previous_response_id`` replaced by the upstream's id of the stored response (or, when
  there is none on this connection, the stored chain sent as input items), ``store`` as asked
  and ``max_output_tokens`` capped at what was held. To the metered path the upstream looks
  like any chat provider (``_ResponsesUpstream``), so the cap, the outcome and the one settle
  are the same code; the usage comes from the upstream's ``response.usage``.

On both, what the gateway cannot carry is refused with a 400 naming it (hosted tools, files,
reasoning items, background responses, conversations…): the output is rebuilt from what the
model wrote, text and function calls. A project that moderates its input has the new input and
instructions checked before the call is reserved, as on ``/v1/chat/completions``.

Either way the client gets our own ``resp_…`` id and OpenAI's Response object, and with
``store`` (the default) the response is kept for its project (``StoredResponse``): retrieve,
delete, its input items, and chaining from it. Stored responses belong to the key's project;
another project's id answers 404 like a missing one. ``store: false`` keeps nothing, so such a
response cannot be read back nor chained from. A response is stored once it has ended (before
its last event is sent): while it is being written it is not found.

Streams (``ResponseStream``) send OpenAI's typed events with a ``sequence_number``; as in
``GatewayStream`` the upstream side runs in a task of its own that owns the settle (and the
store), so a client that goes away still gets its call settled once, and its response kept as
``cancelled`` with what was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NoReturn

from django.conf import settings
from django.db import transaction

from accounts.models import ApiKey, Project
from billing import metering
from billing.metering import MeteredCall, Outcome
from billing.models import UsageRecord
from billing.services import CallContext
from core.config_cache import cached
from core.db import db_sync_to_async
from core.detached import run_detached
from core.errors import ApiError, ServiceError, invalid_request
from core.produced import Failed, ProducedStream
from core.sse import sse_event
from core.text import storable
from providers import selectors as provider_selectors
from providers.llm.base import (
    ChatRequest,
    Completion,
    Embeddings,
    ErrorCode,
    ModerationResult,
    Provider,
    ProviderError,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from providers.llm.images import content_image_tokens
from providers.llm.tokens import REPLY_PRIMING_TOKENS, count_message_tokens
from providers.models import ProviderConnection
from providers.pool import leased_provider
from providers.specs import ProviderSpec, build_provider, unsupported_param

from . import moderation
from .models import StoredResponse, response_id
from .params import ParsedChat, json_object, parse_chat_body
from .services import gateway_authenticate, resolve_model

if TYPE_CHECKING:
    from .batches import LineRun

logger = logging.getLogger(__name__)

# History is kept while it fits this share of the context window (our token counts only
# estimate other tokenizers), after the reply's room, the tools and the schema.
WINDOW_SHARE = 0.9


def _item_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(24)}"


# --- parsing: the body of a create, as OpenAI documents it -------------------------------------


def _fail(message: str, param: str | None, code: str | None = None) -> NoReturn:
    raise invalid_request(message, param=param, code=code)


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(f"'{param}' must be an object.", param)
    return value


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        _fail(f"'{param}' must be a string.", param)
    return value


def _boolean(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        _fail(f"'{param}' must be a boolean.", param)
    return value


def _required(container: dict[str, Any], key: str, param: str) -> Any:
    if container.get(key) is None:
        _fail(f"Missing required parameter: '{param}.{key}'.", f"{param}.{key}")
    return container[key]


def _choice(value: Any, param: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(f"'{choice}'" for choice in choices)
        _fail(f"'{param}' must be one of {listed}.", param)
    return value


# Parameters that go on the chat completion under the same name and are checked there.
_CHAT_SAME = (
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "service_tier",
    "moderation",
)

# What the Responses API documents and this gateway cannot do: refused when sent (not null),
# rather than answered without what was asked.
_REFUSED = {
    "conversation": "Conversations are not supported by this gateway; chain responses with "
    "'previous_response_id'.",
    "prompt": "Prompt templates are not supported by this gateway; send 'input' and "
    "'instructions'.",
    "context_management": "'context_management' is not supported by this gateway.",
    "background_options": "Background responses are not supported by this gateway.",
    "image": "'image' is not supported by this gateway.",
    "access_programs": "'access_programs' is not supported by this gateway.",
    "max_tool_calls": "'max_tool_calls' is not supported by this gateway: it makes one model "
    "call per response.",
}

_OWN = (
    "model",
    "input",
    "instructions",
    "previous_response_id",
    "store",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "text",
    "max_output_tokens",
    "truncation",
    "metadata",
    "reasoning",
    "include",
    "background",
    "top_logprobs",
)

_KNOWN = frozenset((*_OWN, *_CHAT_SAME, *_REFUSED))

_ROLES = ("user", "assistant", "system", "developer")
_IMAGE_DETAILS = ("auto", "low", "high", "original")


@dataclass(frozen=True)
class ParsedResponse:
    """A create's body, checked: what the chat completion is made of, what is echoed back."""

    model: str
    items: list[dict[str, Any]]  # the input, as items with ids (what input_items lists)
    instructions: str | None
    previous_response_id: str | None
    store: bool
    stream: bool
    max_output_tokens: int | None
    truncate: bool  # trim the history to the window (truncation "auto", our default)
    metadata: dict[str, str]
    # The chat completion's own parameters (tools, tool_choice and the format in its shapes),
    # checked by its rules once the prompt is built.
    chat: dict[str, Any]
    # What the Response object echoes (temperature, tools, text…), kept with a stored one.
    echo: dict[str, Any]
    # The body as the client sent it (for an upstream that speaks the Responses API).
    body: dict[str, Any] = field(repr=False)


def _input_part(value: Any, param: str, role: str) -> dict[str, Any]:
    part = _object(value, param)
    kinds: tuple[str, ...] = ("input_text",)
    if role == "assistant":
        kinds = ("input_text", "output_text", "refusal")
    kinds += ("input_image",) if role == "user" else ()
    kind = part.get("type")
    if kind == "input_file":
        _fail("Files as input are not supported by this gateway; send their text.", param)
    if kind == "input_image" and role != "user":
        _fail("Images may only be sent in user messages.", f"{param}.type")
    kind = _choice(kind, f"{param}.type", kinds)
    if kind in ("input_text", "output_text"):
        text = _string(_required(part, "text", param), f"{param}.text")
        if kind == "output_text":
            return {"type": "output_text", "text": text, "annotations": []}
        return {"type": "input_text", "text": text}
    if kind == "refusal":
        return {"type": "refusal", "refusal": _string(_required(part, "refusal", param), param)}
    if part.get("image_url") is None:
        if part.get("file_id") is not None:
            _fail("Images by file_id are not supported by this gateway; send an image_url.", param)
        _required(part, "image_url", param)
    detail = part.get("detail")
    return {
        "type": "input_image",
        "image_url": _string(part["image_url"], f"{param}.image_url"),
        "detail": "auto" if detail is None else _choice(detail, f"{param}.detail", _IMAGE_DETAILS),
        "file_id": None,
    }


def _message_item(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = _choice(item.get("role"), f"{param}.role", _ROLES)
    content = item.get("content")
    if isinstance(content, str):
        parts = [
            {"type": "output_text", "text": content, "annotations": []}
            if role == "assistant"
            else {"type": "input_text", "text": content}
        ]
    elif isinstance(content, list):
        parts = [
            _input_part(part, f"{param}.content[{index}]", role)
            for index, part in enumerate(content)
        ]
    else:
        _fail(f"'{param}.content' must be a string or an array of content parts.", param)
    return {
        "id": _given_id(item, param) or _item_id("msg_"),
        "type": "message",
        "role": role,
        "status": "completed",
        "content": parts,
    }


def _given_id(item: dict[str, Any], param: str) -> str | None:
    return None if item.get("id") is None else _string(item["id"], f"{param}.id")


def _function_output(value: Any, param: str) -> str:
    """A tool's result: a string, or text parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for index, part in enumerate(value):
            where = f"{param}[{index}]"
            _choice(_object(part, where).get("type"), f"{where}.type", ("input_text",))
            texts.append(_string(_required(part, "text", where), f"{where}.text"))
        return "".join(texts)
    _fail(f"'{param}' must be a string or an array of input_text parts.", param)


def _input_item(value: Any, param: str) -> dict[str, Any]:
    item = _object(value, param)
    kind = item.get("type")
    if kind is None and "role" in item:
        kind = "message"  # an "easy" message: role and content only
    if kind == "message":
        return _message_item(item, param)
    if kind == "function_call":
        return {
            "id": _given_id(item, param) or _item_id("fc_"),
            "type": "function_call",
            "status": "completed",
            "call_id": _string(_required(item, "call_id", param), f"{param}.call_id"),
            "name": _string(_required(item, "name", param), f"{param}.name"),
            "arguments": _string(_required(item, "arguments", param), f"{param}.arguments"),
        }
    if kind == "function_call_output":
        if "output" not in item:
            _required(item, "output", param)
        return {
            "id": _given_id(item, param) or _item_id("fco_"),
            "type": "function_call_output",
            "status": "completed",
            "call_id": _string(_required(item, "call_id", param), f"{param}.call_id"),
            "output": _function_output(item["output"], f"{param}.output"),
        }
    if not isinstance(kind, str):
        _fail(f"'{param}.type' must be a string.", f"{param}.type")
    _fail(
        f"Input items of type '{kind}' are not supported by this gateway: only messages, "
        "function_call and function_call_output items.",
        f"{param}.type",
    )


def _input(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [
            {
                "id": _item_id("msg_"),
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_text", "text": value}],
            }
        ]
    if not isinstance(value, list) or not value:
        _fail("'input' must be a string or a non-empty array of input items.", "input")
    return [_input_item(item, f"input[{index}]") for index, item in enumerate(value)]


def _tools(value: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The function tools as the Response echoes them, and as the chat completion takes them."""
    if not isinstance(value, list):
        _fail("'tools' must be an array.", "tools")
    echoed, chat = [], []
    for index, item in enumerate(value):
        where = f"tools[{index}]"
        tool = _object(item, where)
        kind = tool.get("type")
        if kind != "function":
            if not isinstance(kind, str):
                _required(tool, "type", where)
            _fail(
                f"Tools of type '{kind}' are not supported by this gateway: only function tools "
                "('type': 'function').",
                f"{where}.type",
            )
        name = _required(tool, "name", where)
        function = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        chat.append({"type": "function", "function": function})
        echoed.append(
            {
                "type": "function",
                "name": name,
                "description": tool.get("description"),
                "parameters": tool.get("parameters"),
                "strict": tool.get("strict"),
            }
        )
    return echoed, chat


def _tool_choice(value: Any) -> str | dict[str, Any]:
    """The chat completion's ``tool_choice`` for the Responses' one."""
    if isinstance(value, str):
        return value  # none, auto, required: checked by the chat's rules
    choice = _object(value, "tool_choice")
    kind = choice.get("type")
    if kind == "function":
        name = _string(_required(choice, "name", "tool_choice"), "tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools":
        tools = []
        listed = choice.get("tools")
        if not isinstance(listed, list):
            _fail("'tool_choice.tools' must be an array.", "tool_choice.tools")
        for index, tool in enumerate(listed):
            where = f"tool_choice.tools[{index}]"
            _choice(_object(tool, where).get("type"), f"{where}.type", ("function",))
            name = _string(_required(tool, "name", where), f"{where}.name")
            tools.append({"type": "function", "function": {"name": name}})
        return {
            "type": "allowed_tools",
            "allowed_tools": {"mode": choice.get("mode"), "tools": tools},
        }
    _fail(
        "'tool_choice' must be 'none', 'auto', 'required', a function "
        "({'type': 'function', 'name': ...}) or allowed_tools.",
        "tool_choice.type",
    )


def _text_format(value: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``text.format`` as echoed, and the chat completion's ``response_format`` (None: text)."""
    text_format = _object(value, "text.format")
    kind = _choice(
        text_format.get("type"), "text.format.type", ("text", "json_object", "json_schema")
    )
    if kind == "text":
        return {"type": "text"}, None
    if kind == "json_object":
        return {"type": "json_object"}, {"type": "json_object"}
    schema: dict[str, Any] = {
        "name": _required(text_format, "name", "text.format"),
        "schema": _required(text_format, "schema", "text.format"),
    }
    for key in ("description", "strict"):
        if text_format.get(key) is not None:
            schema[key] = text_format[key]
    return {"type": "json_schema", **schema}, {"type": "json_schema", "json_schema": schema}


def _positive_int(value: Any, param: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        _fail(f"'{param}' must be a positive integer.", param)
    return value


def parse_response_body(*, body: bytes | dict[str, Any]) -> ParsedResponse:
    """The create request of a JSON body, or a 400 naming the faulty parameter. (The values the
    chat completion takes are checked by its own rules once the prompt is built.)"""
    data = json_object(body)
    for name in data:
        if name not in _KNOWN:
            _fail(f"Unrecognized request argument supplied: {name}", name)
    model = data.get("model")
    if model is None:
        _fail("Missing required parameter: 'model'.", "model")
    if not isinstance(model, str) or not model:
        _fail("'model' must be a non-empty string.", "model")
    if data.get("input") is None:
        _fail("Missing required parameter: 'input'.", "input")
    items = _input(data["input"])
    for name, why in _REFUSED.items():
        if data.get(name) is not None:
            _fail(why, name)
    if data.get("background"):
        _fail(
            "Background responses are not supported by this gateway; stream instead.", "background"
        )
    if data.get("include"):
        _fail("'include' is not supported by this gateway.", "include")
    if data.get("top_logprobs"):
        _fail("'top_logprobs' is not supported by this gateway.", "top_logprobs")

    instructions = data.get("instructions")
    if instructions is not None:
        _string(instructions, "instructions")
    previous = data.get("previous_response_id")
    if previous is not None:
        _string(previous, "previous_response_id")
    store = data.get("store")
    store = True if store is None else _boolean(store, "store")
    stream = data.get("stream")
    stream = False if stream is None else _boolean(stream, "stream")
    options = data.get("stream_options")
    if options is not None:
        if not stream:
            _fail(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
            )
        for key, value in _object(options, "stream_options").items():
            if key != "include_obfuscation":
                _fail(
                    f"Unrecognized stream_options argument supplied: {key}",
                    f"stream_options.{key}",
                )
            _boolean(value, f"stream_options.{key}")
    max_output_tokens = data.get("max_output_tokens")
    if max_output_tokens is not None:
        _positive_int(max_output_tokens, "max_output_tokens")
    truncation = data.get("truncation")
    if truncation is not None:
        _choice(truncation, "truncation", ("auto", "disabled"))

    chat: dict[str, Any] = {name: data[name] for name in _CHAT_SAME if data.get(name) is not None}
    if data.get("metadata") is not None:
        chat["metadata"] = data["metadata"]  # checked by the chat's rules, never sent upstream
    echoed_tools: list[dict[str, Any]] = []
    if data.get("tools") is not None:
        echoed_tools, chat["tools"] = _tools(data["tools"])
    if data.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(data["tool_choice"])
    echoed_format: dict[str, Any] = {"type": "text"}
    text = data.get("text")
    if text is not None:
        text = _object(text, "text")
        for key in text:
            if key not in ("format", "verbosity"):
                _fail(f"Unrecognized text argument supplied: {key}", f"text.{key}")
        if text.get("format") is not None:
            echoed_format, response_format = _text_format(text["format"])
            if response_format is not None:
                chat["response_format"] = response_format
        if text.get("verbosity") is not None:
            chat["verbosity"] = text["verbosity"]
    reasoning = data.get("reasoning")
    if reasoning is not None:
        reasoning = _object(reasoning, "reasoning")
        for key in reasoning:
            if key not in ("effort", "summary", "generate_summary"):
                _fail(f"Unrecognized reasoning argument supplied: {key}", f"reasoning.{key}")
        for key in ("summary", "generate_summary"):
            if reasoning.get(key) is not None:
                _fail("Reasoning summaries are not supported by this gateway.", f"reasoning.{key}")
        if reasoning.get("effort") is not None:
            chat["reasoning_effort"] = reasoning["effort"]

    echo = {
        "max_output_tokens": max_output_tokens,
        "parallel_tool_calls": data.get("parallel_tool_calls") is not False,
        "temperature": data.get("temperature"),
        "top_p": data.get("top_p"),
        "tool_choice": data.get("tool_choice") or "auto",
        "tools": echoed_tools,
        "text": {"format": echoed_format, "verbosity": chat.get("verbosity")},
        "truncation": truncation or "auto",
        "reasoning": {"effort": chat.get("reasoning_effort"), "summary": None},
        **{
            name: data.get(name)
            for name in (
                "user",
                "safety_identifier",
                "service_tier",
                "prompt_cache_key",
                "prompt_cache_retention",
            )
        },
    }
    return ParsedResponse(
        model=model,
        items=items,
        instructions=instructions,
        previous_response_id=previous,
        store=store,
        stream=stream,
        max_output_tokens=max_output_tokens,
        truncate=truncation != "disabled",
        metadata=data.get("metadata") or {},
        chat=chat,
        echo=echo,
        body=data,
    )


# --- from items to chat messages -------------------------------------------------------------


def _text_of(parts: list[dict[str, Any]]) -> str:
    return "".join(
        str(part.get("text") or part.get("refusal") or "")
        for part in parts
        if part.get("type") in ("input_text", "output_text", "refusal")
    )


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A message's parts as the chat completion takes them: one text as a string, else parts."""
    if all(part.get("type") == "input_text" for part in parts) and len(parts) == 1:
        return str(parts[0].get("text") or "")
    converted: list[dict[str, Any]] = []
    for part in parts:
        if part.get("type") == "input_image":
            image = {"url": part.get("image_url"), "detail": part.get("detail") or "auto"}
            converted.append({"type": "image_url", "image_url": image})
        else:
            converted.append({"type": "text", "text": _text_of([part])})
    return converted


def chat_messages(items: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """Chat messages for input or output items, each with the index of the item it comes from.
    A function call joins the assistant message just before it (a reply that says something,
    then calls), or opens one with no content; its result is a ``tool`` message."""
    messages: list[tuple[dict[str, Any], int]] = []
    for index, item in enumerate(items):
        kind = item.get("type")
        if kind == "message":
            parts = item.get("content") or []
            if item.get("role") == "assistant":
                message: dict[str, Any] = {"role": "assistant", "content": _text_of(parts)}
            else:
                message = {"role": item.get("role"), "content": _chat_content(parts)}
            messages.append((message, index))
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")},
            }
            last = messages[-1][0] if messages else None
            if last is not None and last.get("role") == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if not last.get("content"):
                    last["content"] = None
            else:
                messages.append(
                    ({"role": "assistant", "content": None, "tool_calls": [call]}, index)
                )
        elif kind == "function_call_output":
            message = {
                "role": "tool",
                "tool_call_id": item.get("call_id"),
                "content": item.get("output"),
            }
            messages.append((message, index))
    return messages


def _tokens(messages: list[dict[str, Any]]) -> int:
    """The prompt tokens of ``messages`` (their images by the provider's rule), without the
    reply's priming: what they add to a prompt."""
    images = sum(content_image_tokens(message.get("content")) for message in messages)
    return count_message_tokens(messages) - REPLY_PRIMING_TOKENS + images


# --- prepare: parse, build the prompt, check, reserve ------------------------------------------


def _not_found(response: str) -> ApiError:
    return ApiError(
        404,
        f"No response found with id '{response}'.",
        type="invalid_request_error",
        code=None,
    )


def _previous_not_found(response: str) -> ApiError:
    return ApiError(
        404,
        f"No response found with id '{response}'.",
        type="invalid_request_error",
        code="previous_response_not_found",
        param="previous_response_id",
    )


def speaks_responses(spec: ProviderSpec) -> bool:
    """Whether the spec's connection speaks the Responses API itself (kept in memory with the
    other connection settings; ``core.config_cache`` forgets it when the connection changes)."""
    if spec.connection_id is None:
        return False
    connection_id = spec.connection_id

    def read() -> bool:
        return bool(
            ProviderConnection.objects.filter(pk=connection_id)
            .values_list("supports_responses", flat=True)
            .first()
        )

    return bool(cached(("speaks-responses", connection_id), read))


@dataclass(frozen=True)
class _Turn:
    """A stored response of the chain, as history: its items (input, then output) and the
    chat messages they make."""

    response: StoredResponse
    items: list[dict[str, Any]]
    messages: list[dict[str, Any]]


def _turns(project: Project, previous: StoredResponse) -> Iterator[_Turn]:
    """The chain ending with ``previous``, newest first (one query per older response, only as
    far as it is read)."""
    seen: set[str] = set()
    current: StoredResponse | None = previous
    while current is not None and current.pk not in seen:
        seen.add(current.pk)
        items = [*current.input_items, *current.output]
        yield _Turn(current, items, [message for message, _ in chat_messages(items)])
        if current.previous_id is None:
            return
        current = StoredResponse.objects.for_project(project).filter(pk=current.previous_id).first()


@dataclass(frozen=True)
class Prepared:
    """A create, checked and its prompt built; not reserved yet."""

    key: ApiKey
    parsed: ParsedResponse
    spec: ProviderSpec
    request: ChatRequest
    context: CallContext
    previous: StoredResponse | None
    # For a connection that speaks the Responses API: the body to send it (None otherwise).
    upstream_body: dict[str, Any] | None
    # Where each message of ``request`` came from in the Responses body (refusals name it).
    origins: list[str]


@dataclass(frozen=True)
class ResponseCall:
    """A reserved create, ready to send upstream."""

    id: str
    created_at: int
    prepared: Prepared
    metered: MeteredCall

    @property
    def parsed(self) -> ParsedResponse:
        return self.prepared.parsed


@dataclass(frozen=True)
class PendingCheck:
    """A create whose input the project's moderation checks before it is reserved."""

    prepared: Prepared
    check: moderation.InputCheck
    text: str


def _remap(error: ApiError, origins: list[str]) -> ApiError:
    """A refusal of the chat completion's rules, naming the Responses parameter."""
    param = error.param
    if param is None:
        return error
    renamed = _responses_param(param, origins)
    if renamed == param:
        return error
    return ApiError(
        error.status,
        error.message.replace(param, renamed),
        type=error.type,
        code=error.wire_code,
        param=renamed,
    )


_RENAMES = (
    ("response_format.json_schema.", "text.format."),
    ("response_format.json_schema", "text.format"),
    ("response_format", "text.format"),
    ("reasoning_effort", "reasoning.effort"),
    ("verbosity", "text.verbosity"),
    ("tool_choice.function.", "tool_choice."),
    ("tool_choice.allowed_tools.", "tool_choice."),
    ("max_completion_tokens", "max_output_tokens"),
    ("max_tokens", "max_output_tokens"),
)


def _responses_param(param: str, origins: list[str]) -> str:
    if param.startswith("messages[") and "]" in param:
        index_text, rest = param[len("messages[") :].split("]", 1)
        index = int(index_text) if index_text.isdigit() else -1
        origin = origins[index] if 0 <= index < len(origins) else "input"
        # A message's content is the item's content, part for part.
        if rest.startswith(".content") and origin.startswith("input["):
            return origin + rest
        return origin
    if param.startswith("tools[") and ".function" in param:
        return param.replace(".function.", ".", 1).replace(".function", "", 1)
    for old, new in _RENAMES:
        if param.startswith(old):
            return new + param[len(old) :]
    return param


def _check_chat(
    parsed: ParsedResponse, messages: list[dict[str, Any]], origins: list[str]
) -> ParsedChat:
    """The chat completion's own rules, on its parameters and the request's own messages."""
    body = {"model": parsed.model, "messages": messages, **parsed.chat}
    try:
        return parse_chat_body(body=json.dumps(body).encode())
    except ApiError as error:
        raise _remap(error, origins) from None


def _trimmed(
    *,
    parsed: ParsedResponse,
    project: Project,
    spec: ProviderSpec,
    head: list[dict[str, Any]],
    current: list[dict[str, Any]],
    extra_tokens: int,
    previous: StoredResponse | None,
) -> list[_Turn]:
    """The turns of the chain that go with the request, oldest first: newest first while they
    fit the window (each whole: a function call is never sent without its result); all of them
    with ``truncation: "disabled"``, or a refusal if the request then does not fit. The newest
    turn goes whatever it costs when the input answers one of its function calls (a result
    without its call is refused upstream)."""
    reply_room = parsed.max_output_tokens or settings.CHAT_DEFAULT_REPLY_TOKENS
    room = int(spec.context_window * WINDOW_SHARE) - reply_room - extra_tokens
    used = REPLY_PRIMING_TOKENS + _tokens([*head, *current])
    if used > room and parsed.truncate:
        _too_long(spec, needed=used + reply_room + extra_tokens, param="input")
    called = {call["id"] for message in current for call in message.get("tool_calls") or ()}
    answers_earlier_call = any(
        message.get("role") == "tool" and message.get("tool_call_id") not in called
        for message in current
    )
    kept: list[_Turn] = []
    for turn in _turns(project, previous) if previous is not None else ():
        cost = _tokens(turn.messages)
        if parsed.truncate and used + cost > room:
            if kept or not answers_earlier_call:
                break
            _too_long(spec, needed=used + cost + reply_room + extra_tokens, param="input")
        used += cost
        kept.append(turn)
    if not parsed.truncate and used + reply_room + extra_tokens > spec.context_window:
        _too_long(spec, needed=used + reply_room + extra_tokens, param="input")
    kept.reverse()
    return kept


def _too_long(spec: ProviderSpec, *, needed: int, param: str) -> NoReturn:
    _fail(
        f"This model's maximum context length is {spec.context_window} tokens; the request "
        f"needs about {needed} with the room for the reply.",
        param,
        "context_length_exceeded",
    )


def _extra_tokens(request: ChatRequest) -> int:
    """What tools and a JSON schema add to the prompt (``metering``'s rule)."""
    bare = replace(request, messages=[])
    return metering.estimate_prompt_tokens(bare) - count_message_tokens([])


def _unsendable_item(item: dict[str, Any]) -> dict[str, Any]:
    """A stored item as input for an upstream's Responses API: without our ids and statuses,
    which that upstream never saw."""
    return {key: value for key, value in item.items() if key not in ("id", "status")}


def _upstream_body(
    parsed: ParsedResponse, spec: ProviderSpec, previous: StoredResponse | None, turns: list[_Turn]
) -> dict[str, Any]:
    """The body for an upstream that speaks the Responses API: the client's, with the
    upstream's own id of the previous response when it has one on this connection (it keeps
    that history itself), else the stored chain (trimmed as for a chat upstream) as input."""
    body = {
        key: value
        for key, value in parsed.body.items()
        if key not in ("stream", "stream_options", "previous_response_id", "max_output_tokens")
    }
    body["model"] = spec.model
    body["store"] = parsed.store
    if previous is not None:
        on_this_connection = previous.parameters.get("connection_id") == spec.connection_id
        if previous.upstream_id and on_this_connection:
            body["previous_response_id"] = previous.upstream_id
        else:
            history = [_unsendable_item(item) for turn in turns for item in turn.items]
            current = [_unsendable_item(item) for item in parsed.items]
            body["input"] = [*history, *current]
    return body


def _check_images(project: Project, request: ChatRequest, origins: list[str]) -> None:
    abilities = provider_selectors.model_abilities(project, request.model)
    if abilities is not None and abilities.vision:
        return
    for index, message in enumerate(request.messages):
        content = message.get("content")
        for part_index, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict) and part.get("type") == "image_url":
                raise invalid_request(
                    f"The model {request.model} cannot read images; pick a vision model.",
                    param=_responses_param(f"messages[{index}].content[{part_index}]", origins),
                    code="model_lacks_vision",
                )


def response_prepare(*, key: ApiKey, body: bytes | dict[str, Any], batch: bool = False) -> Prepared:
    """For a key already authenticated (scope ``chat``): parse, find the previous response in
    the key's project, build the prompt (trimmed to the window), check it by the chat's rules
    and the model's. Refusals raise before anything is reserved or sent."""
    parsed = parse_response_body(body=body)
    project = key.project
    previous = None
    if parsed.previous_response_id is not None:
        previous = (
            StoredResponse.objects.for_project(project)
            .filter(pk=parsed.previous_response_id)
            .first()
        )
        if previous is None:
            raise _previous_not_found(parsed.previous_response_id)
    spec = resolve_model(project, parsed.model)

    head = [{"role": "system", "content": parsed.instructions}] if parsed.instructions else []
    current = chat_messages(parsed.items)
    origins = ["instructions"] * len(head) + [f"input[{index}]" for _, index in current]
    if isinstance(parsed.body.get("input"), str):
        origins = ["instructions"] * len(head) + ["input"]
    checked = _check_chat(parsed, [*head, *(m for m, _ in current)], origins)
    request = replace(checked.request, metadata=None, store=None)  # ours, not the upstream's
    turns = _trimmed(
        parsed=parsed,
        project=project,
        spec=spec,
        head=head,
        current=[message for message, _ in current],
        extra_tokens=_extra_tokens(request),
        previous=previous,
    )
    history = [message for turn in turns for message in turn.messages]
    request = replace(request, messages=[*head, *history, *request.messages[len(head) :]])
    origins = origins[: len(head)] + ["previous_response_id"] * len(history) + origins[len(head) :]

    _check_images(project, request, origins)
    longest = spec.max_output_tokens
    asked = parsed.max_output_tokens
    if asked is not None and longest is not None and asked > longest:
        _fail(
            f"max_output_tokens is too large: {asked}. This model supports at most {longest} "
            "output tokens.",
            "max_output_tokens",
        )
    upstream_body = None
    if speaks_responses(spec):
        upstream_body = _upstream_body(parsed, spec, previous, turns)
    else:
        param = unsupported_param(spec, request)
        if param is not None:
            renamed = _responses_param(param, origins)
            _fail(f"The model {request.model} does not support '{renamed}'.", renamed)
    return Prepared(
        key=key,
        parsed=parsed,
        spec=spec,
        request=request,
        context=CallContext(
            organization_id=project.organization_id,
            project_id=project.pk,
            user_id=None,
            model=parsed.model,
            source=UsageRecord.Source.BATCH if batch else UsageRecord.Source.API,
            connection_id=spec.connection_id,
            api_key_id=key.pk,
            batch=batch,
        ),
        previous=previous,
        upstream_body=upstream_body,
        origins=origins,
    )


def response_reserve(*, prepared: Prepared) -> ResponseCall:
    """Cap and hold the prepared call (``billing.metering``); raises ``QuotaExceeded``."""
    metered = metering.metered_reserve(
        context=prepared.context,
        request=prepared.request,
        spec=prepared.spec,
        asked=prepared.parsed.max_output_tokens,
    )
    return ResponseCall(
        id=response_id(), created_at=int(time.time()), prepared=prepared, metered=metered
    )


def response_prepare_or_check(
    *, key: ApiKey, body: bytes | dict[str, Any], batch: bool = False
) -> ResponseCall | PendingCheck:
    """The database work before the upstream call: the reserved call, or, for a project that
    moderates its input, what to check before reserving (as ``/v1/chat/completions`` does)."""
    prepared = response_prepare(key=key, body=body, batch=batch)
    checker = moderation.input_moderation()
    check = None if checker is None else checker.for_project(key.project_id)
    if check is None:
        return response_reserve(prepared=prepared)
    # What this request sends: the history was checked when it was asked.
    asked = [
        message
        for message, origin in zip(prepared.request.messages, prepared.origins, strict=True)
        if origin != "previous_response_id"
    ]
    return PendingCheck(prepared=prepared, check=check, text=moderation.moderated_text(asked))


async def response_start(
    prepare: Callable[[], ResponseCall | PendingCheck], *, detached: bool = False
) -> ResponseCall:
    """Run ``prepare`` on the database thread, the moderation check if one is due, and the
    reserve after it. ``detached``: not called from a request (a batch line)."""
    prepared = await db_sync_to_async(prepare, detached=detached)()
    if isinstance(prepared, PendingCheck):
        await check_input(prepared)
        prepared = await db_sync_to_async(response_reserve, detached=detached)(
            prepared=prepared.prepared
        )
    return prepared


async def check_input(pending: PendingCheck) -> None:
    """The moderation check due before the call is reserved: refused (a ``ServiceError`` naming
    ``input``), it costs only the check."""
    try:
        await pending.check.check(
            context=pending.prepared.context, spec=pending.prepared.spec, text=pending.text
        )
    except ServiceError as error:
        if error.param == "messages":  # the chat's word for what was checked
            error.param = "input"
        raise


# --- the upstream: a chat provider, or the connection's own Responses API -----------------------


def _usage_of(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    prompt_tokens, completion_tokens = usage.get("input_tokens"), usage.get("output_tokens")
    if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
        return None  # not counts: metering counts the call itself
    details = usage.get("input_tokens_details")
    cached_tokens = details.get("cached_tokens") if isinstance(details, dict) else 0
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=cached_tokens if isinstance(cached_tokens, int) else 0,
    )


def _finish_reason(response: dict[str, Any], *, calls: bool) -> str:
    details = response.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if response.get("status") == "incomplete":
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if calls else "stop"


def _failed(response: Any) -> ProviderError:
    error = response.get("error") if isinstance(response, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return _upstream_error(code, message)


def _upstream_error(code: Any, message: Any) -> ProviderError:
    text = str(message)[:300] if message else "The provider's response failed."
    if code == "rate_limit_exceeded":
        return ProviderError(ErrorCode.RATE_LIMITED, text)
    if code == "insufficient_quota":
        return ProviderError(ErrorCode.QUOTA_EXHAUSTED, "The provider account is out of quota.")
    if code == "context_length_exceeded":
        return ProviderError(ErrorCode.CONTEXT_TOO_LONG, text)
    return ProviderError(ErrorCode.UPSTREAM_UNAVAILABLE, text)


def completion_of(response: dict[str, Any]) -> Completion:
    """An upstream's Response object as the metered path knows a reply: its text, its function
    calls (as a chat message's tool calls), the finish reason and the usage."""
    if not isinstance(response, dict):
        raise TypeError(f"the response is a {type(response).__name__}")
    if response.get("status") == "failed" or response.get("error"):
        raise _failed(response)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or []:
        if item.get("type") == "message":
            texts.append(_text_of(item.get("content") or []))
        elif item.get("type") == "function_call":
            function = {"name": item.get("name"), "arguments": item.get("arguments")}
            calls.append({"id": item.get("call_id"), "type": "function", "function": function})
    text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message = {"role": "assistant", "content": text or None, "tool_calls": calls}
    finish_reason = _finish_reason(response, calls=bool(calls))
    upstream_id = response.get("id")
    return Completion(
        text=text,
        finish_reason=finish_reason,
        usage=_usage_of(response.get("usage")),
        upstream_id=upstream_id if isinstance(upstream_id, str) else None,
        raw={
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "response": response,
        },
    )


class _ResponsesUpstream:
    """A connection's own Responses API, seen by the metered path as a chat provider: the call
    is the body we built (``max_output_tokens`` the cap metering put on the request), its
    answer the text and tool calls it wrote. Whatever else is asked goes to the provider."""

    def __init__(self, provider: Provider, body: dict[str, Any]) -> None:
        self._provider = provider
        self._body = body
        self.upstream_id: str | None = None

    def _with_cap(self, request: ChatRequest) -> dict[str, Any]:
        body = dict(self._body)
        if request.reply_cap is not None:
            body["max_output_tokens"] = request.reply_cap
        return body

    async def complete(self, request: ChatRequest) -> Completion:
        completion = completion_of(await self._provider.respond(self._with_cap(request)))
        self.upstream_id = completion.upstream_id
        return completion

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        calls: dict[Any, int] = {}  # output_index -> the tool call's index
        async with contextlib.aclosing(
            self._provider.respond_stream(self._with_cap(request))
        ) as events:
            async for event in events:
                kind = event.get("type")
                response = event.get("response")
                if isinstance(response, dict) and isinstance(response.get("id"), str):
                    self.upstream_id = response["id"]
                if kind == "response.output_text.delta":
                    delta = event.get("delta")
                    if isinstance(delta, str) and delta:
                        yield TextDelta(delta)
                elif kind == "response.output_item.added":
                    item = event.get("item") or {}
                    if item.get("type") == "function_call":
                        index = calls[event.get("output_index")] = len(calls)
                        yield ToolCallDelta(
                            index,
                            id=item.get("call_id"),
                            type="function",
                            name=item.get("name"),
                            arguments=item.get("arguments") or "",
                        )
                elif kind == "response.function_call_arguments.delta":
                    known = calls.get(event.get("output_index"))
                    if known is not None and event.get("delta"):
                        yield ToolCallDelta(known, arguments=str(event["delta"]))
                elif kind in ("response.completed", "response.incomplete"):
                    if not isinstance(response, dict):
                        raise TypeError(f"{kind} without its response")
                    yield StreamEnd(
                        finish_reason=_finish_reason(response, calls=bool(calls)),
                        usage=_usage_of(response.get("usage")),
                        upstream_id=self.upstream_id,
                    )
                    return
                elif kind == "response.failed":
                    raise _failed(response)
                elif kind == "error":
                    raise _upstream_error(event.get("code"), event.get("message"))
        raise ProviderError(
            ErrorCode.UPSTREAM_UNAVAILABLE,
            "The provider ended the stream before the response was finished.",
        )

    def unsupported(self, request: ChatRequest) -> str | None:
        return None

    async def moderate(self, *, model: str, input: str) -> ModerationResult:
        return await self._provider.moderate(model=model, input=input)

    async def embed(
        self, *, model: str, input: list[str], dimensions: int | None = None
    ) -> Embeddings:
        return await self._provider.embed(model=model, input=input, dimensions=dimensions)

    async def respond(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._provider.respond(body)

    def respond_stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        return self._provider.respond_stream(body)

    async def list_models(self) -> list[str]:
        return await self._provider.list_models()

    async def aclose(self) -> None:
        """The provider is leased, not ours: its owner closes it."""


def _upstream(call: ResponseCall, provider: Provider) -> Provider:
    body = call.prepared.upstream_body
    return provider if body is None else _ResponsesUpstream(provider, body)


# --- the Response object -----------------------------------------------------------------------


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def response_json(
    *,
    id: str,
    created_at: int,
    status: str,
    model: str,
    output: list[dict[str, Any]],
    echo: dict[str, Any],
    instructions: str | None,
    previous_response_id: str | None,
    store: bool,
    metadata: dict[str, str],
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    incomplete_details: dict[str, Any] | None = None,
    completed_at: int | None = None,
) -> dict[str, Any]:
    """OpenAI's Response object (``openai.types.responses.Response``): every field the SDK
    reads, ``output_text`` included (it is computed from ``output``)."""
    return {
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": completed_at,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": instructions,
        "max_output_tokens": echo.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": echo.get("parallel_tool_calls", True),
        "previous_response_id": previous_response_id,
        "prompt_cache_key": echo.get("prompt_cache_key"),
        "prompt_cache_retention": echo.get("prompt_cache_retention"),
        "reasoning": echo.get("reasoning") or {"effort": None, "summary": None},
        "safety_identifier": echo.get("safety_identifier"),
        "service_tier": echo.get("service_tier"),
        "store": store,
        "temperature": echo.get("temperature"),
        "text": echo.get("text") or {"format": {"type": "text"}, "verbosity": None},
        "tool_choice": echo.get("tool_choice", "auto"),
        "tools": echo.get("tools") or [],
        "top_logprobs": None,
        "top_p": echo.get("top_p"),
        "truncation": echo.get("truncation", "auto"),
        "usage": usage,
        "user": echo.get("user"),
        "metadata": metadata,
    }


def _call_json(call: ResponseCall, **fields: Any) -> dict[str, Any]:
    parsed = call.parsed
    return response_json(
        id=call.id,
        created_at=call.created_at,
        model=parsed.model,
        echo=parsed.echo,
        instructions=parsed.instructions,
        previous_response_id=parsed.previous_response_id,
        store=parsed.store,
        metadata=parsed.metadata,
        **fields,
    )


def _message_output(text: str, status: str) -> dict[str, Any]:
    return {
        "id": _item_id("msg_"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _ending(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    """The response's status and ``incomplete_details`` for the reply's finish reason."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _output_of(completion: Completion) -> list[dict[str, Any]]:
    choices = completion.raw.get("choices") or [{}]
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    calls = (message.get("tool_calls") if isinstance(message, dict) else None) or []
    status, _ = _ending(completion.finish_reason)
    output = []
    if completion.text or not calls:
        output.append(
            _message_output(completion.text, "incomplete" if status != "completed" else "completed")
        )
    for call in calls:
        function = call.get("function") or {}
        output.append(
            {
                "id": _item_id("fc_"),
                "type": "function_call",
                "status": "completed",
                "call_id": call.get("id"),
                "name": function.get("name"),
                "arguments": function.get("arguments") or "",
            }
        )
    return output


def _output_text(output: list[dict[str, Any]]) -> str:
    return "".join(
        _text_of(item.get("content") or []) for item in output if item.get("type") == "message"
    )


def _failure_json(error: ServiceError) -> dict[str, Any]:
    """A response's ``error`` (OpenAI's codes for it: a rate limit, else a server error)."""
    code = "rate_limit_exceeded" if error.code == "rate_limit_exceeded" else "server_error"
    return {"code": code, "message": error.message}


def _storable(value: Any) -> Any:
    """``value`` as JSON a database stores (``core.text.storable`` on every string)."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, dict):
        return {storable(str(key)): _storable(item) for key, item in value.items()}
    return value


def _record(call: ResponseCall, answer: dict[str, Any], upstream_id: str | None) -> dict[str, Any]:
    """The ``StoredResponse`` fields of an answer."""
    parsed = call.parsed
    parameters = {
        **parsed.echo,
        "created_at": answer["created_at"],
        "completed_at": answer["completed_at"],
        "previous_response_id": parsed.previous_response_id,
    }
    if call.prepared.upstream_body is not None:
        parameters["connection_id"] = call.prepared.spec.connection_id
    return {
        "id": call.id,
        "project_id": call.prepared.context.project_id,
        "api_key_id": call.prepared.key.pk,
        "model": parsed.model,
        "previous_id": None if call.prepared.previous is None else call.prepared.previous.pk,
        "instructions": storable(parsed.instructions or ""),
        "input_items": _storable(parsed.items),
        "output": _storable(answer["output"]),
        "output_text": storable(_output_text(answer["output"])),
        "status": answer["status"],
        "parameters": _storable(parameters),
        "usage": answer["usage"],
        "error": _storable(answer["error"]),
        "incomplete_details": answer["incomplete_details"],
        "metadata": _storable(parsed.metadata),
        "upstream_id": (upstream_id or "") if call.prepared.upstream_body is not None else "",
    }


def _settle_and_store(
    *, call: ResponseCall, outcome: Outcome, latency_ms: int, record: dict[str, Any] | None
) -> UsageRecord:
    row = metering.settle(call=call.metered, outcome=outcome, latency_ms=latency_ms)
    if record is not None:
        _store(call, record)
    return row


def _store(call: ResponseCall, record: dict[str, Any]) -> None:
    previous = record["previous_id"]
    if previous is not None and not StoredResponse.objects.filter(pk=previous).exists():
        record = {**record, "previous_id": None}  # deleted meanwhile: the chain ends here
    try:
        with transaction.atomic():
            StoredResponse.objects.create(**record)
    except Exception:  # the call is settled; a response we could not keep is only not found
        logger.exception("response %s could not be stored", call.id)


async def _finish(
    call: ResponseCall,
    outcome: Outcome,
    *,
    started: float,
    record: dict[str, Any] | None,
    detached: bool,
) -> None:
    """Settle once, and keep the response if it is stored: one trip to the database, shielded
    from cancellation (``metering.settle_shielded``'s way)."""
    run = db_sync_to_async(_settle_and_store, detached=detached)
    task = run_detached(
        run(call=call, outcome=outcome, latency_ms=_elapsed_ms(started), record=record),
        same_context=not detached,
    )
    await asyncio.shield(task)


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _charged(call: ResponseCall, outcome: Outcome) -> Usage:
    usage, _ = metering.usage_to_charge(
        prompt_tokens=call.metered.prompt_tokens,
        status=outcome.status,
        usage=outcome.usage,
        generated=outcome.generated,
    )
    return usage


# --- create: JSON ------------------------------------------------------------------------------


async def response_complete(call: ResponseCall, *, detached: bool = False) -> dict[str, Any]:
    """One non-streaming call upstream, settled once (and the response stored once it has
    ended, with ``store``); the Response object. A failed call raises its ``ServiceError``
    (the client has no response id: nothing is stored)."""
    outcome = Outcome()
    started = time.monotonic()
    answer: dict[str, Any] | None = None
    upstream_id: str | None = None
    try:
        async with leased_provider(call.metered.spec) as provider:
            upstream = _upstream(call, provider)
            completion = await metering.complete_capped(call.metered, upstream, outcome)
            upstream_id = completion.upstream_id
        answer = _answer_json(call, completion, outcome)
        return answer
    except ProviderError as exc:
        raise metering.upstream_failure(exc) from None
    finally:
        # Stored before the client sees it, so that it can be read back at once.
        record = _stored_record(call, answer, upstream_id)
        await _finish(call, outcome, started=started, record=record, detached=detached)


def _answer_json(call: ResponseCall, completion: Completion, outcome: Outcome) -> dict[str, Any]:
    """The Response object of a call that answered whole."""
    status, incomplete = _ending(completion.finish_reason)
    return _call_json(
        call,
        status=status,
        output=_output_of(completion),
        usage=usage_json(_charged(call, outcome)),
        incomplete_details=incomplete,
        completed_at=int(time.time()),
    )


def _stored_record(
    call: ResponseCall, answer: dict[str, Any] | None, upstream_id: str | None
) -> dict[str, Any] | None:
    """What to keep of a call that answered with ``store`` on; None: nothing to keep."""
    if answer is None or not call.parsed.store:
        return None
    return _record(call, answer, upstream_id)


# --- create: the event stream ------------------------------------------------------------------


class _Events:
    """The typed events of one response, numbered in order, and the output they make."""

    def __init__(self, call: ResponseCall) -> None:
        self.call = call
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the item being written
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}  # tool call index -> its item

    def event(self, kind: str, **data: Any) -> bytes:
        payload = {"type": kind, **data, "sequence_number": self.sequence}
        self.sequence += 1
        return sse_event(kind, payload)

    def opening(self) -> list[bytes]:
        snapshot = _call_json(self.call, status="in_progress", output=[])
        return [
            self.event("response.created", response=snapshot),
            self.event("response.in_progress", response=snapshot),
        ]

    def _add(self, item: dict[str, Any]) -> list[bytes]:
        events = self._close()
        self.output.append(item)
        self._open = item
        events.append(
            self.event("response.output_item.added", output_index=len(self.output) - 1, item=item)
        )
        return events

    def _where(self) -> dict[str, Any]:
        """The open item (the last one): its id and index."""
        return {"item_id": self.output[-1]["id"], "output_index": len(self.output) - 1}

    def text(self, delta: str) -> list[bytes]:
        events = []
        if self._open is None or self._open["type"] != "message":
            item = {
                "id": _item_id("msg_"),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            events += self._add(item)
            self._text = []
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(
                self.event(
                    "response.content_part.added", **self._where(), content_index=0, part=part
                )
            )
        self._text.append(delta)
        if delta:
            events.append(
                self.event(
                    "response.output_text.delta",
                    **self._where(),
                    content_index=0,
                    delta=delta,
                    logprobs=[],
                )
            )
        return events

    def tool_call(self, delta: ToolCallDelta) -> list[bytes]:
        events = []
        item = self._calls.get(delta.index)
        if item is None:
            item = {
                "id": _item_id("fc_"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": delta.id or _item_id("call_"),
                "name": delta.name or "",
                "arguments": "",
            }
            self._calls[delta.index] = item
            events += self._add(item)
        if delta.arguments:
            item["arguments"] += delta.arguments
            index = self.output.index(item)
            events.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=delta.arguments,
                )
            )
        return events

    def _close(self, status: str = "completed") -> list[bytes]:
        item, self._open = self._open, None
        if item is None:
            return []
        where = {"item_id": item["id"], "output_index": self.output.index(item)}
        events = []
        if item["type"] == "message":
            text = "".join(self._text)
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            events.append(
                self.event(
                    "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
                )
            )
            events.append(
                self.event("response.content_part.done", **where, content_index=0, part=part)
            )
            item["content"] = [part]
        else:
            events.append(
                self.event(
                    "response.function_call_arguments.done",
                    **where,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        item["status"] = status
        events.append(
            self.event("response.output_item.done", output_index=where["output_index"], item=item)
        )
        return events

    def finish(self, finish_reason: str | None) -> list[bytes]:
        """Close the last item (a reply with nothing in it is one empty message)."""
        status, _ = _ending(finish_reason)
        events = [] if self.output else self.text("")
        return events + self._close("completed" if status == "completed" else "incomplete")

    def cut_short(self) -> None:
        """A reply that broke off: what was written is kept, marked incomplete."""
        for item in self.output:
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
                if item["type"] == "message":
                    item["content"] = [
                        {
                            "type": "output_text",
                            "text": "".join(self._text),
                            "annotations": [],
                            "logprobs": [],
                        }
                    ]


class ResponseStream(ProducedStream[bytes | None]):  # an event, or None: the end
    """A streaming create: the upstream side runs in its own task, which owns the settle and
    the store; the response iterates ``sse()``. Closing the response early cancels the
    upstream call (settled all the same, and the response kept as ``cancelled``).

    ``completed`` says whether the stream ended as a response should (``response.completed``
    or ``response.incomplete``), rather than failed or with its client gone."""

    def __init__(self, call: ResponseCall) -> None:
        super().__init__(call.id)
        self.call = call
        self._ended_well = False

    def _put(self, events: list[bytes]) -> None:
        for event in events:
            self._events.put_nowait(event)

    async def _produce(self) -> None:
        call = self.call
        outcome = Outcome()
        started = time.monotonic()
        events = _Events(call)
        opened = False
        end: StreamEnd | None = None
        failure: ServiceError | None = None
        upstream: Provider | None = None
        tail: list[bytes] = []
        answer: dict[str, Any] | None = None
        try:
            async with (
                leased_provider(call.metered.spec) as provider,
                contextlib.aclosing(
                    metering.stream_capped(
                        call.metered, upstream := _upstream(call, provider), outcome
                    )
                ) as stream,
            ):
                async for event in stream:
                    if not isinstance(event, TextDelta | ToolCallDelta | StreamEnd):
                        continue  # ``Waiting``: the local model's queue, nothing to tell
                    if not opened:
                        opened = True
                        self._put(events.opening())
                    if isinstance(event, TextDelta):
                        self._put(events.text(event.text))
                    elif isinstance(event, ToolCallDelta):
                        self._put(events.tool_call(event))
                    else:
                        end = event
        except ProviderError as exc:  # every upstream failure, whatever it sent (metering)
            failure = metering.upstream_failure(exc, partial=opened)
        except Exception:  # never leave a client waiting because of a bug of ours
            logger.exception("response stream %s failed", call.id)
            failure = ServiceError(code="internal_error")
        finally:
            record = None
            if end is not None:
                tail = events.finish(end.finish_reason)
                status, incomplete = _ending(end.finish_reason)
                answer = _call_json(
                    call,
                    status=status,
                    output=events.output,
                    usage=usage_json(_charged(call, outcome)),
                    incomplete_details=incomplete,
                    completed_at=int(time.time()),
                )
                kind = "response.completed" if status == "completed" else "response.incomplete"
                tail.append(events.event(kind, response=answer))
                self._ended_well = True
            elif opened:
                # Failed after the client had its id (or the client left): kept as it stands.
                events.cut_short()
                error = failure or ServiceError(code="internal_error")
                answer = _call_json(
                    call,
                    status="failed" if failure is not None else "cancelled",
                    output=events.output,
                    usage=usage_json(_charged(call, outcome)),
                    error=_failure_json(error) if failure is not None else None,
                )
                if failure is not None:
                    tail.append(
                        events.event(
                            "error", code=failure.wire_code, message=failure.message, param=None
                        )
                    )
                    tail.append(events.event("response.failed", response=answer))
            if answer is not None and call.parsed.store:
                upstream_id = getattr(upstream, "upstream_id", None)
                record = _record(call, answer, upstream_id)
            try:
                await _finish(call, outcome, started=started, record=record, detached=True)
            finally:
                if failure is not None and not opened:
                    self._events.put_nowait(Failed(failure))
                else:
                    self._put(tail)
                self._events.put_nowait(None)

    async def sse(self) -> AsyncIterator[bytes]:
        """The typed events, in order. A failure after the first event ends the stream with
        an ``error`` event and ``response.failed``: every stream ends."""
        finished = False
        try:
            event = self._first
            while isinstance(event, bytes):  # a Failed comes only first: open() raised it
                yield event
                event = await self._events.get()
            finished = True
            self.completed = self._ended_well
        finally:
            # Finished, failed, or the client went away (then the upstream call is cancelled):
            # in every case the upstream side ends here, settled and stored.
            await self._stop(cancel=not finished)


# --- retrieve, delete, input items -------------------------------------------------------------


def _stored(key: ApiKey, response: str) -> StoredResponse:
    found = StoredResponse.objects.for_project(key.project_id).filter(pk=response).first()
    if found is None:
        raise _not_found(response)
    return found


def stored_json(stored: StoredResponse) -> dict[str, Any]:
    """A stored response as the Response object its create answered."""
    parameters = stored.parameters
    return response_json(
        id=stored.id,
        created_at=parameters.get("created_at") or int(stored.created_at.timestamp()),
        status=stored.status,
        model=stored.model,
        output=stored.output,
        echo=parameters,
        instructions=stored.instructions or None,
        previous_response_id=parameters.get("previous_response_id"),
        store=True,
        metadata=stored.metadata,
        usage=stored.usage,
        error=stored.error,
        incomplete_details=stored.incomplete_details,
        completed_at=parameters.get("completed_at"),
    )


def response_retrieve(*, authorization: str | None, response: str) -> dict[str, Any]:
    """``GET /v1/responses/{id}``: a response of the key's project, or 404."""
    key = gateway_authenticate(authorization=authorization, scopes=("chat", "read"))
    return stored_json(_stored(key, response))


def response_delete(*, authorization: str | None, response: str) -> dict[str, Any]:
    """``DELETE /v1/responses/{id}``. Responses that continued it keep their own turns; the
    history before it can no longer be rebuilt from them."""
    key = gateway_authenticate(authorization=authorization, scopes=("chat",))
    stored = _stored(key, response)
    deleted = stored.id  # delete() forgets it
    stored.delete()
    return {"id": deleted, "object": "response", "deleted": True}


@dataclass(frozen=True)
class ItemsPage:
    after: str | None
    before: str | None
    limit: int
    order: str


def parse_items_query(query: dict[str, str]) -> ItemsPage:
    """``after``, ``before``, ``limit`` (1 to 100, 20 by default) and ``order`` (``desc`` by
    default); ``include`` changes nothing (every item is listed whole)."""
    limit_text = query.get("limit")
    limit = 20
    if limit_text is not None:
        try:
            limit = int(limit_text)
        except ValueError:
            _fail("'limit' must be an integer.", "limit")
        if not 1 <= limit <= 100:
            _fail(f"'limit' must be between 1 and 100; got {limit}.", "limit")
    order = query.get("order") or "desc"
    _choice(order, "order", ("asc", "desc"))
    return ItemsPage(
        after=query.get("after") or None,
        before=query.get("before") or None,
        limit=limit,
        order=order,
    )


def response_input_items(
    *, authorization: str | None, response: str, query: dict[str, str]
) -> dict[str, Any]:
    """``GET /v1/responses/{id}/input_items``: the response's input items, a page at a time as
    OpenAI pages lists (``first_id``, ``last_id``, ``has_more``; cursors are item ids)."""
    key = gateway_authenticate(authorization=authorization, scopes=("chat", "read"))
    page = parse_items_query(query)
    items = list(_stored(key, response).input_items)
    if page.order == "desc":
        items.reverse()
    ids = [item.get("id") for item in items]
    start, stop = 0, len(items)
    if page.after is not None:
        if page.after not in ids:
            _fail(f"No input item found with id '{page.after}'.", "after")
        start = ids.index(page.after) + 1
    if page.before is not None:
        if page.before not in ids:
            _fail(f"No input item found with id '{page.before}'.", "before")
        stop = ids.index(page.before)
    window = items[start:stop]
    data = window[: page.limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].get("id") if data else None,
        "last_id": data[-1].get("id") if data else None,
        "has_more": len(window) > len(data),
    }


# --- a batch line ------------------------------------------------------------------------------


def responses_line_run(*, key: ApiKey, body: dict[str, Any]) -> LineRun:
    """One line of a batch over ``/v1/responses``, for the batch runner's task
    (``gateway.batches.RUNNERS``): checked by the project's moderation, reserved (committed),
    called on an event loop of its own (never streamed), answered as the endpoint answers. Its
    one ledger row (source ``batch``, the batch price) and the stored response are written by
    the ``settle`` it returns, which the runner calls once, in the transaction that records the
    line. Sync: the database work stays on the calling thread. Never raises for a bad line."""
    from .batches import LineRun, refused_line  # the batch runner's types; it imports us lazily

    try:
        if body.get("stream"):
            raise invalid_request("A batch line cannot stream.", param="stream")
        pending = response_prepare_or_check(key=key, body=body, batch=True)
        if isinstance(pending, PendingCheck):
            asyncio.run(check_input(pending))
            pending = response_reserve(prepared=pending.prepared)
    except ServiceError as error:
        return refused_line(error)
    call = pending
    outcome = Outcome()
    started = time.monotonic()
    answer: dict[str, Any] | None = None
    upstream_id: str | None = None
    try:
        completion = asyncio.run(_respond_on_own_provider(call, outcome))
    except ProviderError as exc:  # every upstream failure, whatever it sent (metering)
        failure = metering.upstream_failure(exc)
        status, body_out = failure.status, failure.body()
    else:
        upstream_id = completion.upstream_id
        answer = _answer_json(call, completion, outcome)
        status, body_out = 200, answer
    return LineRun(
        status,
        body_out,
        request_id=call.metered.reservation.request_id.hex,
        settle=functools.partial(
            _settle_and_store,
            call=call,
            outcome=outcome,
            latency_ms=_elapsed_ms(started),
            record=_stored_record(call, answer, upstream_id),
        ),
    )


async def _respond_on_own_provider(call: ResponseCall, outcome: Outcome) -> Completion:
    # A provider of its own: the pooled ones belong to the server's event loop, and a task
    # runs its own (``asyncio.run``).
    provider = build_provider(call.metered.spec)
    try:
        return await metering.complete_capped(call.metered, _upstream(call, provider), outcome)
    finally:
        await provider.aclose()
