"""Work after a reply, off the request path: the conversation is titled (one metered call)."""

import asyncio
import logging
import time

from celery import shared_task

from billing.models import UsageRecord
from billing.services import CallContext, quota_reserve, quota_settle
from core.errors import ServiceError
from providers.llm.base import ChatRequest, Completion, ProviderError
from providers.llm.tokens import count_message_tokens, count_text_tokens
from providers.models import ProviderConnection
from providers.specs import ProviderSpec, build_provider, spec_for

from . import services
from .models import Conversation, Message
from .streaming import announce_title

logger = logging.getLogger(__name__)

TITLE_MAX_TOKENS = 20
TITLE_PROMPT = (
    "Write a short title (at most six words) for a conversation that starts with the message "
    "below. Answer with the title only, no quotes."
)


async def _ask_for_title(*, spec: ProviderSpec, model: str, first_message: str) -> Completion:
    provider = build_provider(spec)
    try:
        completion = await provider.complete(
            ChatRequest(
                model=model,
                messages=[
                    {"role": "system", "content": TITLE_PROMPT},
                    {"role": "user", "content": first_message[:2000]},
                ],
                max_tokens=TITLE_MAX_TOKENS,
                temperature=0.2,
            )
        )
    finally:
        await provider.aclose()
    return completion


@shared_task(ignore_result=True)
def title_conversation(conversation_id: int) -> None:
    """Name a conversation after its first exchange; the first words if the model cannot."""
    conversation = (
        Conversation.objects.select_related("project").filter(pk=conversation_id, title="").first()
    )
    if conversation is None:
        return
    first = conversation.messages.filter(role=Message.Role.USER).order_by("id").first()
    if first is None:
        return
    title = ""
    try:
        title = _title_from_model(conversation, first.content)
    except (ProviderError, ServiceError) as error:
        logger.info("titling conversation %s fell back to its first words: %s", conversation_id,
                    getattr(error, "code", error))  # fmt: skip
    title = title or services.fallback_title(first.content)
    if services.conversation_set_title(conversation_id=conversation_id, title=title):
        announce_title(
            project_id=conversation.project_id, conversation_id=conversation_id, title=title
        )


def _title_from_model(conversation: Conversation, first_message: str) -> str:
    """One metered call: reserved against the owner's budgets, settled into the ledger."""
    spec = spec_for(project=conversation.project, model=conversation.model)
    if spec.kind == ProviderConnection.Kind.LOCAL:
        # Two processes running llama.cpp on a small machine slow each other down several
        # times over: the built-in model keeps its CPU for replies, titles take first words.
        raise ServiceError("the local model does not write titles", code="local_model")
    reservation = quota_reserve(
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
        prompt_tokens=count_message_tokens(
            [
                {"role": "system", "content": TITLE_PROMPT},
                {"role": "user", "content": first_message[:2000]},
            ]
        ),
        max_tokens=TITLE_MAX_TOKENS,
    )
    started = time.monotonic()
    completion: Completion | None = None
    try:
        completion = asyncio.run(
            _ask_for_title(spec=spec, model=conversation.model, first_message=first_message)
        )
    finally:
        usage = completion.usage if completion else None
        quota_settle(
            reservation=reservation,
            status=UsageRecord.Status.OK if completion else UsageRecord.Status.ERROR,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens
            if usage
            else count_text_tokens(completion.text if completion else ""),
            cached_tokens=usage.cached_tokens if usage else 0,
            estimated=usage is None,
            latency_ms=int((time.monotonic() - started) * 1000),
        )
    return services.clean_title(completion.text)
