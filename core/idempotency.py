"""``Idempotency-Key`` on POSTs that create billed work: ``/v1/chat/completions`` and the REST
API's message create, streamed or not.

The first request with a key runs and its answer is kept (JSON, or the Server-Sent Events it
streamed); a repeat within 24 hours gets the same answer and is not billed again; a repeat with
a different body gets 409, as does one that arrives while the first is still running. Keys are
per caller (a project API key, or a signed-in person). Only completed answers are kept:
refusals before any work, upstream failures (a stream that ended in an error event included),
server errors and a stream its client left before the end free the key, so a retry runs again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Model
from django.http import HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.utils.translation import gettext

from core.db import db_sync_to_async

from .errors import ServiceError, invalid_request
from .models import IdempotentRequest

REPLAY_WINDOW = timedelta(hours=24)
HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class Replay:
    status: int
    body: dict[str, Any] | None
    stream: str

    def response(self) -> HttpResponse:
        if self.body is None:
            response: HttpResponse = HttpResponse(
                self.stream, status=self.status, content_type="text/event-stream"
            )
        else:
            response = JsonResponse(self.body, status=self.status)
        response["Idempotent-Replayed"] = "true"
        return response


def _conflict(message: str, code: str) -> ServiceError:
    return ServiceError(message, code=code)


def _owner(caller: Model) -> dict[str, Any]:
    """The record's owner field: a person, or else a project API key (core knows no more of
    them than that they own the record)."""
    return {"user": caller} if isinstance(caller, AbstractBaseUser) else {"api_key": caller}


def idempotency_begin(*, caller: Model, key: str, fingerprint: bytes) -> Replay | IdempotentRequest:
    """A saved answer to replay, or the new record to finish once this request has run.
    ``fingerprint``: what makes two requests the same (the body, and the path if several
    endpoints share the caller's keys)."""
    key = key.strip()
    if not key or len(key) > 255:
        raise invalid_request(f"{HEADER} must be 1 to 255 characters.", param=None)
    digest = hashlib.sha256(fingerprint).hexdigest()
    owner = _owner(caller)
    with transaction.atomic():
        IdempotentRequest.objects.filter(
            **owner, key=key, created_at__lt=timezone.now() - REPLAY_WINDOW
        ).delete()
        existing = IdempotentRequest.objects.filter(**owner, key=key).first()
        if existing is None:
            try:
                with transaction.atomic():
                    return IdempotentRequest.objects.create(**owner, key=key, body_digest=digest)
            except IntegrityError:  # a concurrent first request won the race
                existing = IdempotentRequest.objects.get(**owner, key=key)
    if existing.body_digest != digest:
        raise _conflict(
            gettext("This %(header)s was used with a different request.") % {"header": HEADER},
            "idempotency_key_reused",
        )
    if existing.status_code is None:
        raise _conflict(
            gettext("A request with this %(header)s is still running; retry later.")
            % {"header": HEADER},
            "idempotency_request_in_progress",
        )
    return Replay(status=existing.status_code, body=existing.response, stream=existing.stream_body)


def idempotency_purge_expired() -> int:
    """Drop the answers past their 24 hours (a key used again is purged on its own; these are
    the ones nobody repeated). Returns how many."""
    deleted, _ = IdempotentRequest.objects.filter(
        created_at__lt=timezone.now() - REPLAY_WINDOW
    ).delete()
    return deleted


def idempotency_finish(
    *, record: IdempotentRequest, status: int, body: dict[str, Any] | None = None, stream: str = ""
) -> None:
    """Keep a completed answer (2xx). Anything else frees the key, so that asking again runs
    again: a refusal before any work (a budget since raised), an upstream failure, a server
    error."""
    if not 200 <= status < 300:
        record.delete()
        return
    IdempotentRequest.objects.filter(pk=record.pk).update(
        status_code=status, response=body, stream_body=stream
    )


def idempotency_abandon(*, record: IdempotentRequest) -> None:
    """Nothing worth replaying came of it: a repeat runs again."""
    record.delete()


async def recorded_stream(
    events: AsyncIterator[bytes],
    *,
    record: IdempotentRequest,
    status: int = 200,
    completed: Callable[[], bool] | None = None,
    on_left: Callable[[], object] | None = None,
) -> AsyncIterator[bytes]:
    """Pass a response's event stream through and keep it once it has been sent whole and
    ``completed()`` says it ended as it should (not with an error event). If the client leaves
    first, ``on_left`` decides (by default nothing is kept: a repeat runs)."""
    sent: list[bytes] = []
    whole = False
    try:
        async for chunk in events:
            sent.append(chunk)
            yield chunk
        whole = True
    finally:
        if whole and (completed is None or completed()):
            await db_sync_to_async(idempotency_finish)(
                record=record, status=status, stream=b"".join(sent).decode()
            )
        elif whole or on_left is None:
            await db_sync_to_async(idempotency_abandon)(record=record)
        else:
            on_left()


async def remember(
    record: IdempotentRequest,
    response: HttpResponseBase,
    *,
    completed: Callable[[], bool] | None = None,
) -> HttpResponseBase:
    """Keep ``response`` as the answer to ``record``'s key if it is a completed one: a 2xx, and
    for a stream one that ``completed()`` (kept as it is sent)."""
    if isinstance(response, StreamingHttpResponse):
        response.streaming_content = recorded_stream(
            cast(AsyncIterator[bytes], response.streaming_content),  # ours: async, of bytes
            record=record,
            status=response.status_code,
            completed=completed,
        )
        return response
    if not isinstance(response, HttpResponse):
        raise TypeError(f"Cannot keep a {type(response).__name__} for an Idempotency-Key.")
    await db_sync_to_async(idempotency_finish)(
        record=record, status=response.status_code, body=json.loads(response.content)
    )
    return response
