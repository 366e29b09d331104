"""A streamed answer whose producing side (an upstream call, which owns its settle) runs in a
task of its own and hands its events over a queue: the HTTP response only iterates them.

Its first event is awaited before the response starts, so a call refused upstream answers with
an HTTP error status (``Failed``) rather than a broken stream; after that, the producing task
ends in every case — finished, failed, or its client gone (then cancelled) — and the response
waits for it, so that the settle is done before the stream's last byte.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Generic, TypeVar

from .detached import run_detached
from .errors import ServiceError

logger = logging.getLogger(__name__)

E = TypeVar("E")


@dataclass(frozen=True)
class Failed:
    """The producing side failed before its first event: the answer is this error."""

    error: ServiceError


class ProducedStream(Generic[E]):
    """Subclasses write ``_produce`` (put events, or ``Failed`` first, on ``_events``) and an
    iterator of bytes that reads from ``_first`` on and calls ``_stop`` in its ``finally``.
    ``completed`` says whether the stream ended as it should (set by the subclass)."""

    def __init__(self, name: str) -> None:
        self.name = name  # for the log: the call's id
        self.completed = False
        self._events: asyncio.Queue[E | Failed] = asyncio.Queue()
        self._first: E | Failed | None = None
        self._task: asyncio.Task[None] | None = None

    async def _produce(self) -> None:
        raise NotImplementedError

    async def open(self) -> None:
        """Start the producing side and wait for its first event; raise its error if it
        failed before any."""
        self._task = run_detached(self._produce())
        try:
            self._first = await self._events.get()
        except BaseException:
            await self._stop(cancel=True)
            raise
        if isinstance(self._first, Failed):
            await self._stop(cancel=False)
            raise self._first.error

    async def _stop(self, *, cancel: bool) -> None:
        """Wait for the producing side to end (settled), cancelling it first if asked."""
        if self._task is None:
            return
        if cancel:
            self._task.cancel()
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            # Cancelled ourselves: the task still settles on its own. Otherwise the task's
            # own cancellation ended it — expected.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception:
            # The producing side failed where it should not (its settle, a bug): logged here;
            # the client's answer goes on.
            logger.exception("the upstream side of %s failed", self.name)
