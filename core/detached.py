"""Work that outlives the request that started it: a reply its client left, a settle shielded
from a cancelled caller, the upstream side of a stream.

One registry for all of it: each task runs in a fresh context (the request's thread-sensitive
executor ends with the request, and work still using it would fail) and is referenced until it
is done (the event loop keeps only weak references to tasks). ``wait_for_detached`` waits for
all of them: tests, and a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

from django.conf import settings
from django.utils import translation

T = TypeVar("T")

_detached: set[asyncio.Task[Any]] = set()


def run_detached(work: Coroutine[Any, Any, T], *, same_context: bool = False) -> asyncio.Task[T]:
    """Run ``work`` in a task of its own, beyond the request that asked for it.

    ``same_context``: keep the caller's context, for work that must finish in the caller's
    thread (its database connection) and that the caller still awaits, only shielded."""
    context = contextvars.copy_context() if same_context else contextvars.Context()
    if not same_context:
        # Nothing of the request comes along but its language: what the work says (an error
        # event, a saved reply's error) is in the language of the person who started it.
        context.run(translation.activate, translation.get_language() or settings.LANGUAGE_CODE)
    task = asyncio.get_running_loop().create_task(work, context=context)
    _detached.add(task)
    task.add_done_callback(_detached.discard)
    return task


async def wait_for_detached() -> None:
    """Wait until every detached task of this process has finished, those they start included."""
    while _detached:
        await asyncio.gather(*list(_detached), return_exceptions=True)
