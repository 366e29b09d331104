"""The provider interface: what services may ask of an LLM backend and what they get back.

Everything here is plain Python (no Django) so providers can be used from services, consumers,
tasks and benchmarks alike. Providers translate their backend's failures into `ProviderError`
with one of a small set of `ErrorCode`s, so callers decide about retries, budgets and user
messages without knowing which SDK sits underneath.

A provider whose upstream has OpenAI's Batch API (files and batches) is also a `BatchProvider`;
`batch_provider` says which, refusing the others with a `ProviderError`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class ErrorCode(StrEnum):
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    BAD_REQUEST = "bad_request"
    CONTEXT_TOO_LONG = "context_too_long"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    TIMEOUT = "timeout"
    MODEL_NOT_FOUND = "model_not_found"
    # The address policy refused the connection's host: nothing was sent.
    ADDRESS_REFUSED = "upstream_address_refused"


# Only these can succeed when asked again later; quota, auth and request errors cannot.
_RETRYABLE = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.UPSTREAM_UNAVAILABLE, ErrorCode.TIMEOUT})


class ProviderError(Exception):
    """A failed provider call. `message` is safe to show and log: it never contains a secret."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
        status: int | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = code in _RETRYABLE if retryable is None else retryable
        self.retry_after = retry_after
        self.status = status
        # The request parameter at fault, when one is (a `BAD_REQUEST` naming what the
        # provider cannot honour), for an API error's `param`.
        self.param = param

    def __repr__(self) -> str:
        return f"ProviderError({self.code.value!r}, {self.message!r}, status={self.status})"


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion call. `None` means "not sent": the upstream's default applies.

    The fields are OpenAI's Chat Completions parameters under their wire names, with their
    values as OpenAI documents them (callers validate; the gateway's parser checks every one).
    A provider sends on what it can honour and names the first one it cannot
    (`Provider.unsupported`); none is dropped without a word. `max_tokens` and
    `max_completion_tokens` are both reply caps, each sent as the client named it: OpenAI's
    reasoning models refuse `max_tokens`.
    """

    model: str
    messages: list[dict[str, Any]]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    logit_bias: dict[str, int] | None = None  # token id (as a string) -> bias, -100..100
    logprobs: bool | None = None
    top_logprobs: int | None = None  # 0..20, with logprobs=True
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    service_tier: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    moderation: dict[str, Any] | None = None

    @property
    def reply_cap(self) -> int | None:
        """The most tokens the reply may have: `max_completion_tokens`, else `max_tokens`."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # the part of prompt_tokens served from the prompt cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TextDelta:
    text: str
    # The chunk's `choices[0].logprobs` as OpenAI shapes it (`{"content": [{"token", "logprob",
    # "bytes", "top_logprobs"}, ...], "refusal": None}`), when the request asked for logprobs.
    logprobs: dict[str, Any] | None = None


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of the tool call at `index`, as OpenAI streams it: the first piece of a call
    carries its `id`, `type` and `name` (with `arguments` usually empty), the following ones
    only `arguments` fragments, which concatenate to the call's JSON arguments.

    Only yielded when the request had `tools`; the fields mirror the wire format so a gateway
    can pass the chunk on unchanged."""

    index: int
    id: str | None = None
    type: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class StreamEnd:
    """Last event of every successful stream. `usage` is None when the upstream sent none."""

    finish_reason: str | None
    usage: Usage | None
    upstream_id: str | None


@dataclass(frozen=True)
class Waiting:
    """The request is queued behind `position` other generations (running or queued).

    Providers that serve one generation at a time (the local model) yield it before any
    `TextDelta`, and only when busy: when queued, then each time the request moves up
    (`position` only shrinks, and is always >= 1).
    """

    position: int


StreamEvent = Waiting | TextDelta | ToolCallDelta | StreamEnd


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    usage: Usage | None
    upstream_id: str | None
    raw: dict[str, Any]
    # The choice's `logprobs` as OpenAI shapes it, when the request asked for logprobs.
    logprobs: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModerationResult:
    """What a moderation model made of one input: flagged or not, and in which of OpenAI's
    categories (``violence``, ``harassment/threatening``…)."""

    flagged: bool
    categories: list[str]  # the flagged ones
    model: str
    upstream_id: str | None = None


@dataclass(frozen=True)
class Embeddings:
    """Vectors for each input, in order, and the input tokens the upstream counted (None when
    it said nothing)."""

    vectors: list[list[float]]
    prompt_tokens: int | None
    model: str


class Provider(Protocol):
    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Yield `TextDelta`s (and `ToolCallDelta`s, if the request has `tools` and the model
        calls one), then exactly one `StreamEnd`.

        Raises `ProviderError`, possibly after some deltas were already yielded (a dropped
        connection); the caller keeps what it received and marks the reply incomplete.

        An async generator, not just an iterator: a caller that stops early `aclose()`s it
        (`contextlib.aclosing`), which releases the upstream at once.
        """
        ...

    async def complete(self, request: ChatRequest) -> Completion: ...

    def unsupported(self, request: ChatRequest) -> str | None:
        """The name of the first parameter of `request` this provider cannot honour, or None.

        Callers ask before `stream`/`complete` to refuse the request naming the parameter
        (a 400), rather than have it answered without what was asked. A provider that sends
        everything on to an upstream which decides for itself answers None. `stream` and
        `complete` refuse such a request too (`ProviderError` `BAD_REQUEST` with `param`).
        """
        ...

    async def moderate(self, *, model: str, input: str) -> ModerationResult:
        """Ask the upstream's ``/v1/moderations`` about ``input``. Raises ``ProviderError``
        (``BAD_REQUEST`` from a provider that has no moderation, like the local model)."""
        ...

    async def embed(
        self, *, model: str, input: list[str], dimensions: int | None = None
    ) -> Embeddings:
        """``/v1/embeddings`` for ``input`` (floats: the caller encodes). Raises
        ``ProviderError`` (``BAD_REQUEST`` from a provider without embeddings)."""
        ...

    async def respond(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/responses`` with ``body`` as the upstream's own Responses API takes it
        (a connection that speaks it: ``previous_response_id`` passed through); the response
        object as a dict. Raises ``ProviderError``."""
        ...

    def respond_stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The same with ``stream``: each server-sent event's data, as a dict, in order."""
        ...

    async def list_models(self) -> list[str]: ...

    async def aclose(self) -> None: ...


# --- the upstream's own Batch API ----------------------------------------------------------------

# OpenAI's batch statuses after which nothing changes any more.
BATCH_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True)
class UpstreamBatch:
    """What an upstream says of one of its batches, as far as a caller needs it: the status
    (OpenAI's words: ``validating``, ``in_progress``, ``finalizing``, ``completed``, ``failed``,
    ``expired``, ``cancelling``, ``cancelled``), the result files once it ended, its counts, why
    it failed (OpenAI's ``errors.data`` items), and the metadata it was created with."""

    id: str
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.status in BATCH_ENDED


@runtime_checkable
class BatchProvider(Protocol):
    """The upstream's own Batch API (``/v1/files`` and ``/v1/batches``). Every method raises
    ``ProviderError`` (its kinds as for a chat call); a provider whose upstream has none refuses
    with ``BAD_REQUEST`` (``supports_batches`` False)."""

    supports_batches: bool

    async def upload_batch_file(self, *, data: bytes, filename: str) -> str:
        """Upload a JSONL input file (purpose ``batch``); the upstream's file id."""
        ...

    async def create_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
    ) -> UpstreamBatch: ...

    async def retrieve_batch(self, batch_id: str) -> UpstreamBatch: ...

    async def cancel_batch(self, batch_id: str) -> UpstreamBatch: ...

    async def list_batches(self, *, limit: int = 100) -> list[UpstreamBatch]:
        """The upstream's latest batches, newest first (one page of at most ``limit``)."""
        ...

    async def file_content(self, file_id: str) -> bytes:
        """The bytes of one of the upstream's files (a batch's output or error file)."""
        ...


def batch_provider(provider: object) -> BatchProvider:
    """``provider`` as a `BatchProvider`; a `ProviderError` (``BAD_REQUEST``) if it has no
    Batch API."""
    if isinstance(provider, BatchProvider) and provider.supports_batches:
        return provider
    raise ProviderError(
        ErrorCode.BAD_REQUEST, "This provider has no Batch API; batches run line by line here."
    )
