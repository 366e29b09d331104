"""``/v1/files`` and ``/v1/batches``, authenticated by a project key like
``/v1/chat/completions`` (``gateway.views``: OpenAI's error words and shapes).

Thin: the key check and the database work go to the database threads, reading an upload (its
lines checked, its bytes stored) to a thread of its own, so the event loop and the database
thread never wait on a large file. Reading needs the ``chat`` or ``read`` scope; uploading,
deleting, creating and cancelling batches the ``chat`` scope (a batch makes model calls).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import SuspiciousOperation
from django.http import HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.http.multipartparser import MultiPartParserError
from django.utils.http import content_disposition_header
from drf_spectacular.utils import extend_schema
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request

from accounts.models import ApiKey
from core.db import db_sync_to_async
from core.errors import ServiceError, invalid_request
from core.schema import OPENAI_ERROR

from . import batches, files
from .models import Batch, File
from .schema_files import (
    BATCH_CREATE_REQUEST,
    BATCH_LIST,
    BATCH_LIST_PARAMETERS,
    BATCH_OBJECT,
    FILE_CONTENT,
    FILE_DELETED,
    FILE_LIST,
    FILE_LIST_PARAMETERS,
    FILE_OBJECT,
    FILE_UPLOAD,
)
from .services import gateway_authenticate
from .views import KEY_AUTH, OpenAIEndpoint, error_response

READ = ("chat", "read")
WRITE = ("chat",)
TAGS = ["OpenAI-compatible"]


def _errors(*statuses: int) -> dict[int, Any]:
    return {status: OPENAI_ERROR for status in (401, 403, *statuses)}


def _key(request: Request, scopes: tuple[str, ...]) -> ApiKey:
    return gateway_authenticate(authorization=request.headers.get("Authorization"), scopes=scopes)


# --- files -------------------------------------------------------------------------------------


def _receive(request: Request, key: ApiKey) -> File:
    """The upload read, checked and stored (no database: not on the database thread)."""
    django_request = request._request
    try:
        upload = django_request.FILES.get("file")
        purpose = django_request.POST.get("purpose")
    except (MultiPartParserError, SuspiciousOperation):
        raise invalid_request(
            "The body must be multipart/form-data with 'file' and 'purpose'.", param=None
        ) from None
    checked = files.check_upload(upload, purpose)
    return files.file_store(project=key.project, key=key, upload=checked, purpose=str(purpose))


async def _json(work: Callable[[], dict[str, Any]]) -> HttpResponse:
    """``work`` on the database thread, answered as JSON, or its refusal in OpenAI's shape."""
    try:
        return JsonResponse(await db_sync_to_async(work)())
    except ServiceError as error:
        return error_response(error)


class FileListView(OpenAIEndpoint):
    parser_classes = [MultiPartParser]  # what the schema documents; Django reads the form

    @extend_schema(
        operation_id="v1_files_list",
        auth=KEY_AUTH,
        parameters=FILE_LIST_PARAMETERS,
        responses={200: FILE_LIST, **_errors(400, 404)},
        tags=TAGS,
    )
    async def get(self, request: Request) -> HttpResponse:
        query = request.query_params

        def listing() -> dict[str, Any]:
            key = _key(request, READ)
            return files.files_list(
                project=key.project,
                purpose=query.get("purpose"),
                limit=query.get("limit"),
                after=query.get("after"),
                order=query.get("order"),
            )

        return await _json(listing)

    @extend_schema(
        operation_id="v1_files_create",
        auth=KEY_AUTH,
        request={"multipart/form-data": FILE_UPLOAD},
        responses={200: FILE_OBJECT, **_errors(400)},
        tags=TAGS,
        description="Upload a JSONL file for a batch (purpose batch). Each non-empty line is "
        "checked; a bad file is refused naming its first bad line.",
    )
    async def post(self, request: Request) -> HttpResponse:
        try:
            key = await db_sync_to_async(_key)(request, WRITE)
            stored = await sync_to_async(_receive, thread_sensitive=False)(request, key)
            await db_sync_to_async(files.file_save)(stored)
        except ServiceError as error:
            return error_response(error)
        return JsonResponse(files.file_json(stored))


class FileDetailView(OpenAIEndpoint):
    @extend_schema(
        operation_id="v1_files_retrieve",
        auth=KEY_AUTH,
        responses={200: FILE_OBJECT, **_errors(404)},
        tags=TAGS,
    )
    async def get(self, request: Request, file_id: str) -> HttpResponse:
        def read() -> File:
            return files.file_get(project=_key(request, READ).project, file_id=file_id)

        try:
            stored = await db_sync_to_async(read)()
        except ServiceError as error:
            return error_response(error)
        return JsonResponse(files.file_json(stored))

    @extend_schema(
        operation_id="v1_files_delete",
        auth=KEY_AUTH,
        responses={200: FILE_DELETED, **_errors(400, 404, 409)},
        tags=TAGS,
        description="A batch's input file cannot be deleted while the batch runs (409).",
    )
    async def delete(self, request: Request, file_id: str) -> HttpResponse:
        def delete() -> dict[str, Any]:
            return files.file_delete(project=_key(request, WRITE).project, file_id=file_id)

        return await _json(delete)


async def _chunks(stored: File) -> AsyncIterator[bytes]:
    """The file's bytes without holding the event loop: each read on a thread."""
    pieces = files.file_chunks(stored)

    def read() -> bytes | None:
        return next(pieces, None)

    try:
        while (piece := await sync_to_async(read, thread_sensitive=False)()) is not None:
            yield piece
    finally:
        await sync_to_async(pieces.close, thread_sensitive=False)()


class FileContentView(OpenAIEndpoint):
    @extend_schema(
        operation_id="v1_files_content",
        auth=KEY_AUTH,
        responses={(200, "application/octet-stream"): FILE_CONTENT, **_errors(404)},
        tags=TAGS,
    )
    async def get(self, request: Request, file_id: str) -> HttpResponseBase:
        def read() -> File:
            return files.file_get(project=_key(request, READ).project, file_id=file_id)

        try:
            stored = await db_sync_to_async(read)()
        except ServiceError as error:
            return error_response(error)
        response = StreamingHttpResponse(_chunks(stored), content_type="application/octet-stream")
        response["Content-Length"] = str(stored.bytes)
        response["Content-Disposition"] = content_disposition_header(True, stored.filename) or (
            "attachment"
        )
        response["X-Content-Type-Options"] = "nosniff"
        return response


# --- batches -----------------------------------------------------------------------------------


class BatchListView(OpenAIEndpoint):
    @extend_schema(
        operation_id="v1_batches_list",
        auth=KEY_AUTH,
        parameters=BATCH_LIST_PARAMETERS,
        responses={200: BATCH_LIST, **_errors(400, 404)},
        tags=TAGS,
    )
    async def get(self, request: Request) -> HttpResponse:
        query = request.query_params

        def listing() -> dict[str, Any]:
            return batches.batches_list(
                project=_key(request, READ).project,
                after=query.get("after"),
                limit=query.get("limit"),
            )

        return await _json(listing)

    @extend_schema(
        operation_id="v1_batches_create",
        auth=KEY_AUTH,
        request=BATCH_CREATE_REQUEST,
        responses={200: BATCH_OBJECT, **_errors(400, 404)},
        tags=TAGS,
        description="Run every line of an uploaded file (purpose batch) through one endpoint, "
        "at low priority and the batch price; results and errors go to files.",
    )
    async def post(self, request: Request) -> HttpResponse:
        body = request.body

        def create() -> dict[str, Any]:
            return batches.batch_json(batches.batch_create(key=_key(request, WRITE), body=body))

        return await _json(create)


class BatchDetailView(OpenAIEndpoint):
    @extend_schema(
        operation_id="v1_batches_retrieve",
        auth=KEY_AUTH,
        responses={200: BATCH_OBJECT, **_errors(404)},
        tags=TAGS,
    )
    async def get(self, request: Request, batch_id: str) -> HttpResponse:
        def read() -> dict[str, Any]:
            batch = batches.batch_get(project=_key(request, READ).project, batch_id=batch_id)
            return batches.batch_json(batch)

        return await _json(read)


class BatchCancelView(OpenAIEndpoint):
    @extend_schema(
        operation_id="v1_batches_cancel",
        auth=KEY_AUTH,
        request=None,
        responses={200: BATCH_OBJECT, **_errors(404, 409)},
        tags=TAGS,
        description="Stop before the next line; the batch ends cancelled with the results so "
        "far. A batch that has ended cannot be cancelled (409).",
    )
    async def post(self, request: Request, batch_id: str) -> HttpResponse:
        def cancel() -> Batch:
            return batches.batch_cancel(project=_key(request, WRITE).project, batch_id=batch_id)

        try:
            batch = await db_sync_to_async(cancel)()
        except ServiceError as error:
            return error_response(error)
        return JsonResponse(batches.batch_json(batch))
