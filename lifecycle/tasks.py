"""Daily upkeep (Celery beat): retention's purge, and organizations whose grace has passed.

Both are idempotent: a run that died half way is finished by the next, and a second run the
same day finds nothing to do."""

import logging

from celery import shared_task

from . import services

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def purge_expired_conversations() -> int:
    count = services.retention_purge()
    if count:
        logger.info("retention purged %s conversations", count)
    return count


@shared_task(ignore_result=True)
def delete_due_organizations() -> int:
    return services.organization_deletions_carry_out()
