"""``/v1/files``: a project key's uploads (purpose ``batch``: the JSONL requests of a batch) and
the files its batches write (``batch_output``: results and errors).

A file belongs to the key's project and is reached only through ``File.objects.for_project``:
another project's id answers 404 in OpenAI's words, the same as a missing one. The bytes live
in Django's default storage under the tenant's path (``gateway.models.file_path``); the row
says who may read them.

An upload for a batch is read line by line before it is kept (``batch_input_check``): each
non-empty line one request (a JSON object with a unique ``custom_id``, ``method`` ``POST``,
a ``url`` a batch may call and a ``body`` object), at most ``GATEWAY_BATCH_MAX_LINES`` of
them. A bad file is refused whole, naming its first bad line, so a batch never starts on a
file that cannot run.

Sync, keyword-only; the views call it through ``sync_to_async`` (no database work in
``batch_input_check`` and ``file_store``, which run off the database thread).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from django.conf import settings
from django.core.files.base import File as DjangoFile
from django.db import transaction
from django.db.models import Q, QuerySet

from accounts.models import ApiKey, Project
from core.errors import ApiError, invalid_request

from .models import Batch, File

# What a batch may call; each has a runner in ``gateway.batches``.
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses")

# Defaults of the settings that bound an upload (``settings.GATEWAY_FILE_MAX_BYTES``,
# ``settings.GATEWAY_BATCH_MAX_LINES``): OpenAI's own limits are 200 MB and 50,000 requests.
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_MAX_LINES = 50_000

# Purposes OpenAI knows: any other is refused in its words, and of these only ``batch`` is
# accepted here (``batch_output`` files are written by batches, never uploaded).
UPLOAD_PURPOSES = ("batch",)

LIST_LIMIT_MAX = 10_000

# Batches whose input must stay: the runner reads it until the batch ends.
RUNNING = (
    Batch.Status.VALIDATING,
    Batch.Status.IN_PROGRESS,
    Batch.Status.FINALIZING,
    Batch.Status.CANCELLING,
)


def max_bytes() -> int:
    return int(getattr(settings, "GATEWAY_FILE_MAX_BYTES", DEFAULT_MAX_BYTES))


def max_lines() -> int:
    return int(getattr(settings, "GATEWAY_BATCH_MAX_LINES", DEFAULT_MAX_LINES))


# --- errors in OpenAI's words --------------------------------------------------------------------


def file_not_found(file_id: str) -> ApiError:
    return ApiError(
        404, f"No such File object: {file_id}", type="invalid_request_error", code=None, param="id"
    )


def _bad_line(number: int, message: str, code: str) -> ApiError:
    return invalid_request(f"Line {number} of the file: {message}", param="file", code=code)


# --- the lines of a batch's input --------------------------------------------------------------


@dataclass(frozen=True)
class BatchRequest:
    """One request of a batch input file: its place among the requests (``index``, from 0:
    what ``Batch.next_line`` counts) and on the page (``line``, from 1, blank lines counted)."""

    index: int
    line: int
    custom_id: str
    url: str
    body: dict[str, Any]


def parse_request_line(raw: bytes, *, line: int, index: int) -> BatchRequest:
    """One non-empty line, checked as OpenAI's batch input format has it; refusals name it."""
    try:
        item = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _bad_line(line, "this line is not valid JSON.", "invalid_json_line") from None
    if not isinstance(item, dict):
        raise _bad_line(line, "each line must be a JSON object.", "invalid_json_line")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _bad_line(line, "'custom_id' must be a non-empty string.", "invalid_custom_id")
    if item.get("method") != "POST":
        raise _bad_line(line, "'method' must be \"POST\".", "invalid_method")
    url = item.get("url")
    if url not in BATCH_ENDPOINTS:
        raise _bad_line(
            line,
            f"'url' must be one of {', '.join(BATCH_ENDPOINTS)}; got {json.dumps(url)}.",
            "invalid_url",
        )
    body = item.get("body")
    if not isinstance(body, dict):
        raise _bad_line(line, "'body' must be a JSON object.", "invalid_body")
    unknown = sorted(set(item) - {"custom_id", "method", "url", "body"})
    if unknown:
        raise _bad_line(line, f"unknown field '{unknown[0]}'.", "invalid_request_line")
    return BatchRequest(index=index, line=line, custom_id=custom_id, url=url, body=body)


def iter_requests(handle: IO[bytes]) -> Iterator[BatchRequest]:
    """The requests of an input file in order (blank lines skipped), each checked."""
    index = 0
    for number, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        yield parse_request_line(raw, line=number, index=index)
        index += 1


@dataclass(frozen=True)
class InputSummary:
    lines: int
    urls: frozenset[str]


def batch_input_check(handle: IO[bytes]) -> InputSummary:
    """Every line of an upload for a batch, or a 400 naming the first bad one. No database."""
    limit = max_lines()
    seen: dict[str, int] = {}
    urls: set[str] = set()
    count = 0
    for request in iter_requests(handle):
        if request.custom_id in seen:
            raise _bad_line(
                request.line,
                f"custom_id '{request.custom_id}' is used on line {seen[request.custom_id]} "
                "too; each request needs its own.",
                "duplicate_custom_id",
            )
        seen[request.custom_id] = request.line
        urls.add(request.url)
        count += 1
        if count > limit:
            raise _bad_line(
                request.line,
                f"a batch file may hold at most {limit:,} requests.",
                "too_many_requests",
            )
    if not count:
        raise invalid_request("The file holds no requests.", param="file", code="empty_file")
    return InputSummary(lines=count, urls=frozenset(urls))


# --- create ------------------------------------------------------------------------------------


def check_purpose(purpose: object) -> str:
    if purpose is None:
        raise invalid_request("Missing required parameter: 'purpose'.", param="purpose")
    if not isinstance(purpose, str) or purpose not in UPLOAD_PURPOSES:
        shown = purpose if isinstance(purpose, str) else None
        raise invalid_request(
            f"{shown!r} is not one of {list(UPLOAD_PURPOSES)!r} - 'purpose'",
            param="purpose",
        )
    return purpose


def check_upload(upload: DjangoFile | None, purpose: object) -> DjangoFile:
    """The multipart fields of ``POST /v1/files``, checked before anything is kept: the
    upload to keep."""
    check_purpose(purpose)
    if upload is None:
        raise invalid_request("'file' is a required property", param="file")
    limit = max_bytes()
    if upload.size is None or upload.size > limit:
        raise invalid_request(
            f"The file is too large: {upload.size or 0:,} bytes; at most {limit:,} are accepted.",
            param="file",
            code="file_too_large",
        )
    upload.seek(0)
    try:
        batch_input_check(upload)
    finally:
        upload.seek(0)
    return upload


def file_store(*, project: Project, key: ApiKey | None, upload: DjangoFile, purpose: str) -> File:
    """The upload's bytes written to storage under a new file's name; the row is not saved yet
    (``file_save``), so no database work happens here."""
    name = (getattr(upload, "name", "") or "").rsplit("/", 1)[-1][:255] or "upload.jsonl"
    stored = File(project=project, api_key=key, purpose=purpose, filename=name, bytes=upload.size)
    stored.file.save(name, upload, save=False)
    return stored


def file_save(stored: File) -> File:
    """Keep the row of a stored upload; its bytes go if the row cannot be written."""
    try:
        stored.save(force_insert=True)
    except BaseException:
        stored.file.delete(save=False)
        raise
    return stored


# --- read --------------------------------------------------------------------------------------


def file_get(*, project: Project, file_id: str) -> File:
    stored = File.objects.for_project(project).filter(pk=file_id).first()
    if stored is None:
        raise file_not_found(file_id)
    return stored


def _epoch(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def file_json(stored: File) -> dict[str, Any]:
    """OpenAI's file object."""
    return {
        "id": stored.id,
        "object": "file",
        "bytes": stored.bytes,
        "created_at": _epoch(stored.created_at),
        "filename": stored.filename,
        "purpose": stored.purpose,
        "status": "processed",
        "expires_at": _epoch(stored.expires_at),
    }


def _int_param(value: str | None, *, name: str, low: int, high: int, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise invalid_request(f"Invalid '{name}': expected an integer.", param=name) from None
    if not low <= number <= high:
        raise invalid_request(
            f"Invalid '{name}': {number} is not between {low} and {high}.", param=name
        )
    return number


def page_after(
    rows: QuerySet[Any], *, after: Any | None, descending: bool, limit: int
) -> tuple[list[Any], bool]:
    """One page of ``rows`` (ordered by created_at then id) after the row ``after``."""
    if after is not None:
        if descending:
            rows = rows.filter(
                Q(created_at__lt=after.created_at) | Q(created_at=after.created_at, id__lt=after.id)
            )
        else:
            rows = rows.filter(
                Q(created_at__gt=after.created_at) | Q(created_at=after.created_at, id__gt=after.id)
            )
    order = ("-created_at", "-id") if descending else ("created_at", "id")
    page = list(rows.order_by(*order)[: limit + 1])
    return page[:limit], len(page) > limit


def list_json(data: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def files_list(
    *,
    project: Project,
    purpose: str | None = None,
    limit: str | None = None,
    after: str | None = None,
    order: str | None = None,
) -> dict[str, Any]:
    """``GET /v1/files``: the project's files, newest first unless ``order=asc``."""
    count = _int_param(limit, name="limit", low=1, high=LIST_LIMIT_MAX, default=LIST_LIMIT_MAX)
    if order not in (None, "", "asc", "desc"):
        raise invalid_request("Invalid 'order': expected 'asc' or 'desc'.", param="order")
    rows = File.objects.for_project(project)
    if purpose:
        rows = rows.filter(purpose=purpose)
    cursor = None
    if after:
        cursor = File.objects.for_project(project).filter(pk=after).first()
        if cursor is None:
            raise file_not_found(after)
    page, has_more = page_after(rows, after=cursor, descending=order != "asc", limit=count)
    return list_json([file_json(stored) for stored in page], has_more=has_more)


def file_chunks(stored: File, *, size: int = 64 * 1024) -> Generator[bytes, None, None]:
    """The file's bytes, a piece at a time."""
    with stored.file.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk


# --- delete ------------------------------------------------------------------------------------


def file_delete(*, project: Project, file_id: str) -> dict[str, Any]:
    """``DELETE /v1/files/{id}``: the row, then (once committed) its bytes. A running batch's
    input is kept until the batch ends; an ended batch keeps its input's id, as OpenAI's do."""
    with transaction.atomic():
        stored = file_get(project=project, file_id=file_id)
        running = (
            Batch.objects.for_project(project)
            .filter(input_file=stored, status__in=RUNNING)
            .order_by("-created_at")
            .first()
        )
        if running is not None:
            raise ApiError(
                409,
                f"The file is the input of batch {running.id}, which is still running; "
                "cancel the batch first.",
                type="invalid_request_error",
                code="file_in_use",
                param="id",
            )
        name = stored.file.name
        storage = stored.file.storage
        stored.delete()
        if name:
            transaction.on_commit(lambda: storage.delete(name))
    return {"id": file_id, "object": "file", "deleted": True}
