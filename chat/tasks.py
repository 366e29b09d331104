"""Work after a reply, off the request path: the conversation is titled, and a long one
summarized (one metered call each)."""

import logging

from celery import shared_task

from billing import metering
from billing.models import UsageRecord
from billing.services import CallContext
from core.errors import ServiceError
from providers.llm.base import ChatRequest, ProviderError
from providers.models import ProviderConnection
from providers.specs import spec_for

from . import selectors, services, summaries
from .models import Conversation, Message
from .streaming import announce_title

logger = logging.getLogger(__name__)

TITLE_MAX_TOKENS = 20
TITLE_PROMPT = (
    "Write a short title (at most six words) for a conversation that starts with the message "
    "below. Answer with the title only, no quotes."
)


# acks_late and reject_on_worker_lost, here and on the summary: a worker killed mid-task (the
# machine lost, the pool's process killed) leaves the message to be delivered again. Safe to
# run twice: only an untitled conversation is titled, and the title is set only if it is
# still untitled (conversation_set_title).
@shared_task(ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def title_conversation(conversation_id: int) -> None:
    """Name a conversation after its first exchange; the first words if the model cannot."""
    conversation = (
        Conversation.objects.select_related("project").filter(pk=conversation_id, title="").first()
    )
    if conversation is None:
        return
    first = conversation.messages.on_branch().filter(role=Message.Role.USER).order_by("id").first()
    if first is None:
        return
    title = ""
    try:
        title = _title_from_model(conversation, first.content)
    except (ProviderError, ServiceError) as error:
        logger.info("titling conversation %s fell back to its first words: %s", conversation_id,
                    getattr(error, "code", error))  # fmt: skip
    except Exception:  # the task boundary: a conversation gets a title whatever went wrong
        logger.exception("titling conversation %s failed; first words instead", conversation_id)
    title = title or services.fallback_title(first.content)
    if services.conversation_set_title(conversation_id=conversation_id, title=title):
        announce_title(
            project_id=conversation.project_id,
            conversation_id=conversation_id,
            title=title,
            conversation_cost=selectors.conversation_cost(conversation),
        )


def _title_from_model(conversation: Conversation, first_message: str) -> str:
    """One metered call: reserved against the owner's budgets, settled into the ledger."""
    spec = spec_for(project=conversation.project, model=conversation.model)
    if spec.kind == ProviderConnection.Kind.LOCAL:
        # Two processes running llama.cpp on a small machine slow each other down several
        # times over: the built-in model keeps its CPU for replies, titles take first words.
        raise ServiceError("the local model does not write titles", code="local_model")
    call = metering.metered_reserve(
        context=CallContext(
            organization_id=conversation.project.organization_id,
            project_id=conversation.project_id,
            user_id=conversation.owner_id,
            model=conversation.model,
            source=UsageRecord.Source.TITLE,
            conversation_id=conversation.pk,
            connection_id=spec.connection_id,
            api_key_id=conversation.api_key_id,
        ),
        request=ChatRequest(
            model=conversation.model,
            messages=[
                {"role": "system", "content": TITLE_PROMPT},
                {"role": "user", "content": first_message[:2000]},
            ],
            temperature=0.2,
        ),
        spec=spec,
        asked=TITLE_MAX_TOKENS,
    )
    return services.clean_title(metering.complete_blocking(call).text)


@shared_task(ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def summarize_conversation(
    conversation_id: int,
    user_id: int | None = None,
    api_key_id: int | None = None,
    trigger: str = summaries.ASKED,
) -> None:
    """Fold a long conversation's oldest turns into its running summary, billed to the person
    (or key) whose message or click asked for it. Safe to run twice: a fold that is not due,
    or that another fold beat, does nothing."""
    if trigger not in (summaries.WINDOW, summaries.THRESHOLD, summaries.ASKED):
        logger.warning("summary of conversation %s: unknown trigger %r", conversation_id, trigger)
        return
    try:
        summaries.summary_fold(
            conversation_id=conversation_id,
            user_id=user_id,
            api_key_id=api_key_id,
            trigger=trigger,  # narrowed to a Trigger just above
        )
    except Exception:  # the task boundary: a reply's commit must never see a summary's bug
        logger.exception("summarizing conversation %s failed", conversation_id)


@shared_task(ignore_result=True)
def expire_stale_streams() -> int | None:
    """Celery beat: close the replies whose process died mid-stream, in every conversation."""
    try:
        return services.streams_sweep_stale()
    except Exception:  # the task boundary: those that failed are tried again next time
        logger.exception("closing stale replies failed")
        return None


@shared_task(ignore_result=True)
def purge_unsent_attachments() -> int:
    """Images uploaded for a message that was never sent, a day on: their files and rows go."""
    from datetime import timedelta

    from .attachments import attachments_purge_unsent

    return attachments_purge_unsent(older_than=timedelta(days=1))
