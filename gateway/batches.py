"""``/v1/batches``: a project key's batches, and the worker that runs their lines.

A batch is made over one endpoint (``/v1/chat/completions``, ``/v1/embeddings``,
``/v1/responses``) from an uploaded input file whose every line calls it. A Celery task
(``gateway.tasks.run_batch``) works through the lines in order, a slice at a time at low
priority; each line is one call through the one metered path, checked against the budgets and
rate limits like any call and priced at the model's batch price (``CallContext.batch``). The
answers go to the batch's output file and the failures to its error file, in OpenAI's shapes;
``Batch.cost`` is the sum of its lines' ledger rows.

A batch over ``/v1/chat/completions`` whose every line lives on one connection with
``supports_batches`` (and passes the checks ``/v1`` makes before a call) is instead handed to
that upstream's own Batch API on its first run (``gateway.upstream_batches``, from the top of
``_run``): held whole at the batch price, submitted, polled by the sweep, and its results
recorded by the rule below (one transaction per line writes its ledger row, whose request id is
fixed per batch and line, and moves ``next_line``); then its hold is released and its files are
written by ``_finalize``. A batch whose hold is refused, or that the upstream refuses, runs here
line by line.

Exactly once — the rule
-----------------------
A line is *recorded* by one transaction that (1) writes its ledger row (the runner's settle,
deferred to here: ``LineRun.settle``), (2) advances ``Batch.next_line`` past it only if it
still points at it, and (3) adds its counts and its row's cost to the batch. Its answer is
appended to the batch's work file (fsynced) just before, tagged with the line's index and its
call's request id. So, whenever a worker dies:

- before that transaction commits: no ledger row, ``next_line`` still names the line, and the
  next run calls it again; when the results are written, the answer of the attempt that
  committed (the last one appended for that index) is the one kept. The dead attempt's hold is
  given back when it expires (``billing.tasks.expire_holds``). The upstream may have answered
  the dead attempt too: that call is not billed to the project (it was never recorded).
- after it commits: the line is done, and nothing runs it again.

So each line has exactly one ledger row and one result line, none is skipped and none
repeated. Two runs of one batch at once (a redelivered message while the first still works)
are kept apart by a lease in the cache and, should the lease lapse, by the ``next_line`` check:
the run that finds the line recorded already rolls its own row back and stops.

A line refused by our own rate limit (nothing was sent) is not recorded: the run pauses, and
the sweep (``gateway.tasks.sweep_batches``, each minute) resumes the batch. A budget refusal
is recorded as an error line (its 429 body), and the batch goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import importlib
import json
import logging
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import IO, Any

from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.base import File as DjangoFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import ApiKey, Project
from billing import metering
from billing.metering import MeteredCall, Outcome
from billing.models import UsageRecord
from core.errors import ApiError, ServiceError, invalid_request
from providers.llm.base import Completion, ProviderError
from providers.specs import build_provider

from . import moderation
from . import services as gateway_services
from .files import (
    BATCH_ENDPOINTS,
    BatchRequest,
    file_not_found,
    iter_requests,
    list_json,
    page_after,
)
from .models import Batch, File, file_path

logger = logging.getLogger(__name__)

COMPLETION_WINDOW = timedelta(hours=24)
# A run works this long (seconds of work, not a deadline anyone waits on), then queues the
# rest behind whatever else is waiting: a long batch never holds a worker for hours.
SLICE_SECONDS = 30.0
# Who runs a batch holds this lease, renewed each line; a worker that died without giving it
# back lets the sweep start another run once it lapses.
LEASE_SECONDS = 600

FINAL = (
    Batch.Status.COMPLETED,
    Batch.Status.FAILED,
    Batch.Status.EXPIRED,
    Batch.Status.CANCELLED,
)
ACTIVE = (
    Batch.Status.VALIDATING,
    Batch.Status.IN_PROGRESS,
    Batch.Status.FINALIZING,
    Batch.Status.CANCELLING,
)

EXPIRED_LINE = "This request could not be executed before the completion window expired."

# --- one line ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineRun:
    """One line's call, made: its HTTP status and body as the endpoint would have answered,
    the request id of its ledger row (a fresh one when nothing was reserved), and ``settle``,
    which writes that row — called by the batch in the transaction that records the line (None:
    nothing to settle, or the runner settled itself)."""

    status_code: int
    body: dict[str, Any]
    request_id: str
    settle: Callable[[], UsageRecord] | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def error_code(self) -> str | None:
        error = self.body.get("error")
        return error.get("code") if isinstance(error, dict) else None


def refused_line(error: ServiceError) -> LineRun:
    """A line refused before anything was sent: its error as the endpoint answers it."""
    return LineRun(error.status, error.body(), uuid.uuid4().hex)


async def _complete_on_own_provider(call: MeteredCall, outcome: Outcome) -> Completion:
    # A provider of its own: the pooled ones belong to the server's event loop, and a task
    # runs its own (``asyncio.run``), as ``billing.metering.complete_blocking`` does.
    provider = build_provider(call.spec)
    try:
        return await metering.complete_capped(call, provider, outcome)
    finally:
        await provider.aclose()


def chat_line_run(*, key: ApiKey, body: dict[str, Any]) -> LineRun:
    """One ``/v1/chat/completions`` line: its input checked by the project's moderation (as
    ``/v1`` checks it), reserved (committed), called, answered; its settle left to the caller.
    Sync, for a task: the database work stays on the calling thread, only the moderation check
    and the upstream call run on event loops of their own."""
    encoded = json.dumps(body).encode()
    try:
        pending = moderation.chat_prepare_or_check(
            key=key, body=encoded, source=UsageRecord.Source.BATCH, batch=True
        )
        if isinstance(pending, moderation.CheckFirst):
            # Flagged: an error line (the flag recorded, nothing sent to the chat model).
            asyncio.run(moderation.check(pending))
            pending = gateway_services.chat_prepare(
                key=key, body=encoded, source=UsageRecord.Source.BATCH, batch=True
            )
    except ServiceError as error:
        return refused_line(error)
    call = pending
    outcome = Outcome()
    started = time.monotonic()
    answer: tuple[int, dict[str, Any]]
    try:
        completion = asyncio.run(_complete_on_own_provider(call.metered, outcome))
    except ProviderError as exc:  # every upstream failure, whatever it sent (metering)
        failure = metering.upstream_failure(exc)
        answer = (failure.status, failure.body())
    else:
        answer = (200, gateway_services.completion_json(call, completion, outcome))
    latency_ms = int((time.monotonic() - started) * 1000)
    return LineRun(
        *answer,
        request_id=call.metered.reservation.request_id.hex,
        settle=partial(metering.settle, call=call.metered, outcome=outcome, latency_ms=latency_ms),
    )


def chat_line(*, key: ApiKey, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """One ``/v1/chat/completions`` request of a batch, whole: called and settled."""
    run = chat_line_run(key=key, body=body)
    if run.settle is not None:
        run.settle()
    return run.status_code, run.body


# Each endpoint's runner (``(key=, body=) -> LineRun``, its settle deferred to the record:
# exactly once), looked up by name when a batch needs it; the embeddings and responses runners
# live in their own modules.
RUNNERS: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("gateway.batches", "chat_line_run"),
    "/v1/embeddings": ("gateway.embeddings", "embeddings_line_run"),
    "/v1/responses": ("gateway.responses", "responses_line_run"),
}

Runner = Callable[..., LineRun]


def runner_for(endpoint: str) -> Runner:
    """The runner of ``endpoint``'s lines."""
    module_name, name = RUNNERS[endpoint]
    runner: Runner = getattr(importlib.import_module(module_name), name)
    return runner


# --- create, read, cancel ----------------------------------------------------------------------


def batch_not_found(batch_id: str) -> ApiError:
    return ApiError(
        404,
        f"No batch found with id '{batch_id}'.",
        type="invalid_request_error",
        code=None,
        param="batch_id",
    )


CREATE_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata"}


def _check_metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_request("Invalid type for 'metadata': expected an object.", param="metadata")
    if len(value) > 16:
        raise invalid_request("Invalid 'metadata': at most 16 keys are allowed.", param="metadata")
    for name, text in value.items():
        if len(name) > 64:
            raise invalid_request(
                f"Invalid 'metadata': the key '{name[:64]}…' is longer than 64 characters.",
                param="metadata",
            )
        if not isinstance(text, str) or len(text) > 512:
            raise invalid_request(
                f"Invalid 'metadata.{name}': expected a string of at most 512 characters.",
                param=f"metadata.{name}",
            )
    return value


def _parse_create(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"null")
    except ValueError:
        raise invalid_request(
            "We could not parse the JSON body of your request.", param=None
        ) from None
    if not isinstance(data, dict):
        raise invalid_request("The body must be a JSON object.", param=None)
    unknown = sorted(set(data) - CREATE_FIELDS)
    if unknown:
        raise invalid_request(
            f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0]
        )
    for name in ("input_file_id", "endpoint", "completion_window"):
        if name not in data:
            raise invalid_request(f"Missing required parameter: '{name}'.", param=name)
        if not isinstance(data[name], str):
            raise invalid_request(f"Invalid type for '{name}': expected a string.", param=name)
    if data["endpoint"] not in BATCH_ENDPOINTS:
        raise invalid_request(
            f"Invalid value: '{data['endpoint']}'. Supported values are: "
            + ", ".join(f"'{e}'" for e in BATCH_ENDPOINTS)
            + ".",
            param="endpoint",
        )
    if data["completion_window"] != "24h":
        raise invalid_request(
            f"Invalid value: '{data['completion_window']}'. Supported values are: '24h'.",
            param="completion_window",
        )
    data["metadata"] = _check_metadata(data.get("metadata"))
    return data


def batch_check_input(*, stored: File, endpoint: str) -> tuple[int, str]:
    """The number of requests in ``stored``, each calling ``endpoint``, and the model the
    first names; or a 400 naming the first line that does not call it."""
    total = 0
    model = ""
    with stored.file.open("rb") as handle:
        for request in iter_requests(handle):
            if not model and isinstance(request.body.get("model"), str):
                model = request.body["model"][:200]
            if request.url != endpoint:
                raise invalid_request(
                    f"Line {request.line} of the input file calls {request.url}, not the batch's "
                    f"endpoint {endpoint}: every request of a batch calls its endpoint.",
                    param="input_file_id",
                    code="mismatched_endpoint",
                )
            total += 1
    return total, model


def batch_create(*, key: ApiKey, body: bytes) -> Batch:
    """``POST /v1/batches``: checked (the file is this project's, uploaded for a batch, every
    line calls the endpoint), kept, and queued to run once committed."""
    data = _parse_create(body)
    project = key.project
    endpoint = data["endpoint"]
    stored = File.objects.for_project(project).filter(pk=data["input_file_id"]).first()
    if stored is None:
        error = file_not_found(data["input_file_id"])
        error.param = "input_file_id"
        raise error
    if stored.purpose != File.Purpose.BATCH:
        raise invalid_request(
            f"The file {stored.id} was uploaded for '{stored.purpose}', not 'batch'.",
            param="input_file_id",
        )
    total, model = batch_check_input(stored=stored, endpoint=endpoint)
    with transaction.atomic():
        batch = Batch.objects.create(
            project=project,
            api_key=key,
            endpoint=endpoint,
            completion_window=data["completion_window"],
            input_file=stored,
            total=total,
            model=model,
            metadata=data["metadata"],
            expires_at=timezone.now() + COMPLETION_WINDOW,
        )
        enqueue_on_commit(batch.pk)
    return batch


def enqueue_on_commit(batch_id: str) -> None:
    from .tasks import enqueue_batch  # the tasks module imports this one

    transaction.on_commit(partial(enqueue_batch, batch_id))


def batch_get(*, project: Project, batch_id: str) -> Batch:
    batch = Batch.objects.for_project(project).filter(pk=batch_id).first()
    if batch is None:
        raise batch_not_found(batch_id)
    return batch


def batches_list(
    *, project: Project, after: str | None = None, limit: str | None = None
) -> dict[str, Any]:
    """``GET /v1/batches``: newest first, ``after`` a batch id of the previous page."""
    count = 20
    if limit not in (None, ""):
        try:
            count = int(limit)
        except ValueError:
            raise invalid_request("Invalid 'limit': expected an integer.", param="limit") from None
        if not 1 <= count <= 100:
            raise invalid_request(
                f"Invalid 'limit': {count} is not between 1 and 100.", param="limit"
            )
    cursor = None
    if after:
        cursor = Batch.objects.for_project(project).filter(pk=after).first()
        if cursor is None:
            error = batch_not_found(after)
            error.param = "after"
            raise error
    rows = Batch.objects.for_project(project)
    page, has_more = page_after(rows, after=cursor, descending=True, limit=count)
    return list_json([batch_json(batch) for batch in page], has_more=has_more)


def batch_cancel(*, project: Project, batch_id: str) -> Batch:
    """``POST /v1/batches/{id}/cancel``: ``cancelling`` now; the run stops before its next line
    and writes what was done (a batch no run holds is finished by the run queued here)."""
    with transaction.atomic():
        batch = batch_get(project=project, batch_id=batch_id)
        if batch.status in (Batch.Status.CANCELLING, Batch.Status.CANCELLED):
            return batch
        now = timezone.now()
        moved = (
            Batch.objects.for_project(project)
            .filter(pk=batch.pk, status__in=(Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS))
            .update(status=Batch.Status.CANCELLING, cancelling_at=now)
        )
        if not moved:
            raise ApiError(
                409,
                f"Cannot cancel a batch with status '{batch.status}'.",
                type="invalid_request_error",
                code=None,
            )
        enqueue_on_commit(batch.pk)
    batch.refresh_from_db()
    return batch


def _epoch(moment: Any) -> int | None:
    return None if moment is None else int(moment.timestamp())


def batch_json(batch: Batch) -> dict[str, Any]:
    """OpenAI's batch object."""
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": _epoch(batch.created_at),
        "in_progress_at": _epoch(batch.in_progress_at),
        "expires_at": _epoch(batch.expires_at),
        "finalizing_at": _epoch(batch.finalizing_at),
        "completed_at": _epoch(batch.completed_at),
        "failed_at": _epoch(batch.failed_at),
        "expired_at": _epoch(batch.expired_at),
        "cancelling_at": _epoch(batch.cancelling_at),
        "cancelled_at": _epoch(batch.cancelled_at),
        "request_counts": {
            "total": batch.total,
            "completed": batch.completed,
            "failed": batch.failed,
        },
        "metadata": batch.metadata or None,
        "model": batch.model or None,
        "usage": {
            "input_tokens": batch.input_tokens,
            "input_tokens_details": {"cached_tokens": batch.cached_tokens},
            "output_tokens": batch.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": batch.input_tokens + batch.output_tokens,
        },
    }


def batch_files(batch: Batch) -> list[File]:
    """The files of a batch a member may download from its page: its input and results."""
    ids = [i for i in (batch.input_file_id, batch.output_file_id, batch.error_file_id) if i]
    files = File.objects.for_project(batch.project_id).in_bulk(ids)
    return [files[i] for i in ids if i in files]


# --- the run -----------------------------------------------------------------------------------


class Progress(enum.Enum):
    DONE = "done"  # finished (or nothing to do): nothing to queue
    MORE = "more"  # the slice ended with lines left: queue the next
    PAUSED = "paused"  # our rate limit: the sweep resumes it
    BUSY = "busy"  # another run holds the batch


def _lease_key(batch_id: str) -> str:
    return f"gateway:batch-run:{batch_id}"


def queued_key(batch_id: str) -> str:
    return f"gateway:batch-queued:{batch_id}"


def lease_held(batch_id: str) -> bool:
    return cache.get(_lease_key(batch_id)) is not None


@contextlib.contextmanager
def _lease(batch_id: str) -> Iterator[bool]:
    token = secrets.token_hex(8)
    taken = cache.add(_lease_key(batch_id), token, LEASE_SECONDS)
    try:
        yield taken
    finally:
        if taken and cache.get(_lease_key(batch_id)) == token:
            cache.delete(_lease_key(batch_id))


def _keep_lease(batch_id: str) -> None:
    cache.touch(_lease_key(batch_id), LEASE_SECONDS)


class _Overtaken(Exception):
    """Another run recorded this line first."""


def work_name(batch: Batch) -> str:
    """Where a batch's answers gather while it runs (results are written from here)."""
    return f"files/o{batch.project.organization_id}/p{batch.project_id}/{batch.id}.work.jsonl"


def _dumps(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate an upstream sent: escaped, still JSON
        return json.dumps(value, separators=(",", ":")).encode()


def _append(name: str, record: dict[str, Any]) -> None:
    """One record at the end of the work file, on disk before the line is recorded. Each
    starts on a new line, so a record cut off by a crash never spoils the next."""
    if not default_storage.exists(name):
        default_storage.save(name, ContentFile(b""))
    with default_storage.open(name, "ab") as handle:
        handle.write(b"\n" + _dumps(record))
        handle.flush()
        with contextlib.suppress(AttributeError, OSError, ValueError):
            os.fsync(handle.fileno())


def _request_line_id(batch_id: str, index: int) -> str:
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{index}".encode()).hexdigest()[:32]


def _output_line(batch_id: str, request: BatchRequest, run: LineRun) -> dict[str, Any]:
    """A line of the output file (a success) or of the error file, as OpenAI writes them."""
    line: dict[str, Any] = {
        "id": _request_line_id(batch_id, request.index),
        "custom_id": request.custom_id,
        "response": {
            "status_code": run.status_code,
            "request_id": run.request_id,
            "body": run.body,
        },
        "error": None,
    }
    if not run.ok:
        error = run.body.get("error")
        error = error if isinstance(error, dict) else {}
        line["error"] = {
            "code": error.get("code") or error.get("type") or "error",
            "message": error.get("message") or "",
        }
    return line


def record_line(
    batch: Batch,
    *,
    index: int,
    ok: bool,
    request_id: str,
    line: dict[str, Any],
    settle: Callable[[], UsageRecord] | None,
) -> None:
    """Line ``index`` done (here, or collected from an upstream's batch): its answer appended,
    then in one transaction its ledger row written (``settle``), ``next_line`` moved past it
    and its counts, tokens and cost added (see the rule above)."""
    name = work_name(batch)
    _append(name, {"index": index, "ok": ok, "request_id": request_id, "line": line})
    try:
        with transaction.atomic():
            current = (
                Batch.objects.select_for_update()
                .filter(pk=batch.pk)
                .values_list("next_line", "cost")
                .first()
            )
            if current is None or current[0] != index:
                raise _Overtaken
            row = settle() if settle is not None else None
            Batch.objects.filter(pk=batch.pk).update(
                next_line=index + 1,
                completed=F("completed") + (1 if ok else 0),
                failed=F("failed") + (0 if ok else 1),
                cost=current[1] + (row.cost if row is not None else Decimal(0)),
                input_tokens=F("input_tokens") + (row.prompt_tokens if row is not None else 0),
                cached_tokens=F("cached_tokens") + (row.cached_tokens if row is not None else 0),
                output_tokens=F("output_tokens")
                + (row.completion_tokens if row is not None else 0),
            )
    except _Overtaken:
        # This attempt's answer must not be the one kept: the recorded one is.
        _append(name, {"index": index, "void": request_id})
        raise


def _record(batch: Batch, request: BatchRequest, run: LineRun) -> None:
    record_line(
        batch,
        index=request.index,
        ok=run.ok,
        request_id=run.request_id,
        line=_output_line(batch.id, request, run),
        settle=run.settle,
    )


def _run_line(runner: Runner, key: ApiKey, request: BatchRequest) -> LineRun | None:
    """The line's call; None when our own rate limit refused it (nothing was sent)."""
    try:
        run = runner(key=key, body=request.body)
    except ServiceError as error:
        run = refused_line(error)
    except Exception:  # a bug of ours fails the line, not the batch
        logger.exception("batch line %s failed", request.custom_id)
        run = refused_line(ServiceError(code="internal_error"))
    if run.settle is None and run.error_code == "rate_limit_exceeded":
        return None
    return run


def _load(batch_id: str) -> Batch | None:
    return (
        Batch.objects.select_related("project", "input_file", "api_key__project")
        .filter(pk=batch_id)
        .first()
    )


def batch_run(
    *, batch_id: str, seconds: float = SLICE_SECONDS, lines: int | None = None
) -> Progress:
    """Work through the batch's lines from ``next_line``: for ``seconds`` of work (or
    ``lines`` lines), then say whether more is left. Safe to run twice, at once or after a
    crash (the rule above)."""
    cache.delete(queued_key(batch_id))  # this run is the one that was queued
    with _lease(batch_id) as taken:
        if not taken:
            return Progress.BUSY
        batch = _load(batch_id)
        if batch is None or batch.status in FINAL:
            return Progress.DONE
        try:
            return _run(batch, seconds=seconds, lines=lines)
        except _Overtaken:
            return Progress.DONE
        except ApiError as error:  # the input file no longer reads as it did when checked
            _finalize(batch, Batch.Status.FAILED, errors=[_error_item(error)])
            return Progress.DONE
        except FileNotFoundError:  # its bytes are gone from storage: nothing can run
            missing = ServiceError("The batch's input file can no longer be read.")
            _finalize(batch, Batch.Status.FAILED, errors=[_error_item(missing)])
            return Progress.DONE


def _error_item(error: ServiceError, *, line: int | None = None) -> dict[str, Any]:
    return {"code": error.wire_code, "message": error.message, "param": error.param, "line": line}


def _expired(batch: Batch) -> bool:
    return batch.expires_at is not None and timezone.now() >= batch.expires_at


def _run(batch: Batch, *, seconds: float, lines: int | None) -> Progress:
    from .upstream_batches import batch_run_upstream  # it imports this module

    handed_off = batch_run_upstream(batch)  # None: it runs here, line by line
    if handed_off is not None:
        return handed_off
    if batch.status == Batch.Status.CANCELLING:
        _finalize(batch, Batch.Status.CANCELLED)
        return Progress.DONE
    if batch.status == Batch.Status.FINALIZING:  # a run died writing the results
        _finalize(batch, Batch.Status.COMPLETED)
        return Progress.DONE
    if _expired(batch):
        _finalize(batch, Batch.Status.EXPIRED)
        return Progress.DONE
    key = batch.api_key
    if key is None or not key.is_active:
        error = ServiceError(
            "The API key that made this batch was revoked, expired or deleted.",
            code="invalid_api_key",
        )
        _finalize(batch, Batch.Status.FAILED, errors=[_error_item(error)])
        return Progress.DONE
    runner = runner_for(batch.endpoint)
    if batch.status == Batch.Status.VALIDATING:
        Batch.objects.filter(pk=batch.pk, status=Batch.Status.VALIDATING).update(
            status=Batch.Status.IN_PROGRESS, in_progress_at=timezone.now()
        )
    started = time.monotonic()
    ran = 0
    with open_input(batch) as handle:
        for request in iter_requests(handle):
            if request.index < batch.next_line:
                continue
            state = Batch.objects.filter(pk=batch.pk).values_list("status", "next_line").first()
            if state is None:
                return Progress.DONE
            if state[0] == Batch.Status.CANCELLING:
                _finalize(batch, Batch.Status.CANCELLED)
                return Progress.DONE
            if state[0] != Batch.Status.IN_PROGRESS or state[1] != request.index:
                return Progress.DONE  # another run has moved it on
            if _expired(batch):
                _finalize(batch, Batch.Status.EXPIRED)
                return Progress.DONE
            if ran and (
                (lines is not None and ran >= lines) or time.monotonic() - started >= seconds
            ):
                return Progress.MORE
            _keep_lease(batch.id)
            run = _run_line(runner, key, request)
            if run is None:
                return Progress.PAUSED
            _record(batch, request, run)
            ran += 1
    _finalize(batch, Batch.Status.COMPLETED)
    return Progress.DONE


# --- results -----------------------------------------------------------------------------------


def _result_file_id(batch_id: str, kind: str) -> str:
    # Fixed per batch: a finalize that died before its commit writes the same names again.
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:32]


def _kept_answers(name: str, below: int) -> dict[int, bytes]:
    """For each recorded index (under ``below``), the line of the attempt that was recorded:
    the last one appended that no later record voids."""
    if not default_storage.exists(name):
        return {}
    attempts: dict[int, list[tuple[str, bytes]]] = {}
    voided: set[str] = set()
    with default_storage.open(name, "rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                index = int(record["index"])
            except (ValueError, KeyError, TypeError):
                continue  # cut off by a crash while it was written
            if "void" in record:
                voided.add(str(record["void"]))
            elif index < below:
                attempts.setdefault(index, []).append(
                    (str(record.get("request_id")), _dumps(record["line"]))
                )
    kept: dict[int, bytes] = {}
    for index, tries in attempts.items():
        for request_id, line in reversed(tries):
            if request_id not in voided:
                kept[index] = line
                break
    return kept


def open_input(batch: Batch) -> IO[bytes]:
    """The batch's input file, to read. Only an ended batch's input can be deleted; a running
    one whose bytes or row are gone anyway fails (``batch_run``: FileNotFoundError)."""
    if batch.input_file is None:
        raise FileNotFoundError(batch.input_file_id)
    handle: IO[bytes] = batch.input_file.file.open("rb")
    return handle


def _expired_lines(batch: Batch, start: int) -> Iterator[bytes]:
    with open_input(batch) as handle:
        for request in iter_requests(handle):
            if request.index >= start:
                yield _dumps(
                    {
                        "id": _request_line_id(batch.id, request.index),
                        "custom_id": request.custom_id,
                        "response": None,
                        "error": {"code": "batch_expired", "message": EXPIRED_LINE},
                    }
                )


def _result_file(batch: Batch, kind: str, handle: IO[bytes], size: int) -> File:
    stored = File(
        id=_result_file_id(batch.id, kind),
        project=batch.project,
        api_key_id=batch.api_key_id,
        purpose=File.Purpose.BATCH_OUTPUT,
        filename=f"{batch.id}_{kind}.jsonl",
        bytes=size,
    )
    default_storage.delete(file_path(stored, stored.filename))
    handle.seek(0)
    stored.file.save(stored.filename, DjangoFile(handle), save=False)
    return stored


def _finalize(batch: Batch, status: str, *, errors: list[dict[str, Any]] | None = None) -> None:
    """Write the output and error files from what was recorded, then end the batch with
    ``status`` (under the lease: one finalize at a time)."""
    now = timezone.now()
    if not Batch.objects.filter(pk=batch.pk, status__in=ACTIVE).exists():
        return  # ended meanwhile: its files are written
    if status == Batch.Status.COMPLETED:
        Batch.objects.filter(pk=batch.pk, status=Batch.Status.IN_PROGRESS).update(
            status=Batch.Status.FINALIZING, finalizing_at=now
        )
    next_line = Batch.objects.filter(pk=batch.pk).values_list("next_line", flat=True).first()
    if next_line is None:
        return
    name = work_name(batch)
    kept = _kept_answers(name, next_line)
    made: dict[str, File] = {}
    with (
        tempfile.TemporaryFile() as output,
        tempfile.TemporaryFile() as failures,
    ):
        sizes = {"output": 0, "error": 0}
        for index in range(next_line):
            line = kept.get(index)
            if line is None:  # never expected: the work file lost a recorded answer
                logger.error("batch %s: the answer of line index %s is missing", batch.id, index)
                line = _dumps(
                    {
                        "id": _request_line_id(batch.id, index),
                        "custom_id": None,
                        "response": None,
                        "error": {"code": "internal_error", "message": "The answer was lost."},
                    }
                )
            ok = json.loads(line).get("error") is None
            target, kind = (output, "output") if ok else (failures, "error")
            target.write(line + b"\n")
            sizes[kind] += len(line) + 1
        if status == Batch.Status.EXPIRED:
            for line in _expired_lines(batch, next_line):
                failures.write(line + b"\n")
                sizes["error"] += len(line) + 1
        for kind, handle in (("output", output), ("error", failures)):
            if sizes[kind]:
                made[kind] = _result_file(batch, kind, handle, sizes[kind])
    stamp = {
        Batch.Status.COMPLETED: "completed_at",
        Batch.Status.CANCELLED: "cancelled_at",
        Batch.Status.EXPIRED: "expired_at",
        Batch.Status.FAILED: "failed_at",
    }[Batch.Status(status)]
    try:
        with transaction.atomic():
            for stored in made.values():
                stored.save(force_insert=True)
            changes: dict[str, Any] = {
                "status": status,
                stamp: now,
                "output_file": made.get("output"),
                "error_file": made.get("error"),
            }
            if errors is not None:
                changes["errors"] = errors
            ended = Batch.objects.filter(pk=batch.pk, status__in=ACTIVE).update(**changes)
            if not ended:
                raise _Overtaken
            transaction.on_commit(partial(default_storage.delete, name))
    except BaseException:
        for stored in made.values():
            stored.file.delete(save=False)
        raise


# --- the sweep ---------------------------------------------------------------------------------


def batches_to_resume() -> list[str]:
    """Batches not finished that no run holds nor is queued for: a worker died, a message was
    lost, a run paused for a rate limit, or the window ran out while none ran. (Across
    projects: the beat's housekeeping, like expiring holds.)"""
    ids = Batch.objects.filter(status__in=ACTIVE).values_list("id", flat=True)
    return [
        batch_id
        for batch_id in ids
        if not lease_held(batch_id) and cache.get(queued_key(batch_id)) is None
    ]
