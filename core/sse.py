"""Server-Sent Events: the bytes of one event, as the REST API's streams and ``/v1`` send them."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def sse_event(event: str, data: Any) -> bytes:
    """A named event (the REST API's message stream: ``event: delta`` …)."""
    return f"event: {event}\ndata: {_json(data)}\n\n".encode()


def sse_data(data: Any) -> bytes:
    """An unnamed event, as OpenAI streams them (``data: {...}``)."""
    return b"data: " + _json(data).encode() + b"\n\n"
