"""Periodic upkeep of what core keeps."""

import logging

from celery import shared_task

from .idempotency import idempotency_purge_expired

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def purge_idempotency_records() -> None:
    count = idempotency_purge_expired()
    if count:
        logger.info("purged %s expired Idempotency-Key answers", count)


# Its name before it moved here from chat: tasks already queued (and a beat schedule not yet
# updated) still name it so. Keep until no broker can hold such a message any more.
shared_task(name="chat.tasks.purge_idempotency_records", ignore_result=True)(
    purge_idempotency_records.run
)
