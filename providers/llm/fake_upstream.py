"""A fake OpenAI-compatible upstream: a real HTTP server for tests, demos and benchmarks.

It speaks OpenAI's wire format over HTTP/1.1 on 127.0.0.1, so the official SDK (and our
providers) can be driven end to end without a network and without mocking anything:

- ``GET  /v1/models``            -> the models in `MODELS`.
- ``POST /v1/chat/completions``  -> JSON, or SSE (``stream: true``) with chunks shaped like
  ``chat.completion.chunk``; with ``stream_options.include_usage`` a last chunk with empty
  ``choices`` carries the usage, then ``data: [DONE]``.
- ``GET  /_fake/stats``          -> ``{"requests": {model: count}}``; ``DELETE`` resets it.

Every ``/v1`` call needs ``Authorization: Bearer <anything>``; the key ``sk-bad`` is refused with
401 (the key is never echoed back).

The reply is deterministic: ``"Echo: " + <text of the last user message>``, split into tokens
with ``re.findall(r"\\S+\\s*", reply)`` (each word with its trailing whitespace, so the tokens
join back to the exact reply), one token per content chunk. ``max_tokens`` (or
``max_completion_tokens``) truncates to that many tokens with ``finish_reason "length"``,
otherwise it is ``"stop"``. Usage: ``prompt_tokens = count_message_tokens(messages)``,
``completion_tokens`` = number of tokens sent.

With ``@tool`` (below) the reply is a call to the first of the request's ``tools`` instead:
``content`` null, one entry in ``tool_calls`` with a fresh ``call_<24 hex>`` id, the tool's
name and the arguments ``{"query": <text of the last user message>}`` — or, when that text is
itself a JSON object, that object (``{"expression": "2+3"}``) — (see `tool_call`), and
``finish_reason "tool_calls"``. Streamed the way OpenAI does it: the first chunk carries the
role and the call's index, id, type and name with empty arguments; each following chunk one
fragment of the arguments (`argument_fragments`); the fragments count as the completion tokens
(and ``max_tokens`` cuts them, with ``finish_reason "length"``). Once the conversation ends
with a ``tool`` message (the caller sent the results back), or ``tool_choice`` is ``"none"``,
it answers in text as usual: ``"Echo: " + <the text of the last tool result>``. ``@toolloop``
calls the tool again whatever came back (a model that never stops calling).

Images: every ``image_url`` part of a user message must be a ``data:`` URL of a PNG, JPEG, WebP
or GIF image in base64 whose bytes start as that format does, else 400 ``invalid_image_url``
naming the part. The echo then ends with `` [image/png 1234 B]`` per image.

- ``POST /v1/moderations`` -> OpenAI's moderation answer for ``input`` (a string, a list of
  strings, or a list of ``text`` / ``image_url`` parts): each text is flagged in the categories
  of `MODERATION_WORDS` whose words it contains (whole words, any case). The model name takes
  the error markers (``omni-moderation-latest@500``).

- ``POST /v1/embeddings`` -> OpenAI's embeddings answer for ``input`` (a string, a list of
  strings, a token array or a list of token arrays; an empty string or list is a 400 naming
  ``input``), for any of `MODELS` or `EMBEDDING_MODELS` (``fake-embed``, not listed by
  ``/v1/models``). Deterministic vectors of `EMBEDDING_SIZE` (64) dimensions (`embedding_vector`):
  a hashed bag of the text's lowercased words (each word adds or subtracts one in the dimension
  its hash picks), scaled to unit length — texts that share words are closer, cosine similarity
  is the dot product. A token array's tokens count as the words ``t<id>``. ``dimensions`` keeps
  the first that many, scaled to unit length again (above 64, or below 1: 400 naming
  ``dimensions``). ``encoding_format: "base64"`` answers each vector as base64 of its
  little-endian float32 bytes, as OpenAI does (and the SDK asks for by default).
  ``usage.prompt_tokens`` is ``count_text_tokens`` of each text summed (a token array: its
  length). Markers: the error markers, ``@hang``, ``@slow``, ``@nousage`` (no ``usage``),
  ``@html``, ``@text``, ``@badjson`` (half the JSON body); the others are ignored.
- ``POST /v1/responses`` -> a small but faithful Responses API. ``input`` is a string or a list
  of items (messages with string content or ``input_text`` / ``output_text`` parts,
  ``function_call`` and ``function_call_output`` items); ``instructions`` is read for this
  response only (not carried to the next, as OpenAI does); ``previous_response_id`` continues
  the conversation of a response this server made and stored (``store`` is true unless sent
  false), else 400 ``previous_response_not_found`` naming it. The reply is one ``message``
  output item with one ``output_text`` part: ``"Echo: " + <text of the last user message>``
  (of the last ``function_call_output`` when the input ends with one), or with ``@history``
  the texts of every user message of the conversation, oldest first, joined by " / " (so a
  test can see that a chain was followed). ``max_output_tokens`` cuts it (status
  ``incomplete``, ``incomplete_details.reason`` ``max_output_tokens``). Usage: ``input_tokens``
  = ``count_message_tokens`` of the instructions as a system message and the conversation's
  items as messages (their text); ``output_tokens`` = words sent. With ``stream: true``, SSE
  with ``event:`` lines and typed events, each with its ``sequence_number`` (from 0):
  ``response.created`` and ``response.in_progress`` (status ``in_progress``, no output yet),
  ``response.output_item.added``, ``response.content_part.added``, one
  ``response.output_text.delta`` per word, ``response.output_text.done``,
  ``response.content_part.done``, ``response.output_item.done``, then ``response.completed``
  (or ``response.incomplete``) with the whole response; no ``[DONE]``. With ``@tool`` the output
  is a ``function_call`` of the first of ``tools`` (``{"type": "function", "name": ...}``; 400
  naming ``tools`` without one) with the arguments `tool_call` makes, streamed as
  ``response.function_call_arguments.delta`` fragments and ``.done`` — until the input ends
  with a ``function_call_output``; ``@toolloop`` calls again whatever came back. Markers: the
  error markers, ``@hang``, ``@slow``, ``@words``, ``@json``, ``@nousage``, ``@cached``,
  ``@html``, ``@text``, ``@history``; when streaming, ``@drop<N>`` (closes after N deltas),
  ``@badjson<N>`` (one event whose data is not JSON after N deltas, then the rest) and
  ``@errorevent<N>`` (after N deltas, the ``error`` event OpenAI sends when a response fails
  mid-stream, then the body ends); without streaming ``@drop`` sends half the JSON body and
  closes, ``@badjson`` answers half of it, ``@errorevent`` is ``@500``. The others are ignored.
  ``GET /v1/responses/{id}`` answers a stored response (404 otherwise); ``DELETE`` forgets it.
- The Batch API, in OpenAI's wire shapes: ``POST /v1/files`` (multipart, purpose ``batch``)
  keeps an upload (`FakeUpstream.uploads` lists them, bytes included); ``GET /v1/files/{id}``
  and ``GET /v1/files/{id}/content`` answer a file (404 otherwise). ``POST /v1/batches`` makes
  a batch over an uploaded file (status ``validating``); ``GET /v1/batches/{id}`` is a poll, and
  moves it on: a batch ends at its first poll, each request answered as ``POST
  /v1/chat/completions`` answers it without streaming (`batch_line_answer`: the same reply and
  usage, the error markers as error lines; the fake answers batches over chat completions
  only), the 200s in its output file and the others in its error file, as OpenAI writes them
  (``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``).
  ``POST /v1/batches/{id}/cancel`` makes it ``cancelling``, and the next poll ``cancelled``
  with nothing answered (409 for a batch that ended). ``GET /v1/batches`` lists them, newest
  first. `FakeUpstream.batches` shows them as last answered. A batch is steered by markers on
  the model of any of its requests (the others' answers ignore them): ``@batchwait`` (in
  progress until `FakeUpstream.release_batches`), ``@batchfail`` (fails at its first poll,
  with OpenAI's ``errors``; so does an input line that is not a JSON object),
  ``@batchexpire`` (ends ``expired``, only its first request answered, the others
  ``batch_expired`` error lines with no response), ``@batchgarbage`` (its output file holds a
  line that is not JSON, a line for a custom_id nobody asked for and the first line's
  custom_id a second time with another answer, and ends in the middle of its last line),
  ``@batchlost`` (its ``output_file_id`` names a file that is not there: 404).

Misbehaviour is chosen per request by markers appended to the model name, each after ``@``,
combinable in any order (``fake-gpt@slow20@drop3``). "After N chunks" counts content (or
argument) chunks, not the opening chunk that carries the role; an N past the end of the reply
means after all of them, before the finish chunk.

==================  =======================================================================
``@429``            429 ``rate_limit_exceeded`` with ``Retry-After: 1``
``@quota``          429 with code and type ``insufficient_quota`` (what OpenAI sends for no
                    credit)
``@401``            401 ``invalid_api_key`` whatever the key
``@500``            500 ``server_error``
``@context``        400 ``context_length_exceeded``
``@hang``           answers nothing for `HANG_SECONDS` (until `stop()`), then closes the
                    connection
``@drop<N>``        sends N content (or argument) chunks, then closes the connection: no
                    finish_reason, no [DONE] (non-streaming: half the JSON body, then closes)
``@nousage``        no usage (no usage chunk even when asked; no ``usage`` field in JSON)
``@slow<MS>``       waits MS milliseconds before each chunk (non-streaming: once, before
                    answering)
``@words<N>``       replies with N lorem-ipsum words instead of the echo (long replies,
                    benchmarks)
``@cached<N>``      reports N of the prompt tokens as cached (``prompt_tokens_details``)
``@tool``           calls the first tool (see above); 400 if the request has no ``tools``
``@toolloop``       the same, and calls it again after every tool result
``@json``           replies with the JSON object ``{"echo": <text of the last user message>}``
                    (a model answering in JSON mode)
``@badjson<N>``     after N chunks, one event that is not JSON:
                    ``data: {"id": "<id>", "choices": [`` and a blank line, then the rest of
                    the stream as usual (N defaults to 0). Non-streaming: a 200
                    ``application/json`` whose body is the first half of the JSON (with a
                    matching ``Content-Length``, so the HTTP message itself is complete)
``@html``           a 200 ``text/html`` page (a proxy's 502 page), streaming or not
``@text``           a 200 ``text/plain`` body that is not JSON, streaming or not (never SSE)
``@surrogate``      the reply's second token (or its only one) starts with a lone UTF-16
                    surrogate, on the wire as the JSON escape ``\\ud800``: valid JSON, but the
                    decoded str cannot be encoded to UTF-8 nor stored. Text replies only
``@nul``            the same with a NUL character (``\\u0000``)
``@cut<N>``         after N chunks, the first half of the next event's bytes (as one HTTP
                    chunk, no blank line ending the event), then closes the connection
                    (``@drop`` closes at an event boundary). Non-streaming: as ``@drop``
``@stall<N>``       after N chunks, sends nothing more until `stop()`, the client leaves or
                    `HANG_SECONDS` pass, then closes the connection without ending the body.
                    Non-streaming: exactly ``@hang``
``@ignorecap``      ignores ``max_tokens`` / ``max_completion_tokens``: the whole reply,
                    ``finish_reason "stop"``, usage counting what was really sent
``@overusage<N>``   reports ``completion_tokens`` N (``total_tokens`` to match), whatever was
                    sent
``@badusage``       a usage object with wrong types (`BAD_USAGE`: nulls, strings, a float, a
                    list where an object belongs)
``@errorevent<N>``  after N chunks, the event OpenAI sends when it fails mid-stream
                    (`STREAM_ERROR`: ``data: {"error": {...}}``), then ends the body and
                    closes the connection. Non-streaming: exactly ``@500``
``@nochoices``      every chunk has ``"choices": []`` (no content, no finish_reason), then
                    the usage chunk if asked and [DONE]. Non-streaming: ``"choices": []``
``@history``        Responses API only: the reply echoes every user message of the
                    conversation (see above)
``@batchwait``      Batch API only: the batch stays in progress until released (see above);
                    ``@batchfail``, ``@batchexpire``, ``@batchgarbage``, ``@batchlost`` too
==================  =======================================================================

When markers conflict, the first of these that applies decides the whole answer: ``@hang``
(or ``@stall`` without streaming), the error markers, ``@errorevent`` without streaming,
``@html``, ``@text``. ``@nousage`` beats ``@badusage``, which beats ``@overusage``. Without
streaming, ``@drop`` / ``@cut`` beat ``@badjson``; when streaming, at the same N,
``@badjson`` is sent first, then ``@errorevent``, ``@drop``, ``@stall`` or ``@cut`` end it.

A ``max_tokens`` or ``max_completion_tokens`` that is not an integer answers 400
``invalid_request_error`` naming it in ``param`` (even with ``@ignorecap``; the markers that
decide the whole answer above answer before the body is checked).

An unknown base model answers 404 ``model_not_found``; an unknown marker answers 400.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import re
import selectors
import socket
import struct
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from providers.llm.tokens import count_message_tokens, count_text_tokens

MODELS = ("fake-gpt", "fake-gpt-mini")
EMBEDDING_MODELS = ("fake-embed",)  # embeddings only; not listed by /v1/models
EMBEDDING_SIZE = 64
BAD_KEY = "sk-bad"
HANG_SECONDS = 300.0
REQUESTS_KEPT = 200  # request bodies kept for tests to read (see `FakeUpstream.requests`)
_LOREM = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do",
    "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua",
)  # fmt: skip
_MARKER = re.compile(
    r"(429|quota|401|500|context|hang|nousage|toolloop|tool|json|html|text|surrogate|nul|ignorecap|badusage"
    r"|nochoices|history|batchwait|batchfail|batchgarbage|batchexpire|batchlost)"
    r"|(drop|slow|words|cached|cut|stall|overusage|errorevent)(\d+)"
    r"|(badjson)(\d*)"
)
# Marker -> the Faults field it sets to True, or to its number.
_FLAGS = {
    "hang": "hang",
    "nousage": "no_usage",
    "tool": "tool_call",
    "toolloop": "tool_loop",
    "json": "json_reply",
    "html": "html",
    "text": "text",
    "surrogate": "surrogate",
    "nul": "nul",
    "ignorecap": "ignore_cap",
    "badusage": "bad_usage",
    "nochoices": "no_choices",
    "history": "history",
    "batchwait": "batch_wait",
    "batchfail": "batch_fail",
    "batchgarbage": "batch_garbage",
    "batchexpire": "batch_expire",
    "batchlost": "batch_lost",
}
_COUNTS = {
    "drop": "drop_after",
    "slow": "slow_ms",
    "words": "words",
    "cached": "cached",
    "cut": "cut_after",
    "stall": "stall_after",
    "overusage": "over_usage",
    "errorevent": "error_event_after",
}
# Roughly how a tokenizer cuts JSON: words and runs of punctuation, each with the whitespace
# before it, so the fragments join back to the exact arguments (which end in "}").
_ARGUMENT_FRAGMENT = re.compile(r"\s*(?:\w+|[^\w\s]+)")


@dataclass
class Faults:
    error: str | None = None  # one of 429, quota, 401, 500, context
    hang: bool = False
    drop_after: int | None = None
    no_usage: bool = False
    slow_ms: int = 0
    words: int | None = None
    cached: int = 0
    tool_call: bool = False
    tool_loop: bool = False
    json_reply: bool = False
    bad_json_after: int | None = None
    html: bool = False
    text: bool = False
    surrogate: bool = False
    nul: bool = False
    cut_after: int | None = None
    stall_after: int | None = None
    ignore_cap: bool = False
    over_usage: int | None = None
    bad_usage: bool = False
    error_event_after: int | None = None
    no_choices: bool = False
    history: bool = False
    # Batch API only (any line of a batch's input naming them decides for the whole batch).
    batch_wait: bool = False
    batch_fail: bool = False
    batch_garbage: bool = False
    batch_expire: bool = False
    batch_lost: bool = False


def parse_model(model: str) -> tuple[str, Faults]:
    """Split ``"fake-gpt@slow20@drop3"`` into the base model and its faults.

    Raises ValueError for an unknown marker, so a typo in a test fails loudly.
    """
    base, *markers = model.split("@")
    faults = Faults()
    for marker in markers:
        match = _MARKER.fullmatch(marker)
        if match is None:
            raise ValueError(f"unknown fake-upstream marker @{marker}")
        flag, name, number, bad_json, bad_json_number = match.groups()
        if bad_json:
            faults.bad_json_after = int(bad_json_number or 0)
        elif flag in _FLAGS:
            setattr(faults, _FLAGS[flag], True)
            if flag == "toolloop":
                faults.tool_call = True
        elif flag:
            faults.error = flag
        else:
            setattr(faults, _COUNTS[name], int(number))
    return base, faults


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # multi-part content: keep the text parts
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else ""
    return ""


def _last_tool_text(messages: list[dict[str, Any]]) -> str | None:
    """The text of the last message when it is a tool's result, else None."""
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "tool":
        return None
    content = messages[-1].get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


# The formats an image_url data URL may carry, by the bytes each starts with.
IMAGE_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
_DATA_URL = re.compile(r"data:(image/[a-z]+);base64,([A-Za-z0-9+/=\s]*)", re.DOTALL)


def check_image(url: object) -> str:
    """``"image/png 1234 B"`` for a data URL of a real image; raises ValueError otherwise."""
    match = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        raise ValueError("expected a data: URL of a base64 PNG, JPEG, WebP or GIF image")
    kind, payload = match.groups()
    try:
        data = base64.b64decode(payload, validate=False)
    except ValueError:
        raise ValueError("the data URL's base64 does not decode") from None
    starts = IMAGE_MAGIC.get(kind)
    if starts is None or not data.startswith(starts):
        raise ValueError(f"the bytes are not a {kind} image")
    if kind == "image/webp" and data[8:12] != b"WEBP":
        raise ValueError("the bytes are not a image/webp image")
    return f"{kind} {len(data)} B"


def _images_of_last_user(messages: list[dict[str, Any]]) -> list[str]:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return [
                check_image((part.get("image_url") or {}).get("url"))
                for part in (content if isinstance(content, list) else ())
                if isinstance(part, dict) and part.get("type") == "image_url"
            ]
    return []


def check_images(messages: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The first image part that is not a real image's data URL: (param, problem), or None."""
    for index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        for number, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict) and part.get("type") == "image_url":
                try:
                    check_image((part.get("image_url") or {}).get("url"))
                except ValueError as exc:
                    return f"messages[{index}].content[{number}]", str(exc)
    return None


def reply_tokens(messages: list[dict[str, Any]], faults: Faults) -> list[str]:
    """The whole reply, one item per content chunk (before any ``max_tokens`` cut)."""
    if faults.words is not None:
        text = " ".join(_LOREM[i % len(_LOREM)] for i in range(faults.words))
    elif faults.json_reply:
        text = json.dumps({"echo": _last_user_text(messages)}, ensure_ascii=False)
    else:
        tool_text = _last_tool_text(messages)
        text = "Echo: " + (_last_user_text(messages) if tool_text is None else tool_text)
        for image in _images_of_last_user(messages) if tool_text is None else ():
            text += f" [{image}]"
    return re.findall(r"\S+\s*", text)


def _first_tool_name(tools: Any) -> str | None:
    if isinstance(tools, list) and tools and isinstance(tools[0], dict):
        function = tools[0].get("function")
        if isinstance(function, dict):
            name = function.get("name")
            if isinstance(name, str):
                return name
    return None


def tool_call(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, loop: bool = False
) -> dict[str, str] | None:
    """What ``@tool`` calls: ``{"name": ..., "arguments": ...}`` (arguments as a JSON string),
    or None when the last message is a tool's result, which a model answers in text (unless
    ``loop``: ``@toolloop`` calls again)."""
    if not loop and _last_tool_text(messages) is not None:
        return None
    name = _first_tool_name(tools)
    if name is None:
        raise ValueError("@tool needs tools, the first one a function with a name")
    text = _last_user_text(messages)
    try:
        given = json.loads(text)
    except ValueError:
        given = None
    arguments = given if isinstance(given, dict) else {"query": text}
    return {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}


# OpenAI's moderation categories; the fake flags a text in those whose words it contains.
MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)  # fmt: skip
MODERATION_WORDS: dict[str, tuple[str, ...]] = {
    "violence": ("kill", "murder", "stab"),
    "harassment": ("idiot", "moron"),
    "self-harm": ("suicide",),
    "illicit": ("meth",),
}


def moderation_texts(value: object) -> list[str]:
    """The texts of a moderation ``input``; raises ValueError for any other shape."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return ["".join(str(v.get("text", "")) for v in value if v.get("type") == "text")]
    raise ValueError("input must be a string, a list of strings or a list of parts")


def moderation_result(text: str) -> dict[str, Any]:
    words = set(re.findall(r"\w+", text.lower()))
    hit = {name for name, listed in MODERATION_WORDS.items() if words & set(listed)}
    return {
        "flagged": bool(hit),
        "categories": {name: name in hit for name in MODERATION_CATEGORIES},
        "category_scores": {
            name: 0.99 if name in hit else 0.0001 for name in MODERATION_CATEGORIES
        },
        "category_applied_input_types": {
            name: ["text"] if name in hit else [] for name in MODERATION_CATEGORIES
        },
    }


# --- embeddings ----------------------------------------------------------------------------


def embedding_inputs(value: object) -> list[tuple[str, int]]:
    """(text, prompt tokens) of each input of an embeddings request; raises ValueError for
    any other shape (as OpenAI refuses an empty string or list)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError("'input' must be a non-empty string or array")
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        value = [value]  # one token array
    inputs = []
    for item in value:
        if isinstance(item, str) and item:
            inputs.append((item, count_text_tokens(item)))
        elif (
            isinstance(item, list)
            and item
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in item)
        ):
            inputs.append((" ".join(f"t{token}" for token in item), len(item)))
        else:
            raise ValueError("each input must be a non-empty string or token array")
    return inputs


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0:  # nothing hashed into these dimensions: a fixed direction
        return [1.0] + [0.0] * (len(vector) - 1)
    return [x / norm for x in vector]


def embedding_vector(text: str, dimensions: int = EMBEDDING_SIZE) -> list[float]:
    """The fake's embedding of ``text``: a hashed bag of its words, unit length (see above)."""
    vector = [0.0] * EMBEDDING_SIZE
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        vector[int.from_bytes(digest[:4], "little") % EMBEDDING_SIZE] += (
            1.0 if digest[4] & 1 else -1.0
        )
    return _unit(vector[:dimensions])


def embedding_base64(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: "base64"``: little-endian float32 bytes in base64."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# --- responses -------------------------------------------------------------------------------


def response_items(value: object) -> list[dict[str, Any]]:
    """The items of a Responses ``input``: a string is one user message; raises ValueError
    for any other shape."""
    if isinstance(value, str):
        return [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}
        ]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError("'input' must be a string or an array of items")
    return list(value)


def item_text(item: dict[str, Any]) -> str:
    """The text of an item: a message's content (string, or its parts' text joined), a
    function call's arguments, a function call output's output."""
    kind = item.get("type", "message")
    if kind == "function_call":
        return str(item.get("arguments") or "")
    if kind == "function_call_output":
        output = item.get("output")
        return output if isinstance(output, str) else json.dumps(output)
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _user_texts(items: list[dict[str, Any]]) -> list[str]:
    return [
        item_text(item)
        for item in items
        if item.get("type", "message") == "message" and item.get("role") == "user"
    ]


def response_reply(items: list[dict[str, Any]], faults: Faults) -> str:
    """The text the fake answers a conversation with (before any cut)."""
    last = items[-1] if items else {}
    if faults.words is not None:
        return " ".join(_LOREM[i % len(_LOREM)] for i in range(faults.words))
    users = _user_texts(items)
    if faults.json_reply:
        return json.dumps({"echo": users[-1] if users else ""}, ensure_ascii=False)
    if last.get("type") == "function_call_output":
        return "Echo: " + item_text(last)
    if faults.history:
        return "Echo: " + " / ".join(users)
    return "Echo: " + (users[-1] if users else "")


def response_input_tokens(instructions: str | None, items: list[dict[str, Any]]) -> int:
    messages = [{"role": "system", "content": instructions}] if instructions else []
    messages += [
        {"role": str(item.get("role") or item.get("type") or "user"), "content": item_text(item)}
        for item in items
    ]
    return count_message_tokens(messages)


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


_RESPONSES_PATH = "/v1/responses/"
# A Responses stream event before it is numbered: its type and its fields.
_Event = tuple[str, dict[str, Any]]


def _first_function_tool(tools: object) -> str | None:
    """The name of the first Responses tool of type function (``{"type": "function",
    "name": ...}``: flat, not nested as in chat completions)."""
    if isinstance(tools, list) and tools and isinstance(tools[0], dict):
        tool = tools[0]
        if tool.get("type") == "function" and isinstance(tool.get("name"), str):
            return str(tool["name"])
    return None


def argument_fragments(arguments: str) -> list[str]:
    """The pieces a tool call's arguments are streamed in, one per chunk."""
    return _ARGUMENT_FRAGMENT.findall(arguments)


# --- chat completions, answered -------------------------------------------------------------


@dataclass
class ChatReply:
    """What the fake answers a chat completion with, before it is put on the wire: the reply's
    tokens (or the tool call's argument fragments), why it ended, the call (if any), the usage
    (None with ``@nousage``)."""

    tokens: list[str]
    finish_reason: str
    call: dict[str, str] | None
    usage: dict[str, Any] | None


def cap_problem(body: dict[str, Any]) -> tuple[str, str] | None:
    """(message, param) of a reply cap that is not an integer, else None."""
    for param in ("max_completion_tokens", "max_tokens"):
        value = body.get(param)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return f"Invalid type for '{param}': expected an integer, got {value!r}.", param
    return None


def chat_reply(body: dict[str, Any], messages: list[dict[str, Any]], faults: Faults) -> ChatReply:
    """The reply to a chat completion whose body passed the checks (``cap_problem`` among them)."""
    # tool_choice "none" forbids a call, as OpenAI's does: the reply is text.
    wants_call = faults.tool_call and body.get("tool_choice") != "none"
    call = tool_call(messages, body["tools"], loop=faults.tool_loop) if wants_call else None
    if call is None:
        tokens, finish_reason = reply_tokens(messages, faults), "stop"
    else:
        tokens, finish_reason = argument_fragments(call["arguments"]), "tool_calls"
        call["id"] = f"call_{uuid.uuid4().hex[:24]}"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None and len(tokens) > limit and not faults.ignore_cap:
        tokens, finish_reason = tokens[:limit], "length"
    if call is None and (faults.surrogate or faults.nul):
        tokens = list(tokens) or [""]
        at = min(1, len(tokens) - 1)
        bad = (_SURROGATE if faults.surrogate else "") + (_NUL if faults.nul else "")
        tokens[at] = bad + tokens[at]
    prompt_tokens = count_message_tokens(messages)
    usage: dict[str, Any] | None = None
    if faults.bad_usage and not faults.no_usage:
        usage = dict(BAD_USAGE)
    elif not faults.no_usage:
        completion_tokens = len(tokens) if faults.over_usage is None else faults.over_usage
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": min(faults.cached, prompt_tokens)},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
    return ChatReply(tokens, finish_reason, call, usage)


def _envelope(completion_id: str, model: str) -> dict[str, Any]:
    return {
        "id": completion_id,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
    }


def completion_json(envelope: dict[str, Any], reply: ChatReply, faults: Faults) -> dict[str, Any]:
    """The ``chat.completion`` object of a reply (not streamed)."""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.tokens)}
    if reply.call is not None:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": reply.call["id"],
                "type": "function",
                "function": {"name": reply.call["name"], "arguments": "".join(reply.tokens)},
            }
        ]
    message["refusal"] = None
    completion = {
        **envelope,
        "object": "chat.completion",
        "choices": []
        if faults.no_choices
        else [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
    }
    if reply.usage is not None:
        completion["usage"] = reply.usage
    return completion


def _error_body(
    message: str, type_: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_ERRORS: dict[str, tuple[int, dict[str, Any]]] = {
    "429": (
        429,
        _error_body(
            "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. "
            "Please try again in 1s.",
            "requests",
            "rate_limit_exceeded",
        ),
    ),
    "quota": (
        429,
        _error_body(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
        ),
    ),
    "401": (
        401,
        _error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    ),
    "500": (
        500,
        _error_body(
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
    ),
    "context": (
        400,
        _error_body(
            "This model's maximum context length is 128000 tokens. Please reduce the length "
            "of the messages.",
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        ),
    ),
}


# What @html, @text, @badusage and @errorevent send.
HTML_PAGE = (
    b"<!DOCTYPE html>\r\n<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
TEXT_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
BAD_USAGE: dict[str, Any] = {
    "prompt_tokens": None,
    "completion_tokens": "many",
    "total_tokens": 12.5,
    "prompt_tokens_details": [],
    "completion_tokens_details": "none",
}
STREAM_ERROR: dict[str, Any] = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "code": None,
    }
}
# Where @surrogate / @nul put their character: the start of the reply's second token.
_SURROGATE = "\ud800"
_NUL = "\u0000"


# --- the Batch API ---------------------------------------------------------------------------

_FILES_PATH = "/v1/files/"
_BATCHES_PATH = "/v1/batches/"
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses")
BATCH_EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
# What @batchgarbage puts among the results (see the module's docstring).
GARBAGE_LINE = b"this line of the output file is not JSON"
UNKNOWN_CUSTOM_ID = "nobody-asked-for-this"
DUPLICATE_REPLY = "Echo: a second answer to the same request"
LOST_FILE_ID = "file-fake-lost"


def multipart_fields(content_type: str, data: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a ``multipart/form-data`` body: name -> (filename, bytes). Raises
    ValueError for a body that is not one."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or match is None:
        raise ValueError("expected multipart/form-data with a boundary")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in data.split(b"--" + match.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        head, separator, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not separator:
            raise ValueError("a part without headers")
        name = re.search(rb'\bname="([^"]*)"', head)
        filename = re.search(rb'\bfilename="([^"]*)"', head)
        if name is None:
            raise ValueError("a part without a name")
        fields[name.group(1).decode()] = (
            filename.group(1).decode() if filename else None,
            content.removesuffix(b"\r\n"),
        )
    return fields


def file_object(filename: str, data: bytes, purpose: str) -> dict[str, Any]:
    return {
        "id": f"file-fake{uuid.uuid4().hex}",
        "object": "file",
        "bytes": len(data),
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def _line_error(
    status: int, message: str, code: str | None, param: str | None = None
) -> tuple[int, dict[str, Any]]:
    return status, _error_body(message, "invalid_request_error", code, param)


def batch_line_answer(
    server: _Server, endpoint: str, request: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """One request of a batch, answered as ``POST /v1/chat/completions`` answers it without
    streaming (the error markers answer their errors; the markers that act on the connection
    itself — hang, drop, html... — do not apply to a batch and are ignored). The fake answers
    batches over chat completions only."""
    body = request.get("body")
    if request.get("url") != endpoint or not isinstance(body, dict):
        return _line_error(400, "The request's url is not the batch's endpoint.", None, "url")
    if endpoint != "/v1/chat/completions":
        return _line_error(400, "The fake upstream answers batches of chat completions only.", None)
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not isinstance(messages, list):
        return _line_error(400, "Invalid request: 'model' and 'messages' are required.", None)
    number = server.count(model, body)
    try:
        base, faults = parse_model(model)
    except ValueError as exc:
        return _line_error(400, str(exc), None, "model")
    if base not in MODELS:
        message = f"The model `{base}` does not exist or you do not have access to it."
        return _line_error(404, message, "model_not_found")
    if faults.tool_call and _first_tool_name(body.get("tools")) is None:
        return _line_error(
            400, "@tool needs 'tools', the first one a function with a name.", None, "tools"
        )
    bad_image = check_images(messages)
    if bad_image is not None:
        param, problem = bad_image
        return _line_error(400, f"Invalid image in {param}: {problem}.", "invalid_image_url", param)
    if faults.error:
        status, payload = _ERRORS[faults.error]
        return status, payload
    bad_cap = cap_problem(body)
    if bad_cap is not None:
        return _line_error(400, bad_cap[0], None, bad_cap[1])
    reply = chat_reply(body, messages, faults)
    envelope = _envelope(f"chatcmpl-fake{number}", model)
    return 200, completion_json(envelope, reply, faults)


def _result_line(custom_id: Any, status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": f"req_{uuid.uuid4().hex}", "body": body},
        "error": None,
    }


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _garbled(lines: list[dict[str, Any]]) -> bytes:
    """What @batchgarbage sends for an output file: the first line, a line that is not JSON, a
    line for a custom_id nobody asked for, the first line's custom_id again (another answer),
    then the rest, the very last line cut in half."""
    if not lines:
        return GARBAGE_LINE + b"\n"
    first = lines[0]
    again = json.loads(json.dumps(first))
    choices = (again.get("response") or {}).get("body", {}).get("choices") or []
    if choices:
        choices[0]["message"]["content"] = DUPLICATE_REPLY
    stranger = {**json.loads(json.dumps(first)), "custom_id": UNKNOWN_CUSTOM_ID}
    data = _jsonl([first]) + GARBAGE_LINE + b"\n" + _jsonl([stranger, again, *lines[1:]])
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    return data[: len(data) - 1 - len(last) // 2]


@dataclass
class _FakeBatch:
    """A batch and what decides how it goes: its object (OpenAI's shape, answered as it is),
    its input's requests, the batch markers of their models, whether a test let it finish."""

    object: dict[str, Any]
    requests: list[dict[str, Any]]
    faults: Faults
    released: bool = False
    unreadable_line: int | None = None  # the first input line that is not a JSON object

    @classmethod
    def create(cls, input_file_id: str, data: bytes, endpoint: str, metadata: Any) -> _FakeBatch:
        requests: list[dict[str, Any]] = []
        unreadable = None
        faults = Faults()
        for number, raw in enumerate(data.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                request = json.loads(raw)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError:
                unreadable = unreadable or number
                continue
            requests.append(request)
            model = (
                (request.get("body") or {}).get("model")
                if isinstance(request.get("body"), dict)
                else None
            )
            try:
                _, marked = parse_model(model) if isinstance(model, str) else ("", Faults())
            except ValueError:
                continue  # answered as an error line of its own
            for name in ("batch_wait", "batch_fail", "batch_garbage", "batch_expire", "batch_lost"):
                if getattr(marked, name):
                    setattr(faults, name, True)
        now = int(time.time())
        batch = {
            "id": f"batch_fake{uuid.uuid4().hex}",
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(requests), "completed": 0, "failed": 0},
            "metadata": metadata if isinstance(metadata, dict) else None,
        }
        return cls(object=batch, requests=requests, faults=faults, unreadable_line=unreadable)

    def cancel(self) -> bool:
        """Whether it could be (or already was) cancelled."""
        status = self.object["status"]
        if status in ("validating", "in_progress"):
            self.object.update(status="cancelling", cancelling_at=int(time.time()))
        return self.object["status"] in ("cancelling", "cancelled")

    def advance(self, server: _Server) -> None:
        """What a poll finds: a cancel takes effect; a batch a test holds (``@batchwait``) is
        in progress until `FakeUpstream.release_batches`; any other ends, its lines answered."""
        now = int(time.time())
        status = self.object["status"]
        if status == "cancelling":
            self.object.update(status="cancelled", cancelled_at=now)
            return
        if status not in ("validating", "in_progress"):
            return
        if self.faults.batch_fail or self.unreadable_line is not None:
            line = self.unreadable_line or 1
            message = (
                f"Line {line} of the input file is not a JSON object."
                if self.unreadable_line is not None
                else "The fake upstream was told to fail this batch (@batchfail)."
            )
            error = {"code": "invalid_request", "message": message, "param": None, "line": line}
            self.object.update(
                status="failed", failed_at=now, errors={"object": "list", "data": [error]}
            )
            return
        self.object["in_progress_at"] = self.object["in_progress_at"] or now
        if self.faults.batch_wait and not self.released:
            self.object["status"] = "in_progress"
            return
        self._finish(server, now)

    def _finish(self, server: _Server, now: int) -> None:
        answered = self.requests[:1] if self.faults.batch_expire else self.requests
        output: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        endpoint = self.object["endpoint"]
        for request in answered:
            status, body = batch_line_answer(server, endpoint, request)
            (output if status == 200 else errors).append(
                _result_line(request.get("custom_id"), status, body)
            )
        for request in self.requests[len(answered) :]:
            errors.append(
                {
                    "id": f"batch_req_{uuid.uuid4().hex}",
                    "custom_id": request.get("custom_id"),
                    "response": None,
                    "error": {"code": "batch_expired", "message": BATCH_EXPIRED_MESSAGE},
                }
            )
        batch_id = self.object["id"]
        files: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
        for kind, lines in (("output", output), ("error", errors)):
            if not lines:
                continue
            data = (
                _garbled(lines) if kind == "output" and self.faults.batch_garbage else _jsonl(lines)
            )
            stored = file_object(f"{batch_id}_{kind}.jsonl", data, "batch_output")
            server.store_file(stored, data)
            files[f"{kind}_file_id"] = stored["id"]
        if self.faults.batch_lost:
            files["output_file_id"] = LOST_FILE_ID
        ended = "expired" if self.faults.batch_expire else "completed"
        self.object.update(
            status=ended,
            finalizing_at=now,
            **{f"{ended}_at": now},
            **files,
            request_counts={
                "total": len(self.requests),
                "completed": len(output),
                "failed": len(errors),
            },
        )


class _Server(ThreadingHTTPServer):
    # Benchmarks open many connections at once; the default backlog of 5 would refuse them.
    request_queue_size = 128

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.stopping = threading.Event()  # wakes handlers sleeping in @hang / @slow
        self.request_counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._open_sockets: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._next_id = 0
        # The latest request bodies, so tests can read what was sent (the prompt, the cap).
        self.bodies: deque[dict[str, Any]] = deque(maxlen=REQUESTS_KEPT)
        # The Responses API's stored responses: id -> (the response, the conversation so far:
        # its input items with those of the responses it continues, then its output).
        self._responses: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        # The Batch API: files (their object and bytes), uploads as received, batches.
        self._files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.uploads: list[dict[str, Any]] = []
        self._batches: dict[str, _FakeBatch] = {}
        # One batch changes state at a time (answering its lines counts them: not under _lock).
        self.batch_lock = threading.Lock()

    def count(self, model: str, body: dict[str, Any] | None = None) -> int:
        with self._lock:
            self.request_counts[model] += 1
            self._next_id += 1
            if body is not None:
                self.bodies.append(body)
            return self._next_id

    def recorded(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.bodies)

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.request_counts)

    def reset(self) -> None:
        with self._lock:
            self.request_counts.clear()
            self.bodies.clear()
            self._responses.clear()
            self._files.clear()
            self.uploads.clear()
            self._batches.clear()

    def store_file(self, stored: dict[str, Any], data: bytes, *, upload: bool = False) -> None:
        with self._lock:
            self._files[stored["id"]] = (stored, data)
            if upload:
                self.uploads.append({**stored, "data": data})

    def stored_file(self, file_id: str) -> tuple[dict[str, Any], bytes] | None:
        with self._lock:
            return self._files.get(file_id)

    def recorded_uploads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(upload) for upload in self.uploads]

    def add_batch(self, batch: _FakeBatch) -> None:
        with self._lock:
            self._batches[batch.object["id"]] = batch

    def batch(self, batch_id: str) -> _FakeBatch | None:
        with self._lock:
            return self._batches.get(batch_id)

    def all_batches(self) -> list[_FakeBatch]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._batches.values()))

    def release_batches(self) -> int:
        with self._lock:
            waiting = [b for b in self._batches.values() if not b.released]
            for batch in waiting:
                batch.released = True
            return len(waiting)

    def store_response(self, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        with self._lock:
            self._responses[response["id"]] = (response, conversation)

    def stored_response(
        self, response_id: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        with self._lock:
            return self._responses.get(response_id)

    def forget_response(self, response_id: str) -> bool:
        with self._lock:
            return self._responses.pop(response_id, None) is not None

    def process_request(self, request: Any, client_address: Any) -> None:
        # As ThreadingMixIn does, but every handler thread is kept so that stop() can join it:
        # the mixin joins only non-daemon threads, and daemon ones must stay daemon so that a
        # process that exits without stop() is not held by a client's idle keep-alive.
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="fake-upstream-handler",
            daemon=True,
        )
        with self._lock:
            self._open_sockets.add(request)
            self._handlers = {t for t in self._handlers if t.is_alive()} | {thread}
        thread.start()

    def join_handlers(self) -> None:
        """Wait for every handler thread; called once the accept loop has stopped, so no new
        one can start meanwhile."""
        with self._lock:
            handlers = list(self._handlers)
        for thread in handlers:
            thread.join()

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open_sockets.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Unblock handler threads waiting on idle keep-alive connections, so they can be
        joined at once instead of whenever the client lets go."""
        with self._lock:
            sockets = list(self._open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by the peer
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked SSE, like the real API
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body waits for
    # the client's delayed ACK (about 40 ms on Linux) and every answer looks 40 ms slow.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests and benchmarks would drown in access logs

    def handle(self) -> None:
        # The client went away (stopped reading a stream, timed out): nothing left to do.
        with contextlib.suppress(ConnectionError, TimeoutError):
            super().handle()

    # -- routing -----------------------------------------------------------------------

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith(("/v1/files", "/v1/batches")):
            if self._authorized():
                self._batch_api_get(path)
            return
        if path == "/_fake/stats":
            self._send_json(200, {"requests": dict(self.server.snapshot())})
        elif path == "/v1/models":
            if self._authorized():
                data = [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in MODELS
                ]
                self._send_json(200, {"object": "list", "data": data})
        elif path.startswith(_RESPONSES_PATH):
            if self._authorized():
                stored = self.server.stored_response(path.removeprefix(_RESPONSES_PATH))
                if stored is None:
                    self._response_not_found(path.removeprefix(_RESPONSES_PATH))
                else:
                    self._send_json(200, stored[0])
        else:
            self._send_json(404, _error_body(f"Unknown path {path}", "invalid_request_error", None))

    def do_DELETE(self) -> None:
        path = urlsplit(self.path).path
        if path == "/_fake/stats":
            self.server.reset()
            self._send_json(200, {"requests": {}})
        elif path.startswith(_RESPONSES_PATH):
            if self._authorized():
                response_id = path.removeprefix(_RESPONSES_PATH)
                if self.server.forget_response(response_id):
                    self._send_json(200, {"id": response_id, "object": "response", "deleted": True})
                else:
                    self._response_not_found(response_id)
        else:
            self._send_json(404, _error_body("Unknown path", "invalid_request_error", None))

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith(("/v1/files", "/v1/batches")):
            self._batch_api_post(path)
            return
        if path == "/v1/moderations":
            self._moderate()
            return
        if path == "/v1/embeddings":
            self._embed()
            return
        if path == "/v1/responses":
            self._respond()
            return
        if path != "/v1/chat/completions":
            self._send_json(404, _error_body("Unknown path", "invalid_request_error", None))
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            model, messages = str(body["model"]), body["messages"]
            if not isinstance(messages, list):
                raise TypeError("messages must be a list")
        except (ValueError, KeyError, TypeError) as exc:
            self._send_json(
                400, _error_body(f"Invalid request: {exc}", "invalid_request_error", None)
            )
            return
        request_number = self.server.count(model, body)
        if not self._authorized():
            return
        try:
            base, faults = parse_model(model)
        except ValueError as exc:
            self._send_json(400, _error_body(str(exc), "invalid_request_error", None, "model"))
            return
        if base not in MODELS:
            message = f"The model `{base}` does not exist or you do not have access to it."
            self._send_json(404, _error_body(message, "invalid_request_error", "model_not_found"))
            return
        if faults.tool_call and _first_tool_name(body.get("tools")) is None:
            message = "@tool needs 'tools', the first one a function with a name."
            self._send_json(400, _error_body(message, "invalid_request_error", None, "tools"))
            return
        bad_image = check_images(messages)
        if bad_image is not None:
            param, problem = bad_image
            message = f"Invalid image in {param}: {problem}."
            self._send_json(
                400, _error_body(message, "invalid_request_error", "invalid_image_url", param)
            )
            return
        streaming = bool(body.get("stream"))
        if faults.hang or (faults.stall_after is not None and not streaming):
            self.server.stopping.wait(HANG_SECONDS)
            self._drop_connection()
            return
        error = faults.error
        if error is None and faults.error_event_after is not None and not streaming:
            error = "500"
        if error:
            status, payload = _ERRORS[error]
            self._send_json(status, payload, {"Retry-After": "1"} if error == "429" else {})
            return
        if faults.html or faults.text:
            if faults.slow_ms and self.server.stopping.wait(faults.slow_ms / 1000):
                return
            if faults.html:
                self._send_bytes(200, "text/html", HTML_PAGE)
            else:
                self._send_bytes(200, "text/plain", TEXT_BODY)
            return
        self._answer(body, model, messages, faults, f"chatcmpl-fake{request_number}")

    # -- moderations -----------------------------------------------------------------------

    def _moderate(self) -> None:
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            model = str(body.get("model") or "omni-moderation-latest")
            texts = moderation_texts(body["input"])
        except (ValueError, KeyError, TypeError) as exc:
            self._send_json(
                400, _error_body(f"Invalid request: {exc}", "invalid_request_error", None)
            )
            return
        request_number = self.server.count(model, body)
        if not self._authorized():
            return
        try:
            base, faults = parse_model(model)
        except ValueError as exc:
            self._send_json(400, _error_body(str(exc), "invalid_request_error", None, "model"))
            return
        if faults.hang:
            self.server.stopping.wait(HANG_SECONDS)
            self._drop_connection()
            return
        if faults.error:
            status, payload = _ERRORS[faults.error]
            self._send_json(status, payload, {"Retry-After": "1"} if faults.error == "429" else {})
            return
        self._send_json(
            200,
            {
                "id": f"modr-fake{request_number}",
                "model": base,
                "results": [moderation_result(text) for text in texts],
            },
        )

    # -- embeddings and responses: what they share ---------------------------------------

    def _read_json(self) -> tuple[dict[str, Any], str] | None:
        """The request body and its model, counted and authorized; None once answered."""
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            model = str(body["model"])
        except (ValueError, KeyError, TypeError) as exc:
            self._send_json(
                400, _error_body(f"Invalid request: {exc}", "invalid_request_error", None)
            )
            return None
        self.server.count(model, body)
        if not self._authorized():
            return None
        return body, model

    def _faults(self, model: str, known: tuple[str, ...]) -> tuple[str, Faults] | None:
        """The base model and its markers; None once answered (an unknown marker or model)."""
        try:
            base, faults = parse_model(model)
        except ValueError as exc:
            self._send_json(400, _error_body(str(exc), "invalid_request_error", None, "model"))
            return None
        if base not in known:
            message = f"The model `{base}` does not exist or you do not have access to it."
            self._send_json(404, _error_body(message, "invalid_request_error", "model_not_found"))
            return None
        return base, faults

    def _answered_by_faults(self, faults: Faults, *, streaming: bool) -> bool:
        """Answer as the markers that decide the whole answer say (hang, errors, a page that
        is not JSON); whether they did."""
        if faults.hang:
            self.server.stopping.wait(HANG_SECONDS)
            self._drop_connection()
            return True
        error = faults.error
        if error is None and faults.error_event_after is not None and not streaming:
            error = "500"
        if error:
            status, payload = _ERRORS[error]
            self._send_json(status, payload, {"Retry-After": "1"} if error == "429" else {})
            return True
        if faults.html or faults.text:
            if faults.html:
                self._send_bytes(200, "text/html", HTML_PAGE)
            else:
                self._send_bytes(200, "text/plain", TEXT_BODY)
            return True
        return False

    def _refuse(self, message: str, param: str | None, code: str | None = None) -> None:
        self._send_json(400, _error_body(message, "invalid_request_error", code, param))

    # -- embeddings ----------------------------------------------------------------------

    def _embed(self) -> None:
        read = self._read_json()
        if read is None:
            return
        body, model = read
        parsed = self._faults(model, MODELS + EMBEDDING_MODELS)
        if parsed is None:
            return
        base, faults = parsed
        if self._answered_by_faults(faults, streaming=False):
            return
        try:
            inputs = embedding_inputs(body.get("input"))
        except ValueError as exc:
            self._refuse(f"Invalid 'input': {exc}.", "input")
            return
        dimensions = body.get("dimensions")
        if dimensions is not None and (
            not isinstance(dimensions, int)
            or isinstance(dimensions, bool)
            or not 1 <= dimensions <= EMBEDDING_SIZE
        ):
            self._refuse(
                f"This model's embeddings have 1 to {EMBEDDING_SIZE} dimensions, not "
                f"{dimensions!r}.",
                "dimensions",
            )
            return
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            self._refuse(f"Invalid 'encoding_format': {encoding!r}.", "encoding_format")
            return
        if faults.slow_ms and self.server.stopping.wait(faults.slow_ms / 1000):
            return
        data = []
        for index, (text, _) in enumerate(inputs):
            vector = embedding_vector(text, dimensions or EMBEDDING_SIZE)
            data.append(
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": embedding_base64(vector) if encoding == "base64" else vector,
                }
            )
        answer: dict[str, Any] = {"object": "list", "data": data, "model": base}
        if not faults.no_usage:
            tokens = sum(count for _, count in inputs)
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        payload = json.dumps(answer).encode()
        if faults.bad_json_after is not None:
            self._send_bytes(200, "application/json", payload[: len(payload) // 2])
            return
        self._send_bytes(200, "application/json", payload)

    # -- responses -----------------------------------------------------------------------

    def _response_not_found(self, response_id: str) -> None:
        message = f"Response with id '{response_id}' not found."
        self._send_json(404, _error_body(message, "invalid_request_error", None))

    def _respond(self) -> None:
        read = self._read_json()
        if read is None:
            return
        body, model = read
        parsed = self._faults(model, MODELS)
        if parsed is None:
            return
        _, faults = parsed
        streaming = bool(body.get("stream"))
        if self._answered_by_faults(faults, streaming=streaming):
            return
        try:
            items = response_items(body.get("input"))
        except ValueError as exc:
            self._refuse(f"Invalid 'input': {exc}.", "input")
            return
        history: list[dict[str, Any]] = []
        previous_id = body.get("previous_response_id")
        if previous_id is not None:
            stored = (
                self.server.stored_response(previous_id) if isinstance(previous_id, str) else None
            )
            if stored is None:
                self._refuse(
                    f"Previous response with id '{previous_id}' not found.",
                    "previous_response_id",
                    "previous_response_not_found",
                )
                return
            history = stored[1]
        limit = body.get("max_output_tokens")
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            self._refuse(f"Invalid 'max_output_tokens': {limit!r}.", "max_output_tokens")
            return
        instructions = body.get("instructions")
        instructions = instructions if isinstance(instructions, str) else None
        conversation = history + items
        last = conversation[-1] if conversation else {}
        answered_call = last.get("type") == "function_call_output"
        call_name = None
        if faults.tool_call and body.get("tool_choice") != "none":
            call_name = _first_function_tool(body.get("tools"))
            if call_name is None:
                message = "@tool needs 'tools', the first one of type function with a name."
                self._refuse(message, "tools")
                return
            if answered_call and not faults.tool_loop:
                call_name = None
        if call_name is not None:
            users = _user_texts(conversation)
            # The arguments chat completions' @tool makes of the same text.
            call = tool_call(
                [{"role": "user", "content": users[-1] if users else ""}],
                [{"type": "function", "function": {"name": call_name}}],
            )
            arguments = call["arguments"] if call else "{}"
            tokens = argument_fragments(arguments)
        else:
            tokens = re.findall(r"\S+\s*", response_reply(conversation, faults))
        complete = limit is None or len(tokens) <= limit
        tokens = tokens if complete else tokens[:limit]
        status = "completed" if complete else "incomplete"
        if call_name is not None:
            item: dict[str, Any] = {
                "id": f"fc_{uuid.uuid4().hex}",
                "type": "function_call",
                "status": status,
                "call_id": f"call_{uuid.uuid4().hex[:24]}",
                "name": call_name,
                "arguments": "".join(tokens),
            }
        else:
            item = {
                "id": f"msg_{uuid.uuid4().hex}",
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": [_output_text("".join(tokens))],
            }
        input_tokens = response_input_tokens(instructions, conversation)
        usage = None
        if not faults.no_usage:
            usage = {
                "input_tokens": input_tokens,
                "input_tokens_details": {
                    "cached_tokens": min(faults.cached, input_tokens),
                    "cache_write_tokens": 0,
                },
                "output_tokens": len(tokens),
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + len(tokens),
            }
        created = int(time.time())
        store = body.get("store") is not False
        response: dict[str, Any] = {
            "id": f"resp_{uuid.uuid4().hex}",
            "object": "response",
            "created_at": created,
            "status": status,
            "background": False,
            "completed_at": created if complete else None,
            "error": None,
            "incomplete_details": None if complete else {"reason": "max_output_tokens"},
            "instructions": instructions,
            "max_output_tokens": limit,
            "max_tool_calls": None,
            "model": model,
            "output": [item],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": previous_id,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": store,
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_logprobs": 0,
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": body.get("metadata") or {},
        }
        if store:
            self.server.store_response(response, [*conversation, item])
        if streaming:
            self._stream_response(response, item, tokens, faults)
            return
        if faults.slow_ms and self.server.stopping.wait(faults.slow_ms / 1000):
            return
        payload = json.dumps(response).encode()
        if faults.drop_after is not None or faults.cut_after is not None:
            self._send_head(200, "application/json", {"Content-Length": str(len(payload))})
            self.wfile.write(payload[: len(payload) // 2])
            self._drop_connection()
            return
        if faults.bad_json_after is not None:
            self._send_bytes(200, "application/json", payload[: len(payload) // 2])
            return
        self._send_bytes(200, "application/json", payload)

    def _stream_response(
        self, response: dict[str, Any], item: dict[str, Any], tokens: list[str], faults: Faults
    ) -> None:
        """The typed events of a Responses stream (see the module's docstring); the markers
        acting "after N" count the delta events."""
        sequence = iter(range(1 << 30))  # numbered as sent: a marker's event takes its turn

        def event(kind: str, fields: dict[str, Any]) -> bytes:
            data = {"type": kind, **fields, "sequence_number": next(sequence)}
            return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

        where: dict[str, Any] = {"item_id": item["id"], "output_index": 0}
        opening = {
            **response,
            "status": "in_progress",
            "completed_at": None,
            "incomplete_details": None,
            "output": [],
            "usage": None,
        }
        head: list[_Event] = [
            ("response.created", {"response": opening}),
            ("response.in_progress", {"response": opening}),
        ]
        deltas: list[_Event]
        tail: list[_Event]
        if item["type"] == "function_call":
            head.append(
                (
                    "response.output_item.added",
                    {"output_index": 0, "item": {**item, "status": "in_progress", "arguments": ""}},
                )
            )
            deltas = [
                ("response.function_call_arguments.delta", {**where, "delta": token})
                for token in tokens
            ]
            tail = [
                (
                    "response.function_call_arguments.done",
                    {**where, "name": item["name"], "arguments": item["arguments"]},
                )
            ]
        else:
            part = item["content"][0]
            at = {**where, "content_index": 0}
            head += [
                (
                    "response.output_item.added",
                    {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
                ),
                ("response.content_part.added", {**at, "part": _output_text("")}),
            ]
            deltas = [
                ("response.output_text.delta", {**at, "delta": token, "logprobs": []})
                for token in tokens
            ]
            tail = [
                ("response.output_text.done", {**at, "text": part["text"], "logprobs": []}),
                ("response.content_part.done", {**at, "part": part}),
            ]
        final = "response.completed" if response["status"] == "completed" else "response.incomplete"
        tail += [
            ("response.output_item.done", {"output_index": 0, "item": item}),
            (final, {"response": response}),
        ]
        self._send_head(
            200,
            "text/event-stream; charset=utf-8",
            {"Transfer-Encoding": "chunked", "Cache-Control": "no-cache"},
        )

        def after(count: int | None, sent: int) -> bool:
            return count is not None and min(count, len(deltas)) == sent

        def ended(sent: int) -> bool:
            """Send what the markers acting after ``sent`` deltas send; whether that ended
            the stream."""
            if after(faults.bad_json_after, sent):
                self._write_chunk(
                    b'event: response.output_text.delta\ndata: {"type": "response.out\n\n'
                )
            if after(faults.error_event_after, sent):
                error = {
                    "code": "server_error",
                    "message": STREAM_ERROR["error"]["message"],
                    "param": None,
                }
                self._write_chunk(event("error", error))
                self._write_chunk(b"")
                self.close_connection = True
                return True
            if after(faults.drop_after, sent):
                self._drop_connection()
                return True
            return False

        for kind, fields in head:
            self._write_chunk(event(kind, fields))
        for sent, (kind, fields) in enumerate(deltas):
            if ended(sent):
                return
            if faults.slow_ms and self.server.stopping.wait(faults.slow_ms / 1000):
                self._drop_connection()
                return
            self._write_chunk(event(kind, fields))
        if ended(len(deltas)):
            return
        for kind, fields in tail:
            self._write_chunk(event(kind, fields))
        self._write_chunk(b"")

    # -- chat completions ----------------------------------------------------------------

    def _answer(
        self,
        body: dict[str, Any],
        model: str,
        messages: list[dict[str, Any]],
        faults: Faults,
        completion_id: str,
    ) -> None:
        problem = cap_problem(body)
        if problem is not None:
            message, param = problem
            self._send_json(400, _error_body(message, "invalid_request_error", None, param))
            return
        reply = chat_reply(body, messages, faults)
        tokens, finish_reason, call, usage = (
            reply.tokens,
            reply.finish_reason,
            reply.call,
            reply.usage,
        )
        envelope = _envelope(completion_id, model)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            if call is None:
                opening: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
                deltas: list[dict[str, Any]] = [{"content": token} for token in tokens]
            else:
                opening = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["name"], "arguments": ""},
                        }
                    ],
                    "refusal": None,
                }
                deltas = [
                    {"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}
                    for fragment in tokens
                ]
            self._stream(
                envelope,
                opening,
                deltas,
                finish_reason,
                usage if include_usage else None,
                include_usage,
                faults,
            )
            return
        if faults.slow_ms and self.server.stopping.wait(faults.slow_ms / 1000):
            return
        data = json.dumps(completion_json(envelope, reply, faults)).encode()
        if faults.drop_after is not None or faults.cut_after is not None:
            self._send_head(200, "application/json", {"Content-Length": str(len(data))})
            self.wfile.write(data[: len(data) // 2])
            self._drop_connection()
            return
        if faults.bad_json_after is not None:
            self._send_bytes(200, "application/json", data[: len(data) // 2])
            return
        self._send_bytes(200, "application/json", data)

    def _stream(
        self,
        envelope: dict[str, Any],
        opening: dict[str, Any],
        deltas: list[dict[str, Any]],
        finish_reason: str,
        usage: dict[str, Any] | None,
        include_usage: bool,
        faults: Faults,
    ) -> None:
        """``opening`` is the first chunk's delta; each of ``deltas`` (a token, or a fragment
        of the tool call's arguments) counts as one chunk for ``@drop`` and the other markers
        that act "after N chunks"."""
        self._send_head(
            200,
            "text/event-stream; charset=utf-8",
            {"Transfer-Encoding": "chunked", "Cache-Control": "no-cache"},
        )

        def event(
            choices: list[dict[str, Any]], chunk_usage: dict[str, Any] | None = None
        ) -> bytes:
            payload = {**envelope, "object": "chat.completion.chunk", "choices": choices}
            if include_usage:  # OpenAI sends "usage": null on every chunk but the last
                payload["usage"] = chunk_usage
            return f"data: {json.dumps(payload)}\n\n".encode()

        def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            if faults.no_choices:
                return []
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

        def after(count: int | None, sent: int) -> bool:
            """Is this the moment for a marker acting after ``count`` chunks? (Past the end of
            the reply, that is just before the finish chunk.)"""
            return count is not None and min(count, len(deltas)) == sent

        self._write_chunk(event(choice(opening)))
        events = [event(choice(delta)) for delta in deltas]
        events.append(event(choice({}, finish_reason)))
        if usage is not None:
            events.append(event([], usage))
        events.append(b"data: [DONE]\n\n")
        for sent, data in enumerate(events):
            if after(faults.bad_json_after, sent):
                self._write_chunk(f'data: {{"id": "{envelope["id"]}", "choices": [\n\n'.encode())
            if after(faults.error_event_after, sent):
                self._write_chunk(f"data: {json.dumps(STREAM_ERROR)}\n\n".encode())
                self._write_chunk(b"")
                self.close_connection = True
                return
            if after(faults.drop_after, sent):
                self._drop_connection()
                return
            if after(faults.stall_after, sent):
                self._wait_for_stop_or_client(HANG_SECONDS)
                self._drop_connection()
                return
            slow = sent < len(deltas) and faults.slow_ms
            if slow and self.server.stopping.wait(faults.slow_ms / 1000):
                self._drop_connection()
                return
            if after(faults.cut_after, sent):
                self._write_chunk(data[: len(data) // 2])
                self._drop_connection()
                return
            self._write_chunk(data)
        self._write_chunk(b"")  # the zero-length chunk that ends a chunked body

    # -- the Batch API: files and batches ------------------------------------------------

    def _read_body(self) -> bytes:
        """The request's body, sent with a Content-Length or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))
        data = b""
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            data += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return data

    def _batch_api_post(self, path: str) -> None:
        data = self._read_body()
        if not self._authorized():
            return
        if path == "/v1/files":
            self._upload(data)
        elif path == "/v1/batches":
            self._create_batch(data)
        elif path.startswith(_BATCHES_PATH) and path.endswith("/cancel"):
            self._cancel_batch(path.removeprefix(_BATCHES_PATH).removesuffix("/cancel"))
        else:
            self._send_json(404, _error_body("Unknown path", "invalid_request_error", None))

    def _batch_api_get(self, path: str) -> None:
        if path == "/v1/batches":
            self._list_batches()
        elif path.startswith(_BATCHES_PATH):
            self._retrieve_batch(path.removeprefix(_BATCHES_PATH))
        elif path.startswith(_FILES_PATH):
            file_id, _, rest = path.removeprefix(_FILES_PATH).partition("/")
            stored = self.server.stored_file(file_id)
            if stored is None or rest not in ("", "content"):
                message = f"No such File object: {file_id}"
                self._send_json(404, _error_body(message, "invalid_request_error", None, "id"))
            elif rest == "content":
                self._send_bytes(200, "application/octet-stream", stored[1])
            else:
                self._send_json(200, stored[0])
        else:
            self._send_json(404, _error_body("Unknown path", "invalid_request_error", None))

    def _upload(self, data: bytes) -> None:
        try:
            fields = multipart_fields(self.headers.get("Content-Type", ""), data)
            filename, content = fields["file"]
            purpose = fields["purpose"][1].decode()
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            self._refuse(f"Invalid upload: {exc}", "file")
            return
        if purpose != "batch":
            self._refuse(
                f"The fake upstream takes files for batches only, not {purpose!r}.", "purpose"
            )
            return
        stored = file_object(filename or "upload.jsonl", content, purpose)
        self.server.store_file(stored, content, upload=True)
        self._send_json(200, stored)

    def _create_batch(self, data: bytes) -> None:
        try:
            body = json.loads(data)
            input_file_id, endpoint = body["input_file_id"], body["endpoint"]
            window, metadata = body.get("completion_window"), body.get("metadata")
        except (ValueError, KeyError, TypeError) as exc:
            self._refuse(f"Invalid request: {exc}", None)
            return
        stored = self.server.stored_file(input_file_id) if isinstance(input_file_id, str) else None
        if stored is None:
            message = f"No such File object: {input_file_id}"
            self._send_json(
                404, _error_body(message, "invalid_request_error", None, "input_file_id")
            )
            return
        if endpoint not in BATCH_ENDPOINTS:
            self._refuse(f"Invalid value: {endpoint!r}.", "endpoint")
            return
        if window != "24h":
            self._refuse(
                f"Invalid value: {window!r}. Supported values are: '24h'.", "completion_window"
            )
            return
        batch = _FakeBatch.create(input_file_id, stored[1], endpoint, metadata)
        self.server.add_batch(batch)
        self._send_json(200, batch.object)

    def _retrieve_batch(self, batch_id: str) -> None:
        with self.server.batch_lock:
            batch = self.server.batch(batch_id)
            if batch is not None:
                batch.advance(self.server)
                answer = json.loads(json.dumps(batch.object))
        if batch is None:
            self._batch_not_found(batch_id)
        else:
            self._send_json(200, answer)

    def _cancel_batch(self, batch_id: str) -> None:
        with self.server.batch_lock:
            batch = self.server.batch(batch_id)
            if batch is not None:
                cancelled = batch.cancel()
                answer = json.loads(json.dumps(batch.object))
        if batch is None:
            self._batch_not_found(batch_id)
        elif not cancelled:
            message = f"Cannot cancel a batch with status '{answer['status']}'."
            self._send_json(409, _error_body(message, "invalid_request_error", None))
        else:
            self._send_json(200, answer)

    def _list_batches(self) -> None:
        query = dict(parse_qsl(urlsplit(self.path).query))
        try:
            limit = int(query.get("limit", 20))
        except ValueError:
            self._refuse("Invalid 'limit'.", "limit")
            return
        with self.server.batch_lock:
            data = [json.loads(json.dumps(b.object)) for b in self.server.all_batches()]
        page = data[:limit]
        self._send_json(
            200,
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(data) > limit,
            },
        )

    def _batch_not_found(self, batch_id: str) -> None:
        message = f"No batch found with id '{batch_id}'."
        self._send_json(404, _error_body(message, "invalid_request_error", None, "batch_id"))

    # -- plumbing ------------------------------------------------------------------------

    def _authorized(self) -> bool:
        """Answer 401 (and return False) unless there is a usable bearer key. Real OpenAI
        echoes a masked key in its message; we echo none at all."""
        scheme, _, key = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            self._send_json(
                401, _error_body("You didn't provide an API key.", "invalid_request_error", None)
            )
            return False
        if key.strip() == BAD_KEY:
            self._send_json(401, _ERRORS["401"][1])
            return False
        return True

    def _send_head(self, status: int, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("x-request-id", f"req_fake_{id(self):x}")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self._send_head(
            status, "application/json", {"Content-Length": str(len(data)), **(headers or {})}
        )
        self.wfile.write(data)

    def _send_bytes(self, status: int, content_type: str, data: bytes) -> None:
        self._send_head(status, content_type, {"Content-Length": str(len(data))})
        self.wfile.write(data)

    def _wait_for_stop_or_client(self, seconds: float) -> None:
        """Send nothing until `stop()`, until the client closes (or sends anything), or for
        ``seconds``. `stop()` sets ``stopping`` and then shuts every open connection down,
        which wakes the wait (as does a client's close): the thread never outlives either."""
        if self.server.stopping.is_set():
            return
        with selectors.DefaultSelector() as selector:
            selector.register(self.connection, selectors.EVENT_READ)
            selector.select(seconds)

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

    def _drop_connection(self) -> None:
        """Close abruptly, mid-body: the client sees an incomplete response, as when a proxy
        or the provider cuts the connection."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class FakeUpstream:
    """Runs the fake server in a background thread.

    >>> with FakeUpstream() as upstream:
    ...     client = AsyncOpenAI(base_url=upstream.base_url, api_key="sk-test")
    """

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeUpstream:
        self._server = _Server(self._port)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long stop() may wait for the accept loop
            name="fake-upstream",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.stopping.set()
        server.shutdown()  # stops accepting
        server.close_open_connections()
        server.server_close()
        server.join_handlers()
        if self._thread is not None:
            self._thread.join()

    @property
    def server(self) -> _Server:
        if self._server is None:
            raise RuntimeError("FakeUpstream is not running")
        return self._server

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def request_counts(self) -> Counter[str]:
        """Requests received per model name (markers included): chat completions,
        moderations, embeddings and responses, and each request of a batch as it is answered."""
        return self.server.snapshot()

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The bodies of the latest requests counted in `request_counts` (at most
        `REQUESTS_KEPT`), oldest first."""
        return self.server.recorded()

    @property
    def uploads(self) -> list[dict[str, Any]]:
        """The files uploaded to ``/v1/files``: each file object with its bytes (``data``)."""
        return self.server.recorded_uploads()

    @property
    def batches(self) -> list[dict[str, Any]]:
        """The batches made through ``/v1/batches``, newest first, as last answered."""
        with self.server.batch_lock:
            return [json.loads(json.dumps(b.object)) for b in self.server.all_batches()]

    def release_batches(self) -> int:
        """Let the batches held by ``@batchwait`` end at their next poll; how many there were."""
        return self.server.release_batches()

    def reset(self) -> None:
        self.server.reset()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
