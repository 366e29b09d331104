"""``Idempotency-Key`` on POSTs that create billed work (``/v1/chat/completions``).

The first request with a key runs and its answer is kept; a repeat within 24 hours gets the
same answer and is not billed again; a repeat with a different body gets 409, as does one that
arrives while the first is still running.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import ApiKey

from .gateway_services import GatewayError, invalid_request
from .models import IdempotentRequest

REPLAY_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class Replay:
    status: int
    body: dict[str, Any]


def _conflict(message: str, code: str) -> GatewayError:
    return GatewayError(409, message, type="invalid_request_error", code=code, param=None)


def idempotency_begin(
    *, api_key: ApiKey, key: str, body: bytes, stream: bool
) -> Replay | IdempotentRequest:
    """A saved answer to replay, or the new record to finish once this request has run."""
    key = key.strip()
    if not key or len(key) > 255:
        raise invalid_request("Idempotency-Key must be 1 to 255 characters.", param=None)
    if stream:
        raise invalid_request(
            "Idempotency-Key is supported for non-streaming requests only.", param="stream"
        )
    digest = hashlib.sha256(body).hexdigest()
    with transaction.atomic():
        IdempotentRequest.objects.filter(
            api_key=api_key, key=key, created_at__lt=timezone.now() - REPLAY_WINDOW
        ).delete()
        existing = IdempotentRequest.objects.filter(api_key=api_key, key=key).first()
        if existing is None:
            try:
                with transaction.atomic():
                    return IdempotentRequest.objects.create(
                        api_key=api_key, key=key, body_digest=digest
                    )
            except IntegrityError:  # a concurrent first request won the race
                existing = IdempotentRequest.objects.get(api_key=api_key, key=key)
    if existing.body_digest != digest:
        raise _conflict(
            "This Idempotency-Key was used with a different request body.",
            "idempotency_key_reused",
        )
    if existing.status_code is None:
        raise _conflict(
            "A request with this Idempotency-Key is still running; retry later.",
            "idempotency_request_in_progress",
        )
    return Replay(status=existing.status_code, body=existing.response)


def idempotency_finish(*, record: IdempotentRequest, status: int, body: dict[str, Any]) -> None:
    """Keep the answer; a server error is not kept, so the client may try again."""
    if status >= 500:
        record.delete()
        return
    IdempotentRequest.objects.filter(pk=record.pk).update(status_code=status, response=body)
