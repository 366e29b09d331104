"""The one metered path: every upstream call — a chat reply, a REST message, ``/v1``, a title,
and every later kind — is estimated, reserved, capped, made and settled here, exactly once.

1. ``metered_reserve`` (sync, in the caller's transaction): the prompt is estimated by one rule
   (``estimate_prompt_tokens``: messages, tools and their schemas, ``response_format``,
   images), the reply cap is chosen (the smallest of what the caller asked, what the model may
   write and what the tightest budget can still pay for) and the worst case is held. A refusal
   raises before anything is sent upstream.
2. ``stream_capped`` / ``complete_capped`` make the call with the cap in the request and keep
   the ``Outcome``: a stream is cut off when its generated tokens pass what was held for the
   reply (the cap with a margin for tokenizers that count differently), even if the upstream
   ignores the cap; whatever the upstream sends or raises becomes a ``ProviderError`` (an
   exception of any type: an unparsable chunk, a body that is not JSON, a bug of ours).
3. ``settle`` (sync) / ``settle_shielded`` (async, not cancellable): release the hold, charge the
   real cost (the upstream's usage, else one estimate rule: ``usage_to_charge``) and write the
   one ledger row. ``settle_orphan`` does the same for a call whose process died.

A moderation check (``moderate_metered``) takes the same path in one call: its input is
estimated by the same rule and held with no reply tokens (it writes none), made, and settled
once, with its own ledger row (source ``moderation``). An embedding call (``embed_metered``)
likewise: its inputs estimated by the text rule, held with no reply tokens, made, settled once.

Nothing calls a provider around this module (connection checks and model listings are not
billed calls and never generate tokens).

Observed here too, from what each call has in hand (no query of its own): every settle logs
one line (``upstream_call``: the request id the call was made for — an HTTP request's, a
socket frame's, a task's — its ledger row's ``request_id``, model, outcome, tokens, cost,
latency) and counts the call for ``/metrics`` (``billing.metrics``), as do refusals at reserve,
streams in flight and their first tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext, gettext_lazy
from django_stubs_ext import StrOrPromise

from core.db import db_sync_to_async
from core.detached import run_detached
from core.errors import ServiceError, kind_of
from core.logging import current_request_id
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
from providers.llm.catalog import takes_max_completion_tokens
from providers.llm.images import content_image_tokens
from providers.llm.tokens import count_message_tokens, count_text_tokens
from providers.models import ProviderConnection
from providers.pool import leased_provider
from providers.specs import ProviderSpec, build_provider

from . import metrics, pricing
from .models import UsageRecord
from .services import CallContext, QuotaExceeded, Reservation, quota_reserve, quota_settle

logger = logging.getLogger(__name__)
log = structlog.get_logger(__name__)

# The hold is built on an estimate (cl100k counts other tokenizers only approximately): it
# covers the prompt with this margin, so a real prompt a little longer than counted never
# costs more than was held.
PROMPT_MARGIN = 1.1
PROMPT_MARGIN_TOKENS = 16

# --- estimate ----------------------------------------------------------------------------------


def _image_tokens(messages: list[dict[str, Any]]) -> int:
    """Image parts, by OpenAI's rule for the gpt-4o family (``providers.llm.images``): 85
    tokens at low detail; otherwise 85 plus 170 per 512-pixel tile of the image scaled to fit
    2048 x 2048 with its short side at 768 — the size read from a data URL's header, the worst
    case (8 tiles) for an image known only by its URL."""
    return sum(content_image_tokens(message.get("content")) for message in messages)


def _json_tokens(value: Any) -> int:
    return count_text_tokens(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """The one estimate rule of a call's prompt: the messages (text, and images by the
    provider's rule), the tools with their schemas, and a JSON schema for the answer — all of
    which the upstream counts as prompt tokens."""
    tokens = count_message_tokens(request.messages) + _image_tokens(request.messages)
    if request.tools:
        tokens += _json_tokens(request.tools)
    if request.response_format and request.response_format.get("type") == "json_schema":
        tokens += _json_tokens(request.response_format.get("json_schema"))
    return tokens


def held_prompt_tokens(estimate: int) -> int:
    return math.ceil(estimate * PROMPT_MARGIN) + PROMPT_MARGIN_TOKENS


def output_limit(spec: ProviderSpec, *, prompt_tokens: int) -> int:
    """The longest reply the model may write after this prompt."""
    room = max(spec.context_window - prompt_tokens, 1)
    return min(spec.max_output_tokens or room, room)


# --- reserve -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeteredCall:
    """A call reserved and capped: what to send upstream, and the hold it runs under."""

    context: CallContext
    request: ChatRequest  # as sent upstream: with the reply cap
    spec: ProviderSpec = field(repr=False)
    reservation: Reservation
    prompt_tokens: int  # our estimate (the hold adds a margin to it)
    # The request id bound where the call is reserved (core.logging), for its settle's line:
    # the settle may run in a task of its own, where no request's id is bound any more.
    log_request_id: str | None = field(default_factory=current_request_id, repr=False)

    @property
    def cap(self) -> int:
        return self.reservation.cap


def _with_cap(request: ChatRequest, cap: int, spec: ProviderSpec) -> ChatRequest:
    """The request with the cap in the field the caller used, or else the one the model takes
    (``max_completion_tokens`` for reasoning models, which refuse ``max_tokens``)."""
    wants_completion_field = request.max_completion_tokens is not None or (
        request.max_tokens is None
        and spec.kind != ProviderConnection.Kind.LOCAL
        and takes_max_completion_tokens(request.model)
    )
    if wants_completion_field:
        return replace(request, max_completion_tokens=cap, max_tokens=None)
    return replace(request, max_tokens=cap)


def _reserve(*, context: CallContext, **kwargs: Any) -> Reservation:
    """``quota_reserve``, its refusals counted for /metrics (the refusal itself is logged once,
    by whoever answers it: the request's line, the socket frame's)."""
    try:
        return quota_reserve(context=context, **kwargs)
    except QuotaExceeded as refusal:
        metrics.observe_refusal(refusal, source=context.source)
        raise


def metered_reserve(
    *, context: CallContext, request: ChatRequest, spec: ProviderSpec, asked: int | None
) -> MeteredCall:
    """Estimate, cap and hold. ``asked``: the reply cap the caller asked for (None: the model's
    limit). Raises ``QuotaExceeded`` (a budget, a rate limit) before anything is sent."""
    prompt_tokens = estimate_prompt_tokens(request)
    reservation = _reserve(
        context=context,
        prompt_tokens=held_prompt_tokens(prompt_tokens),
        max_tokens=asked,
        output_limit=output_limit(spec, prompt_tokens=prompt_tokens),
        margin=True,
    )
    return MeteredCall(
        context=context,
        request=_with_cap(request, reservation.cap, spec),
        spec=spec,
        reservation=reservation,
        prompt_tokens=prompt_tokens,
    )


# --- call --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a call came to, kept as it runs: the ledger's status and what to charge."""

    status: str = UsageRecord.Status.INCOMPLETE  # unless we learn better: it was cut short
    usage: Usage | None = None  # as the upstream reported it
    finish_reason: str | None = None
    error: ProviderError | None = None
    parts: list[str] = field(default_factory=list)  # text, tool names and arguments generated
    counted: int = 0  # generated tokens, as counted here
    cut_at_cap: bool = False  # the upstream went on past the cap and was cut off

    @property
    def generated(self) -> str:
        return "".join(self.parts)


UNUSABLE = gettext_lazy("The provider's answer was unusable.")


def _unusable(exc: BaseException) -> ProviderError:
    """Any failure that is not a provider's own: bytes it should not have sent, or a bug."""
    logger.warning("upstream call failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return ProviderError(ErrorCode.UPSTREAM_UNAVAILABLE, str(UNUSABLE))


# A provider's failure, in our words: the public code and, where the table's message would
# say too little, a message of its own.
UPSTREAM_FAILURES: dict[ErrorCode, tuple[str, StrOrPromise | None]] = {
    ErrorCode.AUTH: ("upstream_auth_failed", None),
    ErrorCode.RATE_LIMITED: (
        "rate_limit_exceeded",
        gettext_lazy("The model provider is rate limiting us right now."),
    ),
    ErrorCode.QUOTA_EXHAUSTED: ("insufficient_quota", None),
    ErrorCode.BAD_REQUEST: ("upstream_bad_request", None),
    ErrorCode.CONTEXT_TOO_LONG: ("context_length_exceeded", None),
    ErrorCode.UPSTREAM_UNAVAILABLE: ("upstream_error", None),
    ErrorCode.TIMEOUT: ("upstream_timeout", None),
    ErrorCode.MODEL_NOT_FOUND: (
        "model_not_found",
        gettext_lazy("The provider does not know this model."),
    ),
    ErrorCode.ADDRESS_REFUSED: ("upstream_address_refused", None),
}


def upstream_failure(exc: ProviderError, *, partial: bool = False) -> ServiceError:
    """What a client is told of a failed upstream call, on every surface: the error table's
    code, status, type and retry rule, and a message a person can act on (never a secret)."""
    code, message = UPSTREAM_FAILURES.get(exc.code, ("upstream_error", None))
    text = str(message or kind_of(code).message)
    if exc.code == ErrorCode.ADDRESS_REFUSED:  # names the host and what it is: says more
        text = exc.message
    if exc.code in (
        ErrorCode.BAD_REQUEST,
        ErrorCode.MODEL_NOT_FOUND,
        ErrorCode.UPSTREAM_UNAVAILABLE,
    ):
        text += f" ({exc.message})"
    if exc.code == ErrorCode.RATE_LIMITED and exc.retry_after:
        text += " " + gettext("Try again in %(seconds)d s.") % {
            "seconds": max(1, round(exc.retry_after))
        }
    if partial:
        text = gettext("The reply broke off; what arrived is saved.") + " " + text
    retry_after = exc.retry_after
    if exc.code == ErrorCode.RATE_LIMITED and retry_after is None:
        retry_after = 1.0
    return ServiceError(text, code=code, retry_after=retry_after)


def _valid_usage(usage: object) -> Usage | None:
    """The upstream's usage if its counts are counts; None (so we count) if they are not."""
    if not isinstance(usage, Usage):
        return None
    counts = (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
    if all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        return usage
    return None


def _generated_by(event: TextDelta | ToolCallDelta) -> str:
    if isinstance(event, TextDelta):
        return event.text
    return (event.name or "") + event.arguments


async def stream_capped(
    call: MeteredCall, provider: Provider, outcome: Outcome
) -> AsyncGenerator[StreamEvent, None]:
    """The provider's events for the call, cut off at the cap. Raises ``ProviderError`` for
    every failure, whatever its type; ``outcome`` says what happened either way. Counted for
    /metrics while it runs (streams in flight), and its first token's wait."""
    in_flight = metrics.ACTIVE_STREAMS.labels(call.context.source)
    in_flight.inc()
    opened, first_token = time.monotonic(), True
    try:
        async with contextlib.aclosing(provider.stream(call.request)) as events:
            async for event in events:
                if isinstance(event, TextDelta | ToolCallDelta):
                    text = _generated_by(event)
                    if first_token and text:
                        first_token = False
                        metrics.TIME_TO_FIRST_TOKEN.labels(call.context.model).observe(
                            time.monotonic() - opened
                        )
                    counted = outcome.counted + count_text_tokens(text)
                    held = call.reservation.held_reply
                    if counted > held:
                        # Counted piece by piece, a text counts a little more than whole:
                        # count it whole before deciding it went past what was held.
                        counted = count_text_tokens(outcome.generated + text)
                    if counted > held:
                        outcome.cut_at_cap = True
                        break  # closing the stream stops the upstream: nothing more is paid
                    outcome.counted = counted
                    outcome.parts.append(text)
                elif isinstance(event, StreamEnd):
                    outcome.usage = _valid_usage(event.usage)
                    outcome.finish_reason = event.finish_reason
                    outcome.status = UsageRecord.Status.OK
                    event = StreamEnd(event.finish_reason, outcome.usage, event.upstream_id)
                yield event
    except ProviderError as exc:
        outcome.status, outcome.error = UsageRecord.Status.ERROR, exc
        raise
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except Exception as exc:
        outcome.status, outcome.error = UsageRecord.Status.ERROR, _unusable(exc)
        raise outcome.error from exc
    finally:
        in_flight.dec()  # the upstream stream is closed, however it ended
    if outcome.cut_at_cap:
        # Like an upstream that honoured its cap: a reply cut at its length.
        outcome.status, outcome.finish_reason = UsageRecord.Status.OK, "length"
        yield StreamEnd(finish_reason="length", usage=None, upstream_id=None)


def _completion_text(completion: Completion) -> str:
    """The reply and its tool calls' names and arguments, to count output tokens by."""
    parts = [completion.text]
    choices = completion.raw.get("choices") or []
    message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    for tool_call in calls if isinstance(calls, list) else ():
        function = tool_call.get("function") if isinstance(tool_call, dict) else None
        if isinstance(function, dict):
            parts += (str(function.get("name") or ""), str(function.get("arguments") or ""))
    return "".join(parts)


async def complete_capped(call: MeteredCall, provider: Provider, outcome: Outcome) -> Completion:
    """One non-streaming call with the cap in its request; raises ``ProviderError`` for every
    failure. (An answer cannot be cut once sent: an upstream that ignores the cap is charged
    what it reports, and the ledger row is flagged.)"""
    try:
        completion = await provider.complete(call.request)
        if not isinstance(completion.text, str):
            raise TypeError(f"the reply text is a {type(completion.text).__name__}")
        if not completion.raw.get("choices"):
            raise ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The provider's answer had no reply in it."
            )
    except ProviderError as exc:
        outcome.status, outcome.error = UsageRecord.Status.ERROR, exc
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        outcome.status, outcome.error = UsageRecord.Status.ERROR, _unusable(exc)
        raise outcome.error from exc
    outcome.parts.append(_completion_text(completion))
    outcome.usage = _valid_usage(completion.usage)
    outcome.finish_reason = completion.finish_reason
    outcome.status = UsageRecord.Status.OK
    return replace(completion, usage=outcome.usage)


def complete_blocking(call: MeteredCall) -> Completion:
    """A whole metered call from sync code with no event loop of its own (a Celery task: a
    title, a summary): on a provider of its own, capped, and settled once whatever happens."""
    outcome = Outcome()
    started = time.monotonic()
    try:
        return asyncio.run(_complete_on_own_provider(call, outcome))
    finally:
        settle(call=call, outcome=outcome, latency_ms=int((time.monotonic() - started) * 1000))


async def _complete_on_own_provider(call: MeteredCall, outcome: Outcome) -> Completion:
    provider = build_provider(call.spec)
    try:
        return await complete_capped(call, provider, outcome)
    finally:
        await provider.aclose()


# --- moderation --------------------------------------------------------------------------------


@transaction.atomic
def moderation_reserve(*, context: CallContext, spec: ProviderSpec, text: str) -> MeteredCall:
    """Estimate and hold a moderation check of ``text``: the input as one user message, by the
    prompt rule, and no reply tokens (``max_tokens=0``: a moderation model writes nothing, so
    only the input must be affordable). Budgets and rate limits apply as to any call, and an
    unpriced model under a budget is refused. Raises ``QuotaExceeded`` before anything is sent."""
    request = ChatRequest(model=context.model, messages=[{"role": "user", "content": text}])
    prompt_tokens = estimate_prompt_tokens(request)
    reservation = _reserve(
        context=context, prompt_tokens=held_prompt_tokens(prompt_tokens), max_tokens=0
    )
    return MeteredCall(
        context=context,
        request=request,
        spec=spec,
        reservation=reservation,
        prompt_tokens=prompt_tokens,
    )


async def moderate_metered(
    *,
    context: CallContext,
    spec: ProviderSpec,
    text: str,
    model: str,
    detached: bool = False,
) -> ModerationResult:
    """One metered moderation check of ``text`` with ``model`` on ``spec``'s connection.

    ``context`` and ``spec`` may be those of the call being checked: the check is made and
    billed as ``model`` with source ``moderation``. Reserved, made through the connection's
    long-lived provider, settled once shielded from cancellation (the ledger's one row: the
    input as counted here, since moderation answers report no usage; status ``error`` and
    nothing charged when it fails). Raises ``QuotaExceeded`` (nothing sent, no row) or
    ``ProviderError`` for every failure of the call, whatever its type. ``detached``: called
    from a socket's consumer or a task, not a request (``core.db``)."""
    context = replace(context, model=model, source=UsageRecord.Source.MODERATION)
    spec = replace(spec, model=model)
    call = await db_sync_to_async(moderation_reserve, detached=detached)(
        context=context, spec=spec, text=text
    )
    outcome = Outcome()
    started = time.monotonic()
    try:
        async with leased_provider(spec) as provider:
            result = await provider.moderate(model=model, input=text)
        if not isinstance(result, ModerationResult):
            raise TypeError(f"the moderation answer is a {type(result).__name__}")
        outcome.status = UsageRecord.Status.OK
        return result
    except ProviderError as exc:
        outcome.status, outcome.error = UsageRecord.Status.ERROR, exc
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        outcome.status, outcome.error = UsageRecord.Status.ERROR, _unusable(exc)
        raise outcome.error from exc
    finally:
        await settle_shielded(
            call,
            outcome,
            latency_ms=int((time.monotonic() - started) * 1000),
            detached=detached,
        )


# --- embeddings --------------------------------------------------------------------------------


def estimate_embedding_tokens(input: list[str]) -> int:
    """The one estimate rule of an embedding call's input: each text by the text rule (an
    embedding model reads the texts bare, with no message wrapping)."""
    return sum(count_text_tokens(text) for text in input)


@transaction.atomic
def embedding_reserve(*, context: CallContext, spec: ProviderSpec, input: list[str]) -> MeteredCall:
    """Estimate and hold an embedding call: the inputs with the prompt margin, and no reply
    tokens (``max_tokens=0``, as a moderation check is held: an embedding model writes
    nothing, so only the input must be affordable). Budgets and rate limits apply as to any
    call, and an unpriced model under a budget is refused. Raises ``QuotaExceeded`` before
    anything is sent."""
    prompt_tokens = estimate_embedding_tokens(input)
    reservation = _reserve(
        context=context, prompt_tokens=held_prompt_tokens(prompt_tokens), max_tokens=0
    )
    return MeteredCall(
        context=context,
        # Nothing of it is sent: an embedding call has no chat request. The model names what
        # was held for.
        request=ChatRequest(model=context.model, messages=[]),
        spec=spec,
        reservation=reservation,
        prompt_tokens=prompt_tokens,
    )


async def embed_capped(
    call: MeteredCall,
    provider: Provider,
    outcome: Outcome,
    *,
    input: list[str],
    dimensions: int | None,
) -> Embeddings:
    """The embedding call ``embedding_reserve`` held, on ``provider``; ``outcome`` says what it
    came to (the upstream's input tokens when it reported them). Raises ``ProviderError`` for
    every failure, whatever its type (an answer that is not one vector per input included)."""
    try:
        result = await provider.embed(model=call.context.model, input=input, dimensions=dimensions)
        if not isinstance(result, Embeddings):
            raise TypeError(f"the embeddings answer is a {type(result).__name__}")
        if len(result.vectors) != len(input):
            raise ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                "The provider's embeddings answer did not have one vector per input.",
            )
    except ProviderError as exc:
        outcome.status, outcome.error = UsageRecord.Status.ERROR, exc
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        outcome.status, outcome.error = UsageRecord.Status.ERROR, _unusable(exc)
        raise outcome.error from exc
    if result.prompt_tokens is not None:
        outcome.usage = _valid_usage(Usage(result.prompt_tokens, 0))
    outcome.status = UsageRecord.Status.OK
    return result


async def embed_reserved(
    call: MeteredCall, *, input: list[str], dimensions: int | None, detached: bool = False
) -> Embeddings:
    """Make the embedding call ``embedding_reserve`` held, through the connection's long-lived
    provider (``embed_capped``), and settle it once, shielded from cancellation: the upstream's
    input tokens (else our estimate, marked ``estimated``), no output tokens; status ``error``
    and nothing charged when it fails. Raises ``ProviderError`` for every failure."""
    outcome = Outcome()
    started = time.monotonic()
    try:
        async with leased_provider(call.spec) as provider:
            return await embed_capped(call, provider, outcome, input=input, dimensions=dimensions)
    except ProviderError as exc:
        outcome.status, outcome.error = UsageRecord.Status.ERROR, exc
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the provider could not even be had: nothing was sent
        outcome.status, outcome.error = UsageRecord.Status.ERROR, _unusable(exc)
        raise outcome.error from exc
    finally:
        await settle_shielded(
            call, outcome, latency_ms=int((time.monotonic() - started) * 1000), detached=detached
        )


async def embed_metered(
    *,
    context: CallContext,
    spec: ProviderSpec,
    input: list[str],
    dimensions: int | None,
    detached: bool = False,
) -> Embeddings:
    """One metered embedding call of ``input`` with ``context.model`` on ``spec``'s connection:
    reserved (``embedding_reserve``), made and settled once (``embed_reserved``), with one
    ledger row of ``context.source`` (``embedding`` for ``/v1/embeddings``, ``batch`` for a
    batch's line: the caller says). Raises ``QuotaExceeded`` (nothing sent, no row) or
    ``ProviderError`` (one row, status ``error``, nothing charged). ``detached``: called from a
    socket's consumer or a task, not a request (``core.db``)."""
    call = await db_sync_to_async(embedding_reserve, detached=detached)(
        context=context, spec=spec, input=input
    )
    return await embed_reserved(call, input=input, dimensions=dimensions, detached=detached)


# --- settle ------------------------------------------------------------------------------------


def usage_to_charge(
    *, prompt_tokens: int, status: str, usage: Usage | None, generated: str
) -> tuple[Usage, bool]:
    """The one usage-when-missing rule: the upstream's usage when it reported any; otherwise
    our count (``estimated``) — the prompt as estimated and every token generated, so a reply
    that produced text is never free — and nothing for a call that failed before producing
    anything, as providers do not charge those."""
    if usage is not None:
        return usage, False
    if status == UsageRecord.Status.ERROR and not generated:
        return Usage(0, 0), False
    completion = count_text_tokens(generated) if generated else 0
    return Usage(prompt_tokens, completion), True


def settle(
    *,
    call: MeteredCall,
    outcome: Outcome,
    latency_ms: int | None,
    message_id: int | None = None,
    conversation_deleted: bool = False,
) -> UsageRecord:
    """Release the hold, charge what the call used, write its one ledger row (idempotent)."""
    usage, estimated = usage_to_charge(
        prompt_tokens=call.prompt_tokens,
        status=outcome.status,
        usage=outcome.usage,
        generated=outcome.generated,
    )
    began = timezone.now()
    record = quota_settle(
        reservation=call.reservation,
        status=outcome.status,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        estimated=estimated,
        latency_ms=latency_ms,
        message_id=message_id,
        conversation_deleted=conversation_deleted,
    )
    observe_settle(
        record,
        began=began,
        error=outcome.error,
        finish_reason=outcome.finish_reason,
        request_id=call.log_request_id,
    )
    return record


def observe_settle(
    record: UsageRecord,
    *,
    began: datetime,
    error: ProviderError | None = None,
    finish_reason: str | None = None,
    request_id: str | None = None,
) -> None:
    """A call settled: counted for /metrics and logged as one line, by which one request can
    be followed from its HTTP line (or socket frame) to its ledger row (``ledger_request_id``
    is ``UsageRecord.request_id``). Once per call: a second settle (a reply closed as orphaned
    whose process finished after all) gets back the row written first, before ``began``."""
    if record.created_at < began:
        return
    outcome = record.status
    if record.status == UsageRecord.Status.ERROR and error is not None:
        outcome = str(error.code)  # the provider's error kind: timeout, rate_limited…
    metrics.observe_settled(
        model=record.model,
        source=str(record.source),
        outcome=str(outcome),
        prompt_tokens=record.prompt_tokens,
        cached_tokens=record.cached_tokens,
        completion_tokens=record.completion_tokens,
        cost=record.cost,
        latency_ms=record.latency_ms,
    )
    fields: dict[str, Any] = {
        "ledger_request_id": str(record.request_id),
        "model": record.model,
        "source": str(record.source),
        "outcome": str(outcome),
        "finish_reason": finish_reason,
        "prompt_tokens": record.prompt_tokens,
        "cached_tokens": record.cached_tokens,
        "completion_tokens": record.completion_tokens,
        "estimated": record.estimated,
        "cost_usd": str(record.cost),
        "latency_ms": record.latency_ms,
        "organization_id": record.organization_id,
        "project_id": record.project_id,
        "conversation_id": record.conversation_id,
    }
    if request_id is not None:  # else the one bound where this runs, if any
        fields["request_id"] = request_id
    failed = record.status == UsageRecord.Status.ERROR
    log.log(logging.WARNING if failed else logging.INFO, "upstream_call", **fields)


async def settle_shielded(
    call: MeteredCall, outcome: Outcome, *, latency_ms: int | None, detached: bool = False
) -> UsageRecord:
    """``settle`` from async code; it finishes even if the caller is cancelled meanwhile.
    ``detached``: called from a task that outlives its request (``core.db``)."""
    run = db_sync_to_async(settle, detached=detached)
    task = run_detached(
        run(call=call, outcome=outcome, latency_ms=latency_ms), same_context=not detached
    )
    return await asyncio.shield(task)


def settle_orphan(
    *,
    request_id: uuid.UUID,
    context: CallContext,
    status: str,
    prompt_tokens: int,
    generated: str,
    message_id: int | None = None,
) -> UsageRecord:
    """Settle a call whose process died, from what was saved of it, by the same rule."""
    price = pricing.price_for(context.model, on=timezone.now().date())
    reservation = Reservation(
        request_id=request_id,
        context=context,
        amount=Decimal(0),
        price_id=price.pk if price else None,
        prompt_tokens_estimate=prompt_tokens,
    )
    usage, estimated = usage_to_charge(
        prompt_tokens=prompt_tokens, status=status, usage=None, generated=generated
    )
    began = timezone.now()
    record = quota_settle(
        reservation=reservation,
        status=status,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        estimated=estimated,
        message_id=message_id,
    )
    observe_settle(record, began=began)
    return record
