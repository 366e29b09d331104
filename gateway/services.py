"""The OpenAI-compatible gateway (``/v1``): project-key calls, metered like every other call.

Database work is sync and keyword-only (views call it through ``sync_to_async``):
``gateway_authenticate`` checks the key (once per request) and ``models_list`` answers
``GET /v1/models``; ``chat_prepare``, given the authenticated key, validates the body
(``gateway.params``), resolves the model for the key's project, refuses what the model cannot
do, and reserves through ``billing.metering`` — a refusal raises before anything is sent
upstream and writes no ledger row.

The upstream call itself is async and goes through ``billing.metering`` too: ``complete``
(JSON) and ``GatewayStream`` (SSE). Each is capped at what was held and settles exactly once,
whatever happens — success, any failure upstream, the client going away — shielded from a
second cancellation. The stream's upstream side runs in a task of its own that owns the settle,
so it is billed even if the response is never iterated.

Every refusal is a ``ServiceError`` answered as the error table says (``core.errors``);
messages never contain the client's key or the connection's key.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from accounts.api_keys import INVALID_KEY_MESSAGE, api_key_from_authorization
from accounts.models import ApiKey, Project
from billing import metering
from billing.metering import MeteredCall, Outcome
from billing.models import UsageRecord
from billing.services import CallContext
from core.config_cache import cached
from core.errors import ServiceError, invalid_request
from core.produced import Failed, ProducedStream
from core.sse import DONE, sse_data
from providers import selectors as provider_selectors
from providers.llm.base import (
    Completion,
    ProviderError,
    StreamEnd,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from providers.pool import leased_provider
from providers.specs import ProviderSpec, spec_for, unsupported_param

from .params import ParsedChat, parse_chat_body

logger = logging.getLogger(__name__)

# --- authentication ----------------------------------------------------------------------------


def gateway_authenticate(*, authorization: str | None, scopes: tuple[str, ...]) -> ApiKey:
    """The project key of an ``Authorization: Bearer`` header having one of ``scopes``."""
    key = api_key_from_authorization(authorization)
    if key is None:
        # One body for every key we do not accept: it says nothing about which case it was.
        raise ServiceError(INVALID_KEY_MESSAGE, code="invalid_api_key")
    if not any(key.has_scope(scope) for scope in scopes):
        raise ServiceError(
            f"This API key lacks the scope this call needs: {' or '.join(scopes)}.",
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


def _model_not_found(model: str) -> ServiceError:
    return ServiceError(
        f"The model '{model}' does not exist or this project may not use it.",
        code="model_not_found",
        param="model",
    )


# --- chat completions: prepare -----------------------------------------------------------------


@dataclass(frozen=True)
class GatewayCall:
    """A reserved call, ready to send upstream."""

    id: str
    created: int
    metered: MeteredCall
    stream: bool
    include_usage: bool

    @property
    def model(self) -> str:
        return self.metered.request.model


def resolve_model(project: Project, model: str) -> ProviderSpec:
    """The connection serving ``model`` for the project, or a 404 naming ``model`` as OpenAI
    words it."""
    try:
        return spec_for(project=project, model=model)
    except ServiceError as exc:
        if exc.code == "model_not_found":
            raise _model_not_found(model) from None
        raise


def _first_image_part(messages: list[dict[str, Any]]) -> str | None:
    """Where the request's first image is, as ``param`` names it (``messages[1].content[0]``)."""
    for index, message in enumerate(messages):
        content = message.get("content")
        for part_index, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict) and part.get("type") == "image_url":
                return f"messages[{index}].content[{part_index}]"
    return None


def _sees_images(project: Project, model: str) -> bool:
    """Whether the project's ``model`` is marked vision-capable: read once, then kept in memory
    with the other model settings (``core.config_cache``), like the model's spec."""

    def read() -> bool | None:
        connection_model = provider_selectors.resolve_model(project, model)
        return None if connection_model is None else connection_model.supports_vision

    return bool(cached(("vision", project.pk, model), read, keep=lambda seen: seen is not None))


def _check_vision(parsed: ParsedChat, project: Project) -> None:
    """Images for a model that cannot read them are refused here, in words that say so, before
    anything is sent (the built-in model would otherwise answer a vaguer 400 of its own)."""
    param = _first_image_part(parsed.request.messages)
    if param is not None and not _sees_images(project, parsed.request.model):
        raise invalid_request(
            f"The model {parsed.request.model} cannot read images; pick a vision model.",
            param=param,
            code="model_lacks_vision",
        )


def _check_fits(parsed: ParsedChat, spec: ProviderSpec) -> None:
    """What OpenAI refuses with a 400 before generating: a parameter the model cannot honour,
    a reply cap above what the model may write, a prompt that does not fit its context."""
    request = parsed.request
    param = unsupported_param(spec, request)
    if param is not None:
        raise invalid_request(f"The model {request.model} does not support '{param}'.", param=param)
    asked_field = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
    longest = spec.max_output_tokens
    if parsed.max_tokens is not None and longest is not None and parsed.max_tokens > longest:
        raise invalid_request(
            f"{asked_field} is too large: {parsed.max_tokens}. This model supports at most "
            f"{longest} completion tokens.",
            param=asked_field,
        )
    prompt_tokens = metering.estimate_prompt_tokens(request)
    needed = prompt_tokens + (parsed.max_tokens or 1)
    if needed > spec.context_window:
        raise invalid_request(
            f"This model's maximum context length is {spec.context_window} tokens; the request "
            f"needs about {needed} ({prompt_tokens} in the messages"
            f"{f', {parsed.max_tokens} for the reply' if parsed.max_tokens else ''}).",
            param="messages",
            code="context_length_exceeded",
        )


def chat_check(*, project: Project, parsed: ParsedChat) -> ProviderSpec:
    """The checks a chat call passes before anything is held: the model is the project's, it
    sees images if the call sends some, and the prompt fits its window. Its connection."""
    spec = resolve_model(project, parsed.request.model)
    _check_vision(parsed, project)
    _check_fits(parsed, spec)
    return spec


def chat_prepare(
    *, key: ApiKey, body: bytes, source: str = UsageRecord.Source.API, batch: bool = False
) -> GatewayCall:
    """For a key already authenticated (``gateway_authenticate``, scope ``chat``): validate,
    resolve the model, cap and reserve (``billing.metering``). ``batch``: a batch's line
    (it cannot stream; priced at the batch price)."""
    parsed = parse_chat_body(body=body)
    if batch and parsed.stream:
        raise invalid_request("A batch request cannot stream: leave 'stream' out.", param="stream")
    project = key.project
    spec = chat_check(project=project, parsed=parsed)
    metered = metering.metered_reserve(
        context=CallContext(
            organization_id=project.organization_id,
            project_id=project.pk,
            user_id=None,
            model=parsed.request.model,
            source=source,
            connection_id=spec.connection_id,
            api_key_id=key.pk,
            batch=batch,
        ),
        request=parsed.request,
        spec=spec,
        asked=parsed.max_tokens,
    )
    return GatewayCall(
        id=f"chatcmpl-{metered.reservation.request_id.hex}",
        created=int(time.time()),
        metered=metered,
        stream=parsed.stream,
        include_usage=parsed.include_usage,
    )


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def _charged(call: GatewayCall, outcome: Outcome) -> Usage:
    """The usage the ledger charges (the upstream's, else our count): what clients are told."""
    usage, _ = metering.usage_to_charge(
        prompt_tokens=call.metered.prompt_tokens,
        status=outcome.status,
        usage=outcome.usage,
        generated=outcome.generated,
    )
    return usage


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


# --- chat completions: JSON --------------------------------------------------------------------


def _choice_json(completion: Completion) -> tuple[dict[str, Any], Any]:
    """The reply message as OpenAI shapes it, and the choice's logprobs (if any were sent)."""
    message: dict[str, Any] = {"role": "assistant", "content": completion.text}
    choices = completion.raw.get("choices") or []
    first = choices[0] if choices and isinstance(choices[0], dict) else {}
    upstream = first.get("message")
    if isinstance(upstream, dict):
        if upstream.get("tool_calls"):
            message["tool_calls"] = upstream["tool_calls"]
            message["content"] = upstream.get("content")
        if upstream.get("refusal"):
            message["refusal"] = upstream["refusal"]
    return message, first.get("logprobs")


async def complete(call: GatewayCall) -> dict[str, Any]:
    """One non-streaming call upstream, settled exactly once; the ``chat.completion`` JSON."""
    outcome = Outcome()
    started = time.monotonic()
    try:
        async with leased_provider(call.metered.spec) as provider:
            completion = await metering.complete_capped(call.metered, provider, outcome)
    except ProviderError as exc:
        raise metering.upstream_failure(exc) from None
    finally:
        await metering.settle_shielded(call.metered, outcome, latency_ms=_elapsed_ms(started))
    return completion_json(call, completion, outcome)


def completion_json(call: GatewayCall, completion: Completion, outcome: Outcome) -> dict[str, Any]:
    """The ``chat.completion`` JSON of a finished call."""
    message, logprobs = _choice_json(completion)
    return {
        "id": call.id,
        "object": "chat.completion",
        "created": call.created,
        "model": call.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": completion.finish_reason or "stop",
            }
        ],
        "usage": usage_json(_charged(call, outcome)),
    }


# --- chat completions: SSE ---------------------------------------------------------------------


_Event = TextDelta | ToolCallDelta | StreamEnd


class GatewayStream(ProducedStream[_Event]):
    """A streaming call: the upstream side runs in its own task, which owns the settle; the
    response iterates ``sse()``. Closing the response early cancels the upstream call.

    ``completed`` says whether the stream ended as a stream should (the last chunk, then
    ``[DONE]``), rather than with an error event or its client gone."""

    def __init__(self, call: GatewayCall) -> None:
        super().__init__(call.id)
        self.call = call

    async def _produce(self) -> None:
        outcome = Outcome()
        started = time.monotonic()
        failure: ServiceError | None = None
        try:
            async with (
                leased_provider(self.call.metered.spec) as provider,
                contextlib.aclosing(
                    metering.stream_capped(self.call.metered, provider, outcome)
                ) as stream,
            ):
                async for event in stream:
                    if isinstance(event, StreamEnd):
                        # The usage chunk tells the charged figures (counted if none came).
                        event = StreamEnd(event.finish_reason, _charged(self.call, outcome), None)
                    if not isinstance(event, TextDelta | ToolCallDelta | StreamEnd):
                        continue  # ``Waiting``: a gateway client has no use for it
                    self._events.put_nowait(event)
        except ProviderError as exc:  # every upstream failure, whatever it sent (metering)
            failure = metering.upstream_failure(exc)
        except Exception:  # never leave a client waiting because of a bug of ours
            logger.exception("stream %s failed", self.call.id)
            failure = ServiceError(code="internal_error")
        finally:
            try:
                await metering.settle_shielded(
                    self.call.metered, outcome, latency_ms=_elapsed_ms(started), detached=True
                )
            finally:
                if failure is not None:
                    self._events.put_nowait(Failed(failure))

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {
            "id": self.call.id,
            "object": "chat.completion.chunk",
            "created": self.call.created,
            "model": self.call.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }
        if self.call.include_usage:
            payload.setdefault("usage", None)
        return sse_data(payload)

    @staticmethod
    def _choice(
        delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None
    ) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]

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
        """``chat.completion.chunk`` events, then ``data: [DONE]``. A failure after the first
        byte becomes an ``error`` event (the SDK raises it as an APIError), then ``[DONE]``:
        every stream ends."""
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
                    yield self._chunk(
                        self._choice({"content": event.text}, logprobs=event.logprobs)
                    )
                elif isinstance(event, ToolCallDelta):
                    yield self._chunk(self._choice({"tool_calls": [self._tool_call_json(event)]}))
                elif isinstance(event, StreamEnd):
                    yield self._chunk(self._choice({}, event.finish_reason or "stop"))
                    # Settled before [DONE]: a client that saw the end finds the ledger row.
                    await self._stop(cancel=False)
                    if self.call.include_usage and event.usage is not None:
                        yield self._chunk([], usage=usage_json(event.usage))
                    finished = self.completed = True
                    yield DONE
                    return
                else:
                    finished = True
                    yield sse_data(event.error.body())
                    yield DONE
                    return
                event = None
        finally:
            # Finished, failed, or the client went away (then the upstream call is cancelled):
            # in every case the upstream side ends here, settled.
            await self._stop(cancel=not finished)
