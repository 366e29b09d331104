"""The provider interface: what services may ask of an LLM backend and what they get back.

Everything here is plain Python (no Django) so providers can be used from services, consumers,
tasks and benchmarks alike. Providers translate their backend's failures into `ProviderError`
with one of a small set of `ErrorCode`s, so callers decide about retries, budgets and user
messages without knowing which SDK sits underneath.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class ErrorCode(StrEnum):
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    BAD_REQUEST = "bad_request"
    CONTEXT_TOO_LONG = "context_too_long"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    TIMEOUT = "timeout"
    MODEL_NOT_FOUND = "model_not_found"


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
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = code in _RETRYABLE if retryable is None else retryable
        self.retry_after = retry_after
        self.status = status

    def __repr__(self) -> str:
        return f"ProviderError({self.code.value!r}, {self.message!r}, status={self.status})"


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion call. `None` means "not sent": the upstream's default applies."""

    model: str
    messages: list[dict[str, Any]]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None


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

    async def list_models(self) -> list[str]: ...

    async def aclose(self) -> None: ...
