"""Batches handed to the upstream's own Batch API, and their results collected and priced.

When a batch over ``/v1/chat/completions`` is first run (``gateway.batches.batch_run``), and
every one of its lines passes the checks ``/v1`` makes before a call (the body, the model
resolved for the key's project as ``chat_prepare`` resolves it, vision, the context window),
every line's model lives on ONE connection whose ``supports_batches`` is on, and the project
does not moderate its input (each line would have to be checked first), the batch is handed to
that connection's upstream instead of being run here line by line:

1. **Hold.** Every line's worst case at the batch price (the prompt estimate with its margin,
   and the reply cap — the line's own, else what the model may write — which is written into
   the line sent, so the upstream cannot go past it) is held at once on every budget that
   applies, checked against the rate limits as one request (``billing.services.
   quota_reserve_batch``). The hold lasts until the batch's window ends, plus the time given
   to collect it (``COLLECT_GRACE``): ``expire_holds`` cannot free it while the batch may still
   be collected. It is taken in the transaction that marks the batch handed off
   (``Batch.handed_off_at``, ``connection``, the price of each model's lines in
   ``held_prices``), so a worker that dies leaves either both or neither. A batch whose hold
   is refused (a budget, a rate limit, a model with no price) runs here line by line instead,
   where each line is capped or refused as it comes.
2. **Submit.** The input file, re-written (each line's model the upstream's name for it, the
   cap in, ``custom_id`` its index), is uploaded and a batch created over it, tagged with our
   batch's id (``metadata.gateway_batch_id``). A run that finds a batch handed off but not
   submitted (its worker died, or the upstream failed for a moment) first looks for that tag
   among the upstream's batches, so a batch is never submitted twice. An upstream that
   refuses it outright (no Batch API, a bad key) has the hold released, and the batch runs
   here line by line.
3. **Poll.** Each run of a handed-off batch (the sweep, ``gateway.tasks.sweep_batches``,
   queues one each minute for every unfinished batch) asks the upstream: its status and counts
   are mirrored onto ours. A cancel cancels it upstream; so does our window running out
   (``expired``, as OpenAI's own batches end). An upstream that never ends is given up
   ``COLLECT_GRACE`` after our window: the batch expires, and its hold is released.
4. **Collect.** Once the upstream batch ended, its output and error files are read (a line that
   is not JSON, names a ``custom_id`` we did not send, or repeats one is skipped: the first
   answer for a line stands) and each of our lines is *recorded* as the local runner records
   one (``gateway.batches``, "Exactly once"): its answer appended to the work file, then one
   transaction writes its ledger row (``quota_settle_held``: priced at the batch price from
   the usage the upstream reported, or an estimate marked ``estimated``; the row's request id
   is fixed per batch and line, so a second settle is a no-op), moves ``next_line`` past it
   (here it counts our result lines, in input order) and adds its counts and cost to the
   batch. Then what is left of the hold is released, and
   the output and error files are written in OpenAI's shapes with our ids (``custom_id``
   kept), as the local runner writes them.

A line the upstream answered is one ledger row (status ``error`` and no cost when its answer
was a failure, unless the upstream reported usage for it). A completed or expired batch has a
line for each request: one the upstream's files did not answer (an expired one, a truncated
file, a file that could not be read) is an error line and costs nothing. A cancelled or failed
batch has a line for each request the upstream answered, as a cancelled local batch has for
each it ran. Whatever the upstream sends, the batch ends with its hold released.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey
from billing import metering, pricing
from billing.models import UsageRecord
from billing.services import (
    CallContext,
    HeldLine,
    QuotaExceeded,
    quota_release,
    quota_reserve_batch,
    quota_settle_held,
)
from core.errors import ApiError, ServiceError, invalid_request
from providers import selectors as provider_selectors
from providers.llm.base import (
    BatchProvider,
    ChatRequest,
    ErrorCode,
    ProviderError,
    UpstreamBatch,
    Usage,
    batch_provider,
)
from providers.llm.catalog import takes_max_completion_tokens
from providers.llm.openai_provider import batch_line_error
from providers.models import ProviderConnection
from providers.specs import ProviderSpec, build_provider, spec_for_connection

from . import batches, moderation
from . import services as gateway_services
from .files import BatchRequest, iter_requests
from .models import Batch
from .params import parse_chat_body

logger = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
# How long after its window a handed-off batch is still waited for (the upstream ends its own
# batch at the end of its window, a little after ours began): then it is given up as expired.
COLLECT_GRACE = timedelta(hours=1)
# The tag that finds our batch among the upstream's (a submission whose worker died).
METADATA_KEY = "gateway_batch_id"
# Request ids of the batch's hold and of its lines' ledger rows: fixed per batch and line.
_NAMESPACE = uuid.UUID("6f1c3a52-8e4b-4d0e-9b7a-2c5d1e0f4a93")
_CUSTOM_ID = re.compile(r"0|[1-9][0-9]*")

MISSING_LINE = "The provider's results have no answer for this request."

T = TypeVar("T")


def hold_id(batch_id: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{batch_id}:hold")


def line_request_id(batch_id: str, index: int) -> uuid.UUID:
    """The request id of the ledger row of the batch's request ``index``."""
    return uuid.uuid5(_NAMESPACE, f"{batch_id}:line:{index}")


# --- the plan: whether the batch can be handed off, and what to send ---------------------------


@dataclass(frozen=True)
class _Line:
    request: BatchRequest
    model: str  # ours, as the line names it
    held: HeldLine
    upstream: dict[str, Any]  # the line as the upstream gets it


@dataclass(frozen=True)
class _Plan:
    connection: ProviderConnection
    lines: list[_Line]

    def input_file(self) -> bytes:
        return b"".join(
            json.dumps(line.upstream, ensure_ascii=False).encode() + b"\n" for line in self.lines
        )


def _capped(request: ChatRequest, cap: int) -> ChatRequest:
    """The request with the cap in the field the client used, else the one the model takes
    (as ``billing.metering`` caps a call to a connection that is not the local model)."""
    wants_completion_field = request.max_completion_tokens is not None or (
        request.max_tokens is None and takes_max_completion_tokens(request.model)
    )
    if wants_completion_field:
        return replace(request, max_completion_tokens=cap, max_tokens=None)
    return replace(request, max_tokens=cap)


def _prepared(key: ApiKey, request: BatchRequest, names: dict[str, str]) -> tuple[_Line, int]:
    """The line as it would be called here (the same checks as ``chat_prepare``, refusals
    raised as its), and the id of the connection serving its model."""
    parsed = parse_chat_body(body=json.dumps(request.body).encode())
    if parsed.stream:
        raise invalid_request("A batch request cannot stream: leave 'stream' out.", param="stream")
    project = key.project
    spec = gateway_services.chat_check(project=project, parsed=parsed)
    model = parsed.request.model
    if model not in names:
        served = provider_selectors.resolve_model(project, model)
        names[model] = served.name if served is not None else model
    prompt_tokens = metering.estimate_prompt_tokens(parsed.request)
    cap = parsed.max_tokens or metering.output_limit(spec, prompt_tokens=prompt_tokens)
    sent = _capped(parsed.request, cap)
    body = {f.name: value for f in fields(sent) if (value := getattr(sent, f.name)) is not None}
    body["model"] = names[model]
    line = _Line(
        request=request,
        model=model,
        held=HeldLine(
            model=model,
            prompt_tokens=metering.held_prompt_tokens(prompt_tokens),
            reply_tokens=cap,  # the upstream counts the reply itself and stops at the cap
        ),
        upstream={"custom_id": str(request.index), "method": "POST", "url": ENDPOINT, "body": body},
    )
    return line, spec.connection_id or 0


def _moderated(key: ApiKey) -> bool:
    checks = moderation.input_moderation()
    return checks is not None and checks.for_project(key.project_id) is not None


def _plan(batch: Batch, key: ApiKey) -> _Plan | None:
    """What to hand off, or None: the batch runs here (see the module's docstring for when)."""
    if batch.endpoint != ENDPOINT:
        return None
    candidates = ProviderConnection.objects.for_project(key.project).filter(supports_batches=True)
    if not candidates.exclude(kind=ProviderConnection.Kind.LOCAL).exists():
        return None  # the usual case, in one query
    if _moderated(key):
        return None
    lines: list[_Line] = []
    connection_ids: set[int] = set()
    names: dict[str, str] = {}
    with batches.open_input(batch) as handle:
        for request in iter_requests(handle):
            try:
                line, connection_id = _prepared(key, request, names)
            except ServiceError:
                return None  # refused here, in our words, line by line
            connection_ids.add(connection_id)
            if len(connection_ids) > 1:
                return None
            lines.append(line)
    connection = (
        candidates.filter(pk__in=connection_ids).exclude(kind=ProviderConnection.Kind.LOCAL).first()
    )
    if connection is None or not lines:
        return None
    return _Plan(connection=connection, lines=lines)


# --- the upstream, from sync code ----------------------------------------------------------------


def _spec(connection: ProviderConnection) -> ProviderSpec:
    return spec_for_connection(connection, model="", window=0)


def _upstream(spec: ProviderSpec, work: Callable[[BatchProvider], Awaitable[T]]) -> T:
    """``work`` on a provider of its own (a task runs its own event loop, as the local runner's
    lines do). Raises ``ProviderError``."""

    async def run() -> T:
        provider = build_provider(spec)
        try:
            return await work(batch_provider(provider))
        finally:
            await provider.aclose()

    return asyncio.run(run())


# --- the run -------------------------------------------------------------------------------------


def batch_run_upstream(batch: Batch) -> batches.Progress | None:
    """A run of ``batch`` (under its lease): hand it off if it should be, then drive it (submit,
    poll, collect); None when it runs here line by line."""
    plan = None
    if batch.handed_off_at is None:
        if batch.status != Batch.Status.VALIDATING or batch.next_line:
            return None
        key = batch.api_key
        if key is None or not key.is_active:
            return None  # the local runner fails it, in its words
        plan = _plan(batch, key)
        if plan is None:
            return None
        try:
            if not _hand_off(batch, key, plan):
                return batches.Progress.PAUSED  # changed meanwhile: the next run sees how
        except QuotaExceeded as refusal:
            logger.info("batch %s runs here: its hold was refused (%s)", batch.id, refusal.code)
            return None
        batch.refresh_from_db()
    try:
        return _drive(batch, plan)
    except (ApiError, FileNotFoundError):
        # Its input no longer reads (the batch fails: ``batches.batch_run``): nothing more
        # can be collected, and the hold goes back.
        quota_release(hold_id=hold_id(batch.id))
        raise


def _hand_off(batch: Batch, key: ApiKey, plan: _Plan) -> bool:
    """Take the batch's hold and mark it handed off, in one transaction; whether it was."""
    project = key.project
    context = CallContext(
        organization_id=project.organization_id,
        project_id=project.pk,
        user_id=None,
        model=plan.lines[0].model,
        source=UsageRecord.Source.BATCH,
        connection_id=plan.connection.pk,
        api_key_id=key.pk,
        batch=True,
    )
    window_end = batch.expires_at or timezone.now() + batches.COMPLETION_WINDOW
    until = window_end + COLLECT_GRACE + timedelta(seconds=settings.BILLING_HOLD_SECONDS)
    with transaction.atomic():
        hold = quota_reserve_batch(
            context=context,
            lines=[line.held for line in plan.lines],
            request_id=hold_id(batch.id),
            expires_at=until,
        )
        moved = Batch.objects.filter(
            pk=batch.pk, status=Batch.Status.VALIDATING, handed_off_at__isnull=True
        ).update(handed_off_at=timezone.now(), connection=plan.connection, held_prices=hold.prices)
        if not moved:
            transaction.set_rollback(True)
    return bool(moved)


def _run_here(batch: Batch) -> None:
    """Give the hold back and let the local runner have the batch (it will not be offered to
    the upstream again: it is in progress)."""
    quota_release(hold_id=hold_id(batch.id))
    Batch.objects.filter(pk=batch.pk, upstream_id="").update(
        handed_off_at=None, connection=None, held_prices={}
    )
    # (A batch cancelled meanwhile stays cancelling: the local runner ends it so.)
    Batch.objects.filter(pk=batch.pk, status=Batch.Status.VALIDATING).update(
        status=Batch.Status.IN_PROGRESS, in_progress_at=timezone.now()
    )


def _end(batch: Batch, status: str, *, errors: list[dict[str, Any]] | None = None) -> None:
    """End a handed-off batch that will collect nothing (more): the hold first, then the
    results recorded so far (an expired one: the rest as ``batch_expired`` lines)."""
    quota_release(hold_id=hold_id(batch.id))
    if batch.next_line == 0:
        # The counts mirrored from the upstream were never recorded as lines.
        Batch.objects.filter(pk=batch.pk, next_line=0).update(completed=0, failed=0)
    batches._finalize(batch, status, errors=errors)


def _error(code: str, message: str, line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def _deadline_passed(batch: Batch) -> bool:
    return batch.expires_at is not None and timezone.now() >= batch.expires_at + COLLECT_GRACE


def _drive(batch: Batch, plan: _Plan | None) -> batches.Progress:
    if not batch.upstream_id:
        if batch.status == Batch.Status.CANCELLING:
            _end(batch, Batch.Status.CANCELLED)
            return batches.Progress.DONE
        if batches._expired(batch):
            _end(batch, Batch.Status.EXPIRED)
            return batches.Progress.DONE
        key = batch.api_key
        if key is None or not key.is_active:
            message = "The API key that made this batch was revoked, expired or deleted."
            _end(batch, Batch.Status.FAILED, errors=[_error("invalid_api_key", message)])
            return batches.Progress.DONE
        connection = batch.connection
        if connection is None:  # deleted since: nothing was sent
            _run_here(batch)
            return batches.Progress.MORE  # its next run is the local runner's
        submitted = _submit(batch, key, connection, plan)
        if submitted is not batches.Progress.DONE:
            return submitted
        batch.refresh_from_db()
    return _poll(batch)


def _submit(
    batch: Batch, key: ApiKey, connection: ProviderConnection, plan: _Plan | None
) -> batches.Progress:
    """Upload the input and create the batch upstream (or find the one a dead worker made);
    DONE once it is there."""
    resumed = plan is None
    if plan is None:
        plan = _plan(batch, key)
    if plan is None or plan.connection.pk != connection.pk:
        _run_here(batch)  # its models moved meanwhile: the hold was for another plan
        return batches.Progress.MORE
    data = plan.input_file()

    async def submit(api: BatchProvider) -> UpstreamBatch:
        if resumed:
            for existing in await api.list_batches(limit=100):
                if existing.metadata.get(METADATA_KEY) == batch.id:
                    return existing
        uploaded = await api.upload_batch_file(data=data, filename=f"{batch.id}.jsonl")
        return await api.create_batch(
            input_file_id=uploaded, endpoint=ENDPOINT, metadata={METADATA_KEY: batch.id}
        )

    try:
        upstream = _upstream(_spec(connection), submit)
    except ProviderError as exc:
        if exc.retryable and not batches._expired(batch):
            logger.warning("batch %s: the upstream could not take it yet: %s", batch.id, exc)
            return batches.Progress.PAUSED
        logger.warning("batch %s runs here: the upstream refused it: %s", batch.id, exc)
        _run_here(batch)
        return batches.Progress.MORE
    except ServiceError as exc:  # the connection's key cannot be read
        logger.warning("batch %s runs here: %s", batch.id, exc.message)
        _run_here(batch)
        return batches.Progress.MORE
    Batch.objects.filter(pk=batch.pk, upstream_id="").update(
        upstream_id=upstream.id,
        upstream_input_file_id=upstream.input_file_id or "",
    )
    return batches.Progress.DONE


def _mirror(batch: Batch, upstream: UpstreamBatch) -> None:
    """The upstream's status and counts onto ours, while it runs."""
    if upstream.ended:
        return
    now = timezone.now()
    rows = Batch.objects.filter(pk=batch.pk, next_line=0).exclude(
        upstream_status__in=_ENDED_STATUSES
    )
    rows.update(
        upstream_status=upstream.status, completed=upstream.completed, failed=upstream.failed
    )
    ours = {
        "in_progress": Batch.Status.IN_PROGRESS,
        "finalizing": Batch.Status.FINALIZING,
    }.get(upstream.status)
    if ours is None:
        return
    stamp = "in_progress_at" if ours == Batch.Status.IN_PROGRESS else "finalizing_at"
    running = rows.filter(
        status__in=(Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS, Batch.Status.FINALIZING)
    )
    running.update(status=ours)
    running.filter(**{f"{stamp}__isnull": True}).update(**{stamp: now})
    running.filter(in_progress_at__isnull=True).update(in_progress_at=now)


_ENDED_STATUSES = ("completed", "failed", "expired", "cancelled")


def _poll(batch: Batch) -> batches.Progress:
    if batch.connection is None:  # the connection was deleted: nothing can be collected
        message = "The connection this batch was handed to was deleted; its results are lost."
        _end(batch, Batch.Status.FAILED, errors=[_error("connection_deleted", message)])
        return batches.Progress.DONE
    cancel = batch.status == Batch.Status.CANCELLING or batches._expired(batch)
    asked = batch.upstream_status in ("cancelling", *_ENDED_STATUSES)
    upstream_id = batch.upstream_id

    async def poll(api: BatchProvider) -> UpstreamBatch:
        if cancel and not asked:
            try:
                await api.cancel_batch(upstream_id)
            except ProviderError as exc:  # it ended meanwhile, or cannot be: the poll says
                logger.info("batch %s: the upstream did not cancel: %s", batch.id, exc)
        return await api.retrieve_batch(upstream_id)

    try:
        spec = _spec(batch.connection)
        upstream = _upstream(spec, poll)
    except (ProviderError, ServiceError) as exc:
        if _deadline_passed(batch):
            logger.warning("batch %s: given up, the upstream cannot be asked: %s", batch.id, exc)
            _end(batch, Batch.Status.EXPIRED)
            return batches.Progress.DONE
        # A moment's failure, or a key an admin can mend (the batch runs on meanwhile, and is
        # paid for): asked again at the next sweep. The upstream no longer having it is final.
        if not isinstance(exc, ProviderError) or exc.retryable or exc.code == ErrorCode.AUTH:
            logger.warning("batch %s: the upstream did not answer: %s", batch.id, exc)
            return batches.Progress.PAUSED
        message = f"The upstream could not be asked about this batch: {exc.message}"
        _end(batch, Batch.Status.FAILED, errors=[_error("upstream_error", message)])
        return batches.Progress.DONE
    _mirror(batch, upstream)
    if not upstream.ended:
        if _deadline_passed(batch):
            logger.warning("batch %s: given up, the upstream never ended it", batch.id)
            _end(batch, Batch.Status.EXPIRED)
            return batches.Progress.DONE
        return batches.Progress.PAUSED
    return _collect(batch, spec, upstream)


# --- collect -------------------------------------------------------------------------------------


def _results(data: bytes, total: int, into: dict[int, dict[str, Any]]) -> int:
    """Read a result file into ``into`` (request index -> its result line), the first answer
    for a request standing; the number of lines skipped (not JSON, not an object, a custom_id
    we did not send, one answered already)."""
    skipped = 0
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            skipped += 1
            continue
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
            skipped += 1
            continue
        index = int(custom_id)
        if index >= total or index in into:
            skipped += 1
            continue
        into[index] = item
    return skipped


def _final(batch: Batch, upstream: UpstreamBatch) -> str:
    if upstream.status == "completed":
        return Batch.Status.COMPLETED
    if upstream.status == "failed":
        return Batch.Status.FAILED
    if upstream.status == "cancelled" and batch.status != Batch.Status.CANCELLING:
        # Cancelled by us when our window ran out, or by someone else upstream.
        return Batch.Status.EXPIRED if batches._expired(batch) else Batch.Status.CANCELLED
    return Batch.Status.EXPIRED if upstream.status == "expired" else Batch.Status.CANCELLED


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _valid_usage(value: object) -> Usage | None:
    """The usage a result line reports, if its counts are counts (else None: we count)."""
    if not isinstance(value, dict):
        return None
    details = value.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    prompt, completion = _count(value.get("prompt_tokens")), _count(value.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, cached_tokens=_count(cached) or 0
    )


def _reply_text(body: dict[str, Any]) -> str:
    """The reply and its tool calls' names and arguments, to count output tokens by."""
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        return ""
    parts = [message.get("content") if isinstance(message.get("content"), str) else ""]
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts += (str(function.get("name") or ""), str(function.get("arguments") or ""))
    return "".join(str(part) for part in parts)


@dataclass(frozen=True)
class _Answer:
    """One of our lines, made of the upstream's result: what goes in our file, and the ledger
    row's figures (None: no row, nothing ran that we know of)."""

    line: dict[str, Any]
    ok: bool
    settle: Callable[[], UsageRecord] | None


def _line_of(
    batch: Batch,
    position: int,
    request: BatchRequest,
    item: dict[str, Any] | None,
    final: str,
    secret: str,
) -> _Answer:
    line: dict[str, Any] = {
        "id": batches._request_line_id(batch.id, position),
        "custom_id": request.custom_id,
        "response": None,
        "error": None,
    }
    response = item.get("response") if item is not None else None
    if not isinstance(response, dict):
        error = item.get("error") if item is not None else None
        error = error if isinstance(error, dict) else {}
        if item is None and final == Batch.Status.EXPIRED:
            error = {"code": "batch_expired", "message": batches.EXPIRED_LINE}
        code, message = error.get("code"), error.get("message")
        line["error"] = {
            "code": code if isinstance(code, str) and code else "batch_result_missing",
            "message": message if isinstance(message, str) and message else MISSING_LINE,
        }
        return _Answer(line, ok=False, settle=None)
    status, body = response.get("status_code"), response.get("body")
    body = body if isinstance(body, dict) else {}
    status = status if isinstance(status, int) and not isinstance(status, bool) else 502
    choices = body.get("choices")
    ok = status == 200 and isinstance(choices, list) and bool(choices)
    request_id = line_request_id(batch.id, request.index)
    model = str(request.body.get("model") or "")
    try:
        prompt_estimate = metering.estimate_prompt_tokens(
            parse_chat_body(body=json.dumps(request.body).encode()).request
        )
    except ServiceError:  # it was checked when handed off; the file cannot have changed
        prompt_estimate = 0
    reported = _valid_usage(body.get("usage"))
    if ok:
        usage, estimated = metering.usage_to_charge(
            prompt_tokens=prompt_estimate,
            status=UsageRecord.Status.OK,
            usage=reported,
            generated=_reply_text(body),
        )
        answer = {
            **body,
            "id": f"chatcmpl-{request_id.hex}",
            "model": model,
            "usage": gateway_services.usage_json(usage),
        }
        row_status = UsageRecord.Status.OK
        line["response"] = {"status_code": 200, "request_id": request_id.hex, "body": answer}
    else:
        if status == 200:
            failure = ProviderError(
                ErrorCode.UPSTREAM_UNAVAILABLE, "The provider's answer had no reply in it."
            )
        else:
            failure = batch_line_error(status, body, secret=secret)
        refusal = metering.upstream_failure(failure)
        # A failed request costs nothing, unless the upstream says what it charged for it.
        usage, estimated = reported or Usage(0, 0), False
        row_status = UsageRecord.Status.ERROR
        error_body = refusal.body()
        line["response"] = {
            "status_code": refusal.status,
            "request_id": request_id.hex,
            "body": error_body,
        }
        line["error"] = {"code": refusal.wire_code or "error", "message": refusal.message}
    context = CallContext(
        organization_id=batch.project.organization_id,
        project_id=batch.project_id,
        user_id=None,
        model=model,
        source=UsageRecord.Source.BATCH,
        connection_id=batch.connection_id,
        api_key_id=batch.api_key_id,
        batch=True,
    )
    settle = partial(
        _settle_line,
        batch=batch,
        request_id=request_id,
        context=context,
        status=row_status,
        usage=usage,
        estimated=estimated,
    )
    return _Answer(line, ok=ok, settle=settle)


def _price_id(batch: Batch, model: str) -> int | None:
    prices = batch.held_prices if isinstance(batch.held_prices, dict) else {}
    if model in prices:
        held = prices[model]
        return held if isinstance(held, int) else None
    moment = batch.handed_off_at or timezone.now()
    price = pricing.price_for(model, on=moment.date())
    return price.pk if price else None


def _settle_line(
    *,
    batch: Batch,
    request_id: uuid.UUID,
    context: CallContext,
    status: str,
    usage: Usage,
    estimated: bool,
) -> UsageRecord:
    """One line's ledger row, paid out of the batch's hold (a second call is a no-op), counted
    and logged as every settled call is (``metering.observe_settle``)."""
    began = timezone.now()
    record = quota_settle_held(
        hold_id=hold_id(batch.id),
        request_id=request_id,
        context=context,
        price_id=_price_id(batch, context.model),
        status=status,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        estimated=estimated,
    )
    metering.observe_settle(record, began=began, request_id=request_id.hex)
    return record


def _record(batch: Batch, position: int, answer: _Answer) -> None:
    """The line done, as the local runner records one (``gateway.batches.record_line``); the
    row's request id is the same for every attempt, the attempt's own marks its answer."""
    batches.record_line(
        batch,
        index=position,
        ok=answer.ok,
        request_id=uuid.uuid4().hex,
        line=answer.line,
        settle=answer.settle,
    )


def _collect(batch: Batch, spec: ProviderSpec, upstream: UpstreamBatch) -> batches.Progress:
    """Read the ended batch's results, record each of our lines, release the hold, write our
    files and end the batch."""
    final = _final(batch, upstream)
    file_ids = [i for i in (upstream.output_file_id, upstream.error_file_id) if i]

    async def download(api: BatchProvider) -> list[bytes | ProviderError]:
        found: list[bytes | ProviderError] = []
        for file_id in file_ids:
            try:
                found.append(await api.file_content(file_id))
            except ProviderError as exc:
                found.append(exc)
        return found

    try:
        contents = _upstream(spec, download) if file_ids else []
    except ProviderError as exc:  # the provider itself could not be had
        contents = [exc for _ in file_ids]
    results: dict[int, dict[str, Any]] = {}
    errors: list[dict[str, Any]] = []
    for file_id, content in zip(file_ids, contents, strict=True):
        if isinstance(content, ProviderError):
            if content.retryable and not _deadline_passed(batch):
                logger.warning("batch %s: its results could not be read yet: %s", batch.id, content)
                return batches.Progress.PAUSED
            message = f"The provider's result file {file_id} could not be read: {content.message}"
            errors.append(_error("upstream_results_unreadable", message))
            continue
        skipped = _results(content, batch.total, results)
        if skipped:
            logger.warning(
                "batch %s: %s lines of the upstream's file %s were skipped", batch.id, skipped,
                file_id,
            )  # fmt: skip
    with batches.open_input(batch) as handle:
        requests = list(iter_requests(handle))
    if final == Batch.Status.FAILED:
        for item in upstream.errors:
            line = item.get("line")
            at = line if isinstance(line, int) and 1 <= line <= len(requests) else None
            errors.append(
                _error(
                    str(item.get("code") or "batch_failed"),
                    str(item.get("message") or "The provider failed the batch."),
                    requests[at - 1].line if at is not None else None,
                )
            )
        if not errors:
            errors.append(_error("batch_failed", "The provider failed the batch."))
    now = timezone.now()
    # Once: the counts mirrored while it ran give way to the lines recorded.
    changes: dict[str, Any] = {"upstream_status": upstream.status, "completed": 0, "failed": 0}
    Batch.objects.filter(pk=batch.pk).exclude(upstream_status__in=_ENDED_STATUSES).update(**changes)
    Batch.objects.filter(pk=batch.pk, in_progress_at__isnull=True).update(in_progress_at=now)
    if final == Batch.Status.COMPLETED:
        Batch.objects.filter(
            pk=batch.pk, status__in=(Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS)
        ).update(status=Batch.Status.FINALIZING, finalizing_at=now)
    batch.refresh_from_db()
    if final in (Batch.Status.COMPLETED, Batch.Status.EXPIRED):
        slots = list(range(len(requests)))
    else:
        slots = sorted(results)
    secret = spec.api_key
    for position, index in enumerate(slots):
        if position < batch.next_line:
            continue
        answer = _line_of(batch, position, requests[index], results.get(index), final, secret)
        _record(batch, position, answer)
    quota_release(hold_id=hold_id(batch.id))
    batch.refresh_from_db()
    batches._finalize(batch, final, errors=errors or None)
    return batches.Progress.DONE
