"""The OpenAI-compatible gateway (``/v1``): project-key calls, metered like every other call.

Database work is sync and keyword-only (views call it through ``sync_to_async``):
``gateway_authenticate`` checks the key (once per request) and ``models_list`` answers
``GET /v1/models``; ``chat_prepare``, given the authenticated key,
validates the body, resolves the model for the key's project, estimates the
prompt and **reserves** — a refusal raises before anything is sent upstream and writes no
ledger row. ``chat_settle`` writes the one ledger row.

The upstream call itself is async and touches no ORM except through ``chat_settle``:
``complete`` (JSON) and ``GatewayStream`` (SSE). Each settles exactly once, whatever happens —
success, upstream error, or the client going away (``CancelledError``/``GeneratorExit``) — and
shields the settle from a second cancellation. The stream's upstream side runs in a task of its
own that owns the settle, so it is billed even if the response is never iterated.

Every refusal is an ``ApiError``, which views turn into OpenAI's error JSON. Messages never
contain the client's key or the connection's key.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings

from accounts.api_keys import INVALID_KEY_MESSAGE, api_key_from_authorization
from accounts.models import ApiKey, Project
from billing.models import UsageRecord
from billing.services import CallContext, QuotaExceeded, Reservation, quota_reserve, quota_settle
from core.detached import run_detached
from core.errors import ApiError, ServiceError, invalid_request
from core.sse import DONE, sse_data
from providers import selectors as provider_selectors
from providers.llm.base import (
    ChatRequest,
    Completion,
    ErrorCode,
    ProviderError,
    StreamEnd,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from providers.llm.tokens import count_message_tokens, count_text_tokens
from providers.specs import ProviderSpec, build_provider, spec_for

# --- errors ------------------------------------------------------------------------------------


# One body for every key we do not accept, so an answer says nothing about which case it was.
INVALID_KEY = ApiError(
    401,
    INVALID_KEY_MESSAGE,
    type="invalid_request_error",
    code="invalid_api_key",
)


def _quota_error(exc: QuotaExceeded) -> ApiError:
    if exc.code == "rate_limited":
        return ApiError(
            429, exc.message, type="requests", code="rate_limit_exceeded",
            retry_after=exc.retry_after,
        )  # fmt: skip
    return ApiError(429, exc.message, type="insufficient_quota", code="budget_exceeded")


def provider_error(exc: ProviderError) -> ApiError:
    """An upstream failure, told as ours: the client talks to the gateway, not the provider."""
    message = exc.message
    match exc.code:
        case ErrorCode.RATE_LIMITED:
            return ApiError(
                429, message, type="requests", code="rate_limit_exceeded",
                retry_after=exc.retry_after if exc.retry_after is not None else 1.0,
            )  # fmt: skip
        case ErrorCode.QUOTA_EXHAUSTED:
            return ApiError(429, message, type="insufficient_quota", code="insufficient_quota")
        case ErrorCode.CONTEXT_TOO_LONG:
            return invalid_request(message, param="messages", code="context_length_exceeded")
        case ErrorCode.BAD_REQUEST:
            return invalid_request(message, param=None)
        case ErrorCode.MODEL_NOT_FOUND:
            return ApiError(
                404, message, type="invalid_request_error", code="model_not_found", param="model"
            )
        case ErrorCode.TIMEOUT:
            return ApiError(504, message, type="api_error", code="upstream_timeout")
        case ErrorCode.AUTH:
            return ApiError(502, message, type="api_error", code="upstream_auth_failed")
        case _:
            return ApiError(502, message, type="api_error", code="upstream_error")


# --- authentication ----------------------------------------------------------------------------


def gateway_authenticate(*, authorization: str | None, scopes: tuple[str, ...]) -> ApiKey:
    """The project key of an ``Authorization: Bearer`` header having one of ``scopes``."""
    key = api_key_from_authorization(authorization)
    if key is None:
        raise INVALID_KEY
    if not any(key.has_scope(scope) for scope in scopes):
        raise ApiError(
            403,
            f"This API key lacks the scope this call needs: {' or '.join(scopes)}.",
            type="permission_error",
            code="insufficient_scope",
        )
    return key


# --- models ------------------------------------------------------------------------------------


def models_list(*, authorization: str | None) -> dict[str, Any]:
    key = gateway_authenticate(authorization=authorization, scopes=("chat", "read"))
    return {
        "object": "list",
        "data": [
            {
                "id": choice.name,
                "object": "model",
                "created": int(choice.model.created_at.timestamp()),
                "owned_by": choice.model.connection.kind,
            }
            for choice in provider_selectors.model_choices(key.project)
        ],
    }


def model_get(*, authorization: str | None, model: str) -> dict[str, Any]:
    """``GET /v1/models/{model}``: one entry of the listing, or ``model_not_found``."""
    for entry in models_list(authorization=authorization)["data"]:
        if entry["id"] == model:
            return entry
    raise _model_not_found(model)


def _model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist or this project may not use it.",
        type="invalid_request_error",
        code="model_not_found",
        param="model",
    )


# --- chat completions: parsing -----------------------------------------------------------------

_NUMBER_PARAMS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


@dataclass(frozen=True)
class ParsedChat:
    request: ChatRequest
    stream: bool
    include_usage: bool
    max_tokens: int | None  # what the client asked for, if anything


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise invalid_request("'messages' must be a non-empty array of messages.", param="messages")
    for index, message in enumerate(value):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid_request(f"'{param}' must be an object.", param=param)
        if not isinstance(message.get("role"), str):
            raise invalid_request(f"'{param}.role' must be a string.", param=f"{param}.role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise invalid_request(
                f"'{param}.content' must be a string or an array of content parts.",
                param=f"{param}.content",
            )
    return value


def parse_chat_body(*, body: bytes) -> ParsedChat:
    """The chat completion request of a JSON body, or a 400 naming the faulty parameter."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise invalid_request(
            "The request body is not valid JSON.", param=None, code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object.", param=None)
    model = data.get("model")
    if "model" not in data:
        raise invalid_request("Missing required parameter: 'model'.", param="model")
    if not isinstance(model, str) or not model:
        raise invalid_request("'model' must be a non-empty string.", param="model")
    if "messages" not in data:
        raise invalid_request("Missing required parameter: 'messages'.", param="messages")
    options: dict[str, Any] = {}
    for name in _NUMBER_PARAMS:
        if data.get(name) is not None:
            if not _is_number(data[name]):
                raise invalid_request(f"'{name}' must be a number.", param=name)
            options[name] = data[name]
    max_tokens = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = data.get(name)
        if value is not None and (not _is_int(value) or value < 1):
            raise invalid_request(f"'{name}' must be a positive integer.", param=name)
    max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    stop = data.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise invalid_request("'stop' must be a string or an array of strings.", param="stop")
        options["stop"] = stop
    if data.get("seed") is not None:
        if not _is_int(data["seed"]):
            raise invalid_request("'seed' must be an integer.", param="seed")
        options["seed"] = data["seed"]
    for name, kind, word in (
        ("response_format", dict, "an object"),
        ("tools", list, "an array"),
        ("tool_choice", str | dict, "a string or an object"),
        ("parallel_tool_calls", bool, "a boolean"),
        ("user", str, "a string"),
    ):
        if data.get(name) is not None:
            if not isinstance(data[name], kind):
                raise invalid_request(f"'{name}' must be {word}.", param=name)
            options[name] = data[name]
    if data.get("n") not in (None, 1):
        raise invalid_request("Only n=1 is supported: one choice per request.", param="n")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid_request("'stream' must be a boolean.", param="stream")
    stream_options = data.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise invalid_request("'stream_options' must be an object.", param="stream_options")
    return ParsedChat(
        request=ChatRequest(model=model, messages=_messages(data["messages"]), **options),
        stream=stream,
        include_usage=bool(stream_options.get("include_usage")),
        max_tokens=max_tokens,
    )


# --- chat completions: reserve and settle ------------------------------------------------------


@dataclass(frozen=True)
class GatewayCall:
    """A reserved call, ready to send upstream."""

    id: str
    created: int
    request: ChatRequest
    spec: ProviderSpec = field(repr=False)
    reservation: Reservation
    stream: bool
    include_usage: bool
    prompt_tokens_estimate: int


def _resolve(project: Project, model: str) -> ProviderSpec:
    try:
        return spec_for(project=project, model=model)
    except ServiceError as exc:
        if exc.code == "model_not_allowed":
            raise _model_not_found(model) from None
        raise ApiError(502, exc.message, type="api_error", code=exc.code) from None


def chat_prepare(*, key: ApiKey, body: bytes) -> GatewayCall:
    """For a key already authenticated (``gateway_authenticate``, scope ``chat``): validate,
    resolve the model and reserve the call's worst case."""
    parsed = parse_chat_body(body=body)
    project = key.project
    spec = _resolve(project, parsed.request.model)
    prompt_tokens = count_message_tokens(parsed.request.messages)
    asked = prompt_tokens + (parsed.max_tokens or 0)
    if spec.context_window and asked > spec.context_window:
        raise invalid_request(
            f"This model's maximum context length is {spec.context_window} tokens; the request "
            f"needs about {asked} ({prompt_tokens} in the messages"
            f"{f', {parsed.max_tokens} for the reply' if parsed.max_tokens else ''}).",
            param="messages",
            code="context_length_exceeded",
        )
    try:
        reservation = quota_reserve(
            context=CallContext(
                organization_id=project.organization_id,
                project_id=project.pk,
                user_id=None,
                model=parsed.request.model,
                source=UsageRecord.Source.API,
                connection_id=spec.connection_id,
                api_key_id=key.pk,
            ),
            prompt_tokens=prompt_tokens,
            max_tokens=parsed.max_tokens or settings.CHAT_DEFAULT_REPLY_TOKENS,
        )
    except QuotaExceeded as exc:
        raise _quota_error(exc) from None
    return GatewayCall(
        id=f"chatcmpl-{reservation.request_id.hex}",
        created=int(time.time()),
        request=parsed.request,
        spec=spec,
        reservation=reservation,
        stream=parsed.stream,
        include_usage=parsed.include_usage,
        prompt_tokens_estimate=prompt_tokens,
    )


@dataclass(frozen=True)
class Outcome:
    """What a call came to: the ledger's status and the tokens to charge."""

    status: str
    usage: Usage
    estimated: bool


def outcome_of(*, call: GatewayCall, status: str, usage: Usage | None, text: str) -> Outcome:
    """The real usage when the upstream reported it; otherwise an estimate — and nothing at all
    for a call that failed before producing a word. ``text`` is everything the model generated:
    the reply and the names and arguments of its tool calls, which are output tokens too."""
    if usage is not None:
        return Outcome(status=status, usage=usage, estimated=False)
    if status == UsageRecord.Status.ERROR and not text:
        return Outcome(status=status, usage=Usage(0, 0), estimated=False)
    estimate = Usage(call.prompt_tokens_estimate, count_text_tokens(text) if text else 0)
    return Outcome(status=status, usage=estimate, estimated=True)


def _generated_text(completion: Completion) -> str:
    """The reply and its tool calls' names and arguments, to estimate output tokens by."""
    parts = [completion.text]
    choices = completion.raw.get("choices") or []
    message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    for tool_call in calls if isinstance(calls, list) else ():
        function = tool_call.get("function") if isinstance(tool_call, dict) else None
        if isinstance(function, dict):
            parts += (str(function.get("name") or ""), str(function.get("arguments") or ""))
    return "".join(parts)


def chat_settle(*, call: GatewayCall, outcome: Outcome, latency_ms: int) -> UsageRecord:
    return quota_settle(
        reservation=call.reservation,
        status=outcome.status,
        prompt_tokens=outcome.usage.prompt_tokens,
        completion_tokens=outcome.usage.completion_tokens,
        cached_tokens=outcome.usage.cached_tokens,
        estimated=outcome.estimated,
        latency_ms=latency_ms,
    )


async def _settle_shielded(
    call: GatewayCall, outcome: Outcome, started: float, *, detached: bool = False
) -> None:
    """Settle, and finish settling even if the caller is cancelled meanwhile. ``detached``:
    called from a task that outlives the request, whose thread is gone by then — so the ORM
    runs in channels' worker thread, which closes stale connections around it."""
    run = database_sync_to_async(chat_settle) if detached else sync_to_async(chat_settle)
    task = run_detached(
        run(call=call, outcome=outcome, latency_ms=int((time.monotonic() - started) * 1000)),
        same_context=not detached,
    )
    await asyncio.shield(task)


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


# --- chat completions: JSON --------------------------------------------------------------------


def _message_json(completion: Completion) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": completion.text}
    choices = completion.raw.get("choices") or []
    upstream = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    if isinstance(upstream, dict):
        if upstream.get("tool_calls"):
            message["tool_calls"] = upstream["tool_calls"]
            message["content"] = upstream.get("content")
        if upstream.get("refusal"):
            message["refusal"] = upstream["refusal"]
    return message


async def complete(call: GatewayCall) -> dict[str, Any]:
    """One non-streaming call upstream, settled exactly once; the ``chat.completion`` JSON."""
    provider = build_provider(call.spec)
    started = time.monotonic()
    completion: Completion | None = None
    status = UsageRecord.Status.INCOMPLETE  # unless we learn better: the client went away
    try:
        completion = await provider.complete(call.request)
        status = UsageRecord.Status.OK
    except ProviderError as exc:
        status = UsageRecord.Status.ERROR
        raise provider_error(exc) from None
    finally:
        outcome = outcome_of(
            call=call,
            status=status,
            usage=completion.usage if completion else None,
            text=_generated_text(completion) if completion else "",
        )
        try:
            await _settle_shielded(call, outcome, started)
        finally:
            await provider.aclose()
    return {
        "id": call.id,
        "object": "chat.completion",
        "created": call.created,
        "model": call.request.model,
        "choices": [
            {
                "index": 0,
                "message": _message_json(completion),
                "logprobs": None,
                "finish_reason": completion.finish_reason or "stop",
            }
        ],
        "usage": usage_json(outcome.usage),
    }


# --- chat completions: SSE ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Failed:
    error: ApiError


_Event = TextDelta | ToolCallDelta | StreamEnd | _Failed


class GatewayStream:
    """A streaming call: the upstream side runs in its own task, which owns the settle; the
    response iterates `sse()`. Closing the response early cancels the upstream call."""

    def __init__(self, call: GatewayCall) -> None:
        self.call = call
        self._events: asyncio.Queue[_Event] = asyncio.Queue()
        self._first: _Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Start the upstream call and wait for its first event, so that a call refused
        upstream answers with an HTTP error status rather than a broken stream."""
        # A fresh context: the request's (its thread-sensitive executor) ends before this does.
        self._task = run_detached(self._produce())
        try:
            self._first = await self._events.get()
        except BaseException:
            await self._stop(cancel=True)
            raise
        if isinstance(self._first, _Failed):
            await self._stop(cancel=False)
            raise self._first.error

    async def _stop(self, *, cancel: bool) -> None:
        """Wait for the upstream side to end and settle, cancelling it first if asked."""
        if self._task is None:
            return
        if cancel:
            self._task.cancel()
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            # Cancelled ourselves: the task still settles on its own. Otherwise the task's
            # own cancellation ended it — expected.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def _produce(self) -> None:
        provider = build_provider(self.call.spec)
        started = time.monotonic()
        parts: list[str] = []  # what was generated: text, tool-call names and arguments
        usage: Usage | None = None
        status = UsageRecord.Status.INCOMPLETE
        failure: ApiError | None = None
        try:
            async for event in provider.stream(self.call.request):
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                    self._events.put_nowait(event)
                elif isinstance(event, ToolCallDelta):
                    parts += (event.name or "", event.arguments)
                    self._events.put_nowait(event)
                elif isinstance(event, StreamEnd):
                    usage = event.usage
                    status = UsageRecord.Status.OK
                    outcome = outcome_of(
                        call=self.call, status=status, usage=usage, text="".join(parts)
                    )
                    # The usage chunk tells the settled figures (estimated if none came).
                    self._events.put_nowait(StreamEnd(event.finish_reason, outcome.usage, None))
        except ProviderError as exc:
            status = UsageRecord.Status.ERROR
            failure = provider_error(exc)
        finally:
            outcome = outcome_of(call=self.call, status=status, usage=usage, text="".join(parts))
            try:
                await _settle_shielded(self.call, outcome, started, detached=True)
            finally:
                if failure is not None:
                    self._events.put_nowait(_Failed(failure))
                await provider.aclose()

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {
            "id": self.call.id,
            "object": "chat.completion.chunk",
            "created": self.call.created,
            "model": self.call.request.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }
        if self.call.include_usage:
            payload.setdefault("usage", None)
        return sse_data(payload)

    @staticmethod
    def _choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    @staticmethod
    def _tool_call_json(delta: ToolCallDelta) -> dict[str, Any]:
        """The delta as OpenAI sends it: id, type and name only on a call's first piece."""
        call: dict[str, Any] = {"index": delta.index}
        if delta.id is not None:
            call["id"] = delta.id
        if delta.type is not None:
            call["type"] = delta.type
        name = {"name": delta.name} if delta.name is not None else {}
        call["function"] = {**name, "arguments": delta.arguments}
        return call

    async def sse(self) -> AsyncIterator[bytes]:
        """``chat.completion.chunk`` events, then ``data: [DONE]``; an upstream failure after
        the first byte becomes an ``error`` event (the SDK raises it as an APIError)."""
        finished = False
        try:
            opening: dict[str, Any] = {"role": "assistant", "content": ""}
            event = self._first
            if isinstance(event, ToolCallDelta):
                # Like OpenAI: a reply that is a tool call opens with it, and content null.
                tool_calls = [self._tool_call_json(event)]
                opening = {"role": "assistant", "content": None, "tool_calls": tool_calls}
                event = None
            yield self._chunk(self._choice(opening))
            while True:
                if event is None:
                    event = await self._events.get()
                if isinstance(event, TextDelta):
                    yield self._chunk(self._choice({"content": event.text}))
                elif isinstance(event, ToolCallDelta):
                    yield self._chunk(self._choice({"tool_calls": [self._tool_call_json(event)]}))
                elif isinstance(event, StreamEnd):
                    yield self._chunk(self._choice({}, event.finish_reason or "stop"))
                    # Settled before [DONE]: a client that saw the end finds the ledger row.
                    await self._stop(cancel=False)
                    if self.call.include_usage and event.usage is not None:
                        yield self._chunk([], usage=usage_json(event.usage))
                    finished = True
                    yield DONE
                    return
                else:
                    finished = True
                    yield sse_data(event.error.body())
                    return
                event = None
        finally:
            # Finished, failed, or the client went away (then the upstream call is cancelled):
            # in every case the upstream side ends here, settled.
            await self._stop(cancel=not finished)
