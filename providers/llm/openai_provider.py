"""Provider for OpenAI and any OpenAI-compatible endpoint, on the official `openai` SDK.

The SDK does the HTTP, SSE parsing and bounded retries (408/409/429/5xx, connection errors,
timeouts; honouring Retry-After); this module picks explicit limits, shapes requests from
`ChatRequest`, and turns SDK exceptions into `ProviderError`s whose messages never carry the
key. One exception to the SDK's retry policy: a 429 whose error is `insufficient_quota` means
the account has no credit, which retrying cannot fix, so it is not retried (see
`_refuse_quota_retries`). Every request goes through the address policy
(`providers.addresses`): to an address it checked, redirects not followed.

Beyond chat: ``/v1/moderations`` (`moderate`), ``/v1/embeddings`` (`embed`, floats asked for:
callers encode), and the Responses API (`respond`, `respond_stream`) for connections whose
upstream speaks it — the body sent on as the client wrote it, the answer and each streamed
event handed back as the JSON the upstream sent (`_as_json`), so fields the SDK does not know
yet are kept. An ``error`` event of a response stream, a stream that ends before its final
event, and an event that is not JSON are `ProviderError`s like any other failure;
``response.failed`` and ``response.incomplete`` are answers, passed on as they come.

The Batch API (`BatchProvider`): a JSONL input file uploaded (``files.create``, purpose
``batch``), a batch created over it, retrieved, listed and cancelled (``batches``), and its
result files read (``files.content``). Each batch comes back as an `UpstreamBatch`, read from
what the upstream sent without trusting its shape (the SDK does not validate answers): an
answer that is not a batch is a `ProviderError` like a failed call. A result line's own error
(its ``status_code`` and body) becomes a `ProviderError` by the rules of a failed call
(`batch_line_error`).
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import AsyncGenerator
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import httpx2
import openai
from openai.types import CompletionUsage
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

from providers.addresses import AddressPolicy, AddressRefused, PinnedTransport
from providers.llm.base import (
    ChatRequest,
    Completion,
    Embeddings,
    ErrorCode,
    ModerationResult,
    ProviderError,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    UpstreamBatch,
    Usage,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
KEYLESS_PLACEHOLDER = "no-key"
_MAX_DETAIL = 300
# The events that end a Responses API stream: one of them comes last, or the stream broke off.
RESPONSE_FINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})


def _is_quota_error(error: object) -> bool:
    return isinstance(error, dict) and "insufficient_quota" in (
        error.get("code"),
        error.get("type"),
    )


async def _refuse_quota_retries(response: httpx2.Response) -> None:
    """httpx response hook: mark `insufficient_quota` answers with the SDK's own
    `x-should-retry: false` header, so the SDK stops retrying what is not a rate limit.

    The SDK decides retries from status and headers only, and OpenAI sends both kinds of 429
    without such a header; reading the (small) error body here is the one place to tell them
    apart before the SDK sleeps and asks again.
    """
    if response.status_code != 429:
        return
    await response.aread()
    try:
        error = response.json().get("error")
    except ValueError:
        return
    if _is_quota_error(error):
        response.headers["x-should-retry"] = "false"


def _retry_after(headers: httpx2.Headers) -> float | None:
    """Seconds to wait, from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    if (millis := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT; an odd server might omit the zone
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _usage(usage: CompletionUsage | None) -> Usage | None:
    if usage is None:
        return None
    details = usage.prompt_tokens_details
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=(details.cached_tokens if details else None) or 0,
    )


def _as_json(value: object) -> dict[str, Any]:
    """An SDK object as the JSON the upstream sent: the keys it sent (those the SDK does not
    know included), none it left out. Raises ValueError for anything that is not an object."""
    if isinstance(value, openai.BaseModel):
        # The SDK builds its objects without validating them: only the keys that were sent
        # are set, and exclude_unset gives back exactly those.
        return value.to_dict(mode="json", warnings=False)
    if isinstance(value, dict):  # an event type the SDK does not know yet
        return value
    raise ValueError(f"expected a JSON object, got {type(value).__name__}")


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


def _vector(value: object) -> list[float]:
    if not isinstance(value, list) or not value:
        raise ValueError("an embedding is not a list of numbers")
    vector = []
    for number in value:
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ValueError("an embedding is not a list of numbers")
        if not math.isfinite(number):
            raise ValueError("an embedding has a number that is not finite")
        vector.append(float(number))
    return vector


def _tool_call_deltas(calls: list[ChoiceDeltaToolCall] | None) -> list[ToolCallDelta]:
    events = []
    for position, call in enumerate(calls or ()):
        function = call.function
        events.append(
            ToolCallDelta(
                # The SDK does not validate chunks, and some compatible servers send a whole
                # call per chunk without an index: its place in the list is the best guess.
                index=call.index if isinstance(call.index, int) else position,
                id=call.id,
                type=call.type,
                name=function.name if function else None,
                arguments=(function.arguments if function else None) or "",
            )
        )
    return events


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _optional_id(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def upstream_batch(value: object) -> UpstreamBatch:
    """A batch object as the upstream sent it; ValueError if it is not one (no id, no status)."""
    data = _as_json(value)
    batch_id, status = data.get("id"), data.get("status")
    if not isinstance(batch_id, str) or not batch_id or not isinstance(status, str):
        raise ValueError("not a batch object")
    counts = data.get("request_counts")
    counts = counts if isinstance(counts, dict) else {}
    errors = data.get("errors")
    items = errors.get("data") if isinstance(errors, dict) else None
    metadata = data.get("metadata")
    return UpstreamBatch(
        id=batch_id,
        status=status,
        input_file_id=_optional_id(data.get("input_file_id")),
        output_file_id=_optional_id(data.get("output_file_id")),
        error_file_id=_optional_id(data.get("error_file_id")),
        total=_count(counts.get("total")),
        completed=_count(counts.get("completed")),
        failed=_count(counts.get("failed")),
        errors=(
            [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
        ),
        metadata=(
            {k: v for k, v in metadata.items() if isinstance(k, str) and isinstance(v, str)}
            if isinstance(metadata, dict)
            else {}
        ),
    )


def batch_line_error(status: int, body: object, *, secret: str = "") -> ProviderError:
    """The failure of one request of an upstream batch (its result line's ``status_code`` and
    ``body``), by the rules of a failed call: auth, rate limit, quota, model, context, the
    upstream's own failure, else a refused request. The upstream's message is passed on
    shortened, ``secret`` (the connection's key) scrubbed out, except for auth failures."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    message = error.get("message")
    detail = ""
    if isinstance(message, str) and message:
        detail = " " + (message.replace(secret, "***") if secret else message)[:_MAX_DETAIL]
    if status in (401, 403):
        return ProviderError(
            ErrorCode.AUTH, f"The provider rejected the API key ({status}).", status=status
        )
    if _is_quota_error(error):
        return ProviderError(
            ErrorCode.QUOTA_EXHAUSTED,
            "The provider account is out of quota; add credit or change its plan.",
            status=status,
        )
    if status == 429:
        return ProviderError(
            ErrorCode.RATE_LIMITED,
            f"The provider is rate limiting requests ({status}).{detail}",
            status=status,
        )
    if status == 404:
        return ProviderError(
            ErrorCode.MODEL_NOT_FOUND,
            f"The provider does not offer this model ({status}).{detail}",
            status=status,
        )
    if error.get("code") == "context_length_exceeded":
        return ProviderError(
            ErrorCode.CONTEXT_TOO_LONG,
            f"The conversation is too long for this model.{detail}",
            status=status,
        )
    if status >= 500 or status in (408, 409) or status < 400:
        return ProviderError(
            ErrorCode.UPSTREAM_UNAVAILABLE,
            f"The provider failed ({status}).{detail}",
            status=status,
        )
    return ProviderError(
        ErrorCode.BAD_REQUEST,
        f"The provider refused the request ({status}).{detail}",
        status=status,
    )


class OpenAIProvider:
    """`Provider` for one connection (base URL + key). Create one per connection and reuse it:
    it holds a connection pool. Close it with `aclose()`."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str,
        timeout: float = 60,
        max_retries: int = 2,
        organization: str | None = None,
        project: str | None = None,
        address_policy: AddressPolicy | None = None,
    ) -> None:
        """``address_policy``: where requests may go (None: public addresses only)."""
        self._api_key = api_key
        self._client = openai.AsyncOpenAI(
            # Explicit default: the OPENAI_BASE_URL of the server's environment must not
            # redirect a tenant's key somewhere else.
            base_url=base_url or DEFAULT_BASE_URL,
            # Self-hosted servers (Ollama, vLLM, LM Studio) need no key, but the SDK refuses an
            # empty one and would then read keys from the server's environment: send a
            # placeholder instead, which such servers ignore.
            api_key=api_key or KEYLESS_PLACEHOLDER,
            timeout=timeout,
            max_retries=max_retries,
            http_client=openai.DefaultAsyncHttpxClient(
                # Every request to an address the policy checked; a redirect is an answer, not
                # a second request to an address nobody checked.
                transport=PinnedTransport(
                    address_policy or AddressPolicy(), limits=openai.DEFAULT_CONNECTION_LIMITS
                ),
                follow_redirects=False,
                event_hooks={"response": [_refuse_quota_retries]},
            ),
        )
        # The SDK falls back to OPENAI_ORG_ID / OPENAI_PROJECT_ID when these are None; a
        # tenant's connection must send only its own (or none).
        self._client.organization = organization
        self._client.project = project

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        finish_reason: str | None = None
        usage: Usage | None = None
        upstream_id: str | None = None
        try:
            chunks = await self._client.chat.completions.create(
                **self._params(request), stream=True, stream_options={"include_usage": True}
            )
            async with chunks:
                async for chunk in chunks:
                    upstream_id = upstream_id or chunk.id
                    # OpenAI puts usage on a last chunk with empty choices; some compatible
                    # servers put it on the finish chunk, so take it wherever it appears.
                    usage = _usage(chunk.usage) or usage
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    if choice.delta is not None:
                        if choice.delta.content:
                            logprobs = choice.logprobs
                            yield TextDelta(
                                choice.delta.content,
                                logprobs=logprobs.model_dump(mode="json") if logprobs else None,
                            )
                        for event in _tool_call_deltas(choice.delta.tool_calls):
                            yield event
                    finish_reason = choice.finish_reason or finish_reason
        except (openai.OpenAIError, AddressRefused) as exc:
            raise self._error(exc) from exc
        if finish_reason is None:
            # A clean end of body without a finish_reason is a truncated reply all the same.
            raise ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                "The provider ended the stream before the reply was finished.",
            )
        yield StreamEnd(finish_reason=finish_reason, usage=usage, upstream_id=upstream_id)

    async def complete(self, request: ChatRequest) -> Completion:
        try:
            response = await self._client.chat.completions.create(**self._params(request))
        except (openai.OpenAIError, AddressRefused) as exc:
            raise self._error(exc) from exc
        choice = response.choices[0] if response.choices else None
        logprobs = choice.logprobs if choice else None
        return Completion(
            text=(choice.message.content if choice else None) or "",
            finish_reason=choice.finish_reason if choice else None,
            usage=_usage(response.usage),
            upstream_id=response.id,
            raw=response.model_dump(mode="json", warnings=False),  # as sent, odd types included
            logprobs=logprobs.model_dump(mode="json") if logprobs else None,
        )

    async def moderate(self, *, model: str, input: str) -> ModerationResult:
        """One text through the upstream's ``/v1/moderations``; the categories it flagged under
        their wire names (``harassment/threatening``), newer ones the SDK does not know too."""
        try:
            response = await self._client.moderations.create(model=model, input=input)
        except (openai.OpenAIError, AddressRefused) as exc:
            raise self._error(exc) from exc
        try:
            # The SDK does not validate answers: a compatible server's odd shape must become
            # an error here, not an AttributeError in the caller.
            result = response.results[0]
            categories = result.categories.model_dump(mode="json", by_alias=True)
            return ModerationResult(
                flagged=result.flagged is True,
                categories=[name for name, hit in categories.items() if hit is True],
                model=str(response.model or model),
                upstream_id=response.id if isinstance(response.id, str) else None,
            )
        except (AttributeError, IndexError, TypeError, ValueError):
            raise ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The provider's moderation answer was unusable."
            ) from None

    async def embed(
        self, *, model: str, input: list[str], dimensions: int | None = None
    ) -> Embeddings:
        """The upstream's ``/v1/embeddings`` for ``input``, as floats (the SDK would otherwise
        ask for base64, which not every compatible server speaks), in input order."""
        try:
            response = await self._client.embeddings.create(
                model=model,
                input=input,
                encoding_format="float",
                dimensions=openai.omit if dimensions is None else dimensions,
            )
        except (openai.OpenAIError, AddressRefused) as exc:
            raise self._error(exc) from exc
        except ValueError:  # a 200 whose body is not JSON
            raise ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The provider's embeddings answer was unusable."
            ) from None
        try:
            # The SDK does not validate answers: a compatible server's odd shape must become
            # an error here, not a wrong vector (or an AttributeError) in the caller.
            data = list(response.data)
            indexes = [item.index for item in data]
            if all(isinstance(index, int) for index in indexes):
                data = [item for _, item in sorted(zip(indexes, data, strict=True), key=_first)]
            vectors = [_vector(item.embedding) for item in data]
            if len(vectors) != len(input) or len({len(vector) for vector in vectors}) != 1:
                raise ValueError("not one vector of one size per input")
            usage = getattr(response, "usage", None)
            prompt_tokens = getattr(usage, "prompt_tokens", None)
            if isinstance(prompt_tokens, bool) or not isinstance(prompt_tokens, int):
                prompt_tokens = None  # no usable count: the caller counts
            elif prompt_tokens < 0:
                prompt_tokens = None
            return Embeddings(
                vectors=vectors,
                prompt_tokens=prompt_tokens,
                model=response.model if isinstance(response.model, str) else model,
            )
        except (AttributeError, TypeError, ValueError):
            raise ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The provider's embeddings answer was unusable."
            ) from None

    async def respond(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/responses`` with ``body`` sent on as it is (``stream`` left out); the
        response object as the upstream sent it."""
        body = {name: value for name, value in body.items() if name != "stream"}
        try:
            # Every key through extra_body: the JSON sent is exactly ``body``, keys the SDK
            # does not know yet included (as keywords, those would be a TypeError).
            response = await self._client.responses.create(extra_body=body)
            return _as_json(response)
        except (openai.OpenAIError, AddressRefused) as exc:
            raise self._error(exc) from exc
        except ValueError:  # a body that is not JSON, or JSON that is not an object
            raise ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The provider's answer was unusable."
            ) from None

    async def respond_stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The same, streamed: each event's data as the upstream sent it, in order, ending
        with one of `RESPONSE_FINAL_EVENTS`. Raises `ProviderError` for every failure: an
        ``error`` event (mapped by its code, as an error inside a chat stream is), an event
        that is not JSON, a stream that ends before its final event."""
        body = {name: value for name, value in body.items() if name != "stream"}
        final = False
        try:
            events = await self._client.responses.create(extra_body=body, stream=True)
            async with events:
                async for event in events:
                    data = _as_json(event)
                    if data.get("type") == "error":
                        message = data.get("message")
                        raise openai.APIError(
                            message if isinstance(message, str) else "The stream failed.",
                            events.response.request,
                            body=data,
                        )
                    final = data.get("type") in RESPONSE_FINAL_EVENTS
                    yield data
        except (openai.OpenAIError, AddressRefused) as exc:
            raise self._error(exc) from exc
        except ValueError:  # an event whose data is not JSON, or not an object
            raise ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The provider's answer was unusable."
            ) from None
        if not final:
            raise ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                "The provider ended the stream before the response was finished.",
            )

    # --- the Batch API (`BatchProvider`) ------------------------------------------------------

    supports_batches = True

    async def upload_batch_file(self, *, data: bytes, filename: str) -> str:
        try:
            uploaded = await self._client.files.create(
                file=(filename, data, "application/jsonl"), purpose="batch"
            )
        except (openai.OpenAIError, AddressRefused) as exc:
            raise self._batch_error(exc) from exc
        except ValueError:  # a body that is not JSON
            raise ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The provider's answer was unusable."
            ) from None
        file_id = _optional_id(getattr(uploaded, "id", None))
        if file_id is None:
            raise ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The provider's file answer had no id."
            )
        return file_id

    async def create_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
    ) -> UpstreamBatch:
        return await self._batch(
            self._client.batches.create(
                input_file_id=input_file_id,
                endpoint=endpoint,  # type: ignore[arg-type]  # one of ours: BATCH_ENDPOINTS
                completion_window=completion_window,  # type: ignore[arg-type]
                metadata=openai.omit if metadata is None else metadata,
            )
        )

    async def retrieve_batch(self, batch_id: str) -> UpstreamBatch:
        return await self._batch(self._client.batches.retrieve(batch_id))

    async def cancel_batch(self, batch_id: str) -> UpstreamBatch:
        return await self._batch(self._client.batches.cancel(batch_id))

    async def list_batches(self, *, limit: int = 100) -> list[UpstreamBatch]:
        try:
            page = await self._client.batches.list(limit=limit)
            return [upstream_batch(item) for item in page.data]
        except (openai.OpenAIError, AddressRefused) as exc:
            raise self._batch_error(exc) from exc
        except (AttributeError, TypeError, ValueError):
            raise ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The provider's list of batches was unusable."
            ) from None

    async def file_content(self, file_id: str) -> bytes:
        try:
            content = await self._client.files.content(file_id)
            return content.content
        except (openai.OpenAIError, AddressRefused) as exc:
            raise self._batch_error(exc) from exc

    async def _batch(self, answer: Any) -> UpstreamBatch:
        try:
            return upstream_batch(await answer)
        except (openai.OpenAIError, AddressRefused) as exc:
            raise self._batch_error(exc) from exc
        except ValueError:  # not JSON, or JSON that is not a batch
            raise ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The provider's batch answer was unusable."
            ) from None

    def _batch_error(self, exc: openai.OpenAIError | AddressRefused) -> ProviderError:
        """As `_error`, but a 404 names a file or batch the upstream does not have (or a Batch
        API it does not have), not a model: refused, and not retried."""
        if isinstance(exc, openai.NotFoundError):
            return ProviderError(
                ErrorCode.BAD_REQUEST,
                f"The provider has no such file or batch, or no Batch API ({exc.status_code})."
                f"{self._detail(exc)}",
                status=exc.status_code,
            )
        return self._error(exc)

    def unsupported(self, request: ChatRequest) -> str | None:
        """None: every parameter is sent on as it is, and the upstream decides (an OpenAI-
        compatible server that cannot honour one refuses it, or ignores it, as it does)."""
        return None

    async def list_models(self) -> list[str]:
        try:
            return [model.id async for model in self._client.models.list()]
        except (openai.OpenAIError, AddressRefused) as exc:
            raise self._error(exc) from exc

    async def aclose(self) -> None:
        await self._client.close()

    @staticmethod
    def _params(request: ChatRequest) -> dict[str, Any]:
        # Every field is a Chat Completions parameter under its wire name, sent as it is (the
        # SDK refuses a keyword it does not know, so a new field cannot be misspelt here).
        # Unset options are left out rather than sent as null: many compatible servers reject
        # nulls, and leaving them out keeps each upstream's own defaults.
        return {
            f.name: value
            for f in fields(request)
            if (value := getattr(request, f.name)) is not None
        }

    def _detail(self, exc: openai.APIError) -> str:
        """The upstream's own explanation, shortened and with our key scrubbed out."""
        message = exc.body.get("message") if isinstance(exc.body, dict) else None
        if not isinstance(message, str) or not message:
            return ""
        if self._api_key:
            message = message.replace(self._api_key, "***")
        return " " + message[:_MAX_DETAIL]

    def _error(self, exc: openai.OpenAIError | AddressRefused) -> ProviderError:
        # The SDK lets a transport's own exception through unwrapped and unretried (it wraps
        # and retries only httpx2's); should a later version wrap it, its cause still tells.
        if isinstance(exc, AddressRefused):
            return ProviderError(ErrorCode.ADDRESS_REFUSED, exc.message)
        if isinstance(exc.__cause__, AddressRefused):
            return ProviderError(ErrorCode.ADDRESS_REFUSED, exc.__cause__.message)
        # Order matters: APITimeoutError is an APIConnectionError, and the status classes
        # below are all APIErrors.
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError(ErrorCode.TIMEOUT, "The provider did not answer in time.")
        if isinstance(exc, openai.APIConnectionError):
            return ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                "Could not reach the provider, or it dropped the connection.",
            )
        if isinstance(exc, openai.APIStatusError):
            return self._status_error(exc)
        if isinstance(exc, openai.APIError):  # an error event inside a 200 stream
            body = exc.body if isinstance(exc.body, dict) else {}
            if _is_quota_error(body):
                return ProviderError(
                    ErrorCode.QUOTA_EXHAUSTED, "The provider account is out of quota."
                )
            if body.get("code") == "context_length_exceeded":
                return ProviderError(
                    ErrorCode.CONTEXT_TOO_LONG, "The conversation is too long for this model."
                )
            return ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                f"The provider failed while answering.{self._detail(exc)}",
            )
        return ProviderError(ErrorCode.UPSTREAM_UNAVAILABLE, "The provider's answer was unusable.")

    def _status_error(self, exc: openai.APIStatusError) -> ProviderError:
        status = exc.status_code
        if 300 <= status < 400:  # not followed (see __init__): the answer is the failure
            location = exc.response.headers.get("location", "")[:_MAX_DETAIL]
            if self._api_key:
                location = location.replace(self._api_key, "***")
            return ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                f"The provider answered with a redirect ({status}) to {location or 'nowhere'},"
                " which is not followed: set the connection's base URL to the final address.",
                retryable=False,
                status=status,
            )
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            # Never pass the upstream text on: OpenAI's own 401 message quotes part of the key.
            return ProviderError(
                ErrorCode.AUTH, f"The provider rejected the API key ({status}).", status=status
            )
        if isinstance(exc, openai.RateLimitError):
            if _is_quota_error(exc.body):
                return ProviderError(
                    ErrorCode.QUOTA_EXHAUSTED,
                    "The provider account is out of quota; add credit or change its plan.",
                    status=status,
                )
            return ProviderError(
                ErrorCode.RATE_LIMITED,
                f"The provider is rate limiting requests ({status}).{self._detail(exc)}",
                retry_after=_retry_after(exc.response.headers),
                status=status,
            )
        if isinstance(exc, openai.NotFoundError):
            return ProviderError(
                ErrorCode.MODEL_NOT_FOUND,
                f"The provider does not offer this model ({status}).{self._detail(exc)}",
                status=status,
            )
        if exc.code == "context_length_exceeded":
            return ProviderError(
                ErrorCode.CONTEXT_TOO_LONG,
                f"The conversation is too long for this model.{self._detail(exc)}",
                status=status,
            )
        if status >= 500 or status in (408, 409):  # the kinds the SDK itself deems transient
            return ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                f"The provider failed ({status}).{self._detail(exc)}",
                status=status,
            )
        return ProviderError(
            ErrorCode.BAD_REQUEST,
            f"The provider refused the request ({status}).{self._detail(exc)}",
            status=status,
        )
