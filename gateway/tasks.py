"""Batches, run off the request path at low priority: a slice of lines per task, then the rest
queued behind whatever else waits; a beat sweep resumes what no worker runs.

A batch handed to its connection's own Batch API (``gateway.upstream_batches``) is run by the
same task: a run submits it, then each run the sweep queues polls the upstream, and the run
that finds it ended collects its results. Between two polls no worker holds it.

Low priority, on every broker: a run works ``batches.SLICE_SECONDS`` and queues its next
slice at the back of the queue, so a worker (the embedded profile's one ``--pool=solo``
worker) does the titles, alerts and summaries queued meanwhile between two slices. Production
may also give batches a queue and workers of their own: the environment variable
``CELERY_BATCH_QUEUE`` (``CELERY_TASK_ROUTES`` in config/settings/base.py).
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.core.cache import cache

from . import batches

logger = logging.getLogger(__name__)


def enqueue_batch(batch_id: str) -> None:
    """Queue a run of the batch (called on commit). The mark tells the sweep one is queued."""
    cache.set(batches.queued_key(batch_id), 1, batches.LEASE_SECONDS)
    run_batch.delay(batch_id)


# acks_late and reject_on_worker_lost: a worker that dies mid-slice leaves the message to be
# delivered again, and the run goes on from ``Batch.next_line`` (idempotent: gateway.batches).
@shared_task(ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def run_batch(batch_id: str) -> None:
    try:
        progress = batches.batch_run(batch_id=batch_id)
    except Exception:  # the task boundary: the sweep tries again in a minute
        logger.exception("batch %s: the run failed", batch_id)
        return
    if progress is batches.Progress.MORE:
        enqueue_batch(batch_id)


@shared_task(ignore_result=True)
def sweep_batches() -> int:
    """Celery beat: queue a run of each unfinished batch no worker runs (one that died, one
    paused by a rate limit, one past its window, one handed to its upstream: that run polls
    it)."""
    waiting = batches.batches_to_resume()
    for batch_id in waiting:
        enqueue_batch(batch_id)
    return len(waiting)
