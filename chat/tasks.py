import asyncio
import logging

from celery import shared_task

from accounts.errors import ServiceError

from . import services
from .llm.base import ChatRequest, ProviderError
from .models import Conversation, Message, ProviderConnection
from .providers import ProviderSpec, build_provider, spec_for

logger = logging.getLogger(__name__)

TITLE_PROMPT = (
    "Write a short title (at most six words) for a conversation that starts with the message "
    "below. Answer with the title only, no quotes."
)


async def _ask_for_title(*, spec: ProviderSpec, model: str, first_message: str) -> str:
    provider = build_provider(spec)
    try:
        completion = await provider.complete(
            ChatRequest(
                model=model,
                messages=[
                    {"role": "system", "content": TITLE_PROMPT},
                    {"role": "user", "content": first_message[:2000]},
                ],
                max_tokens=20,
                temperature=0.2,
            )
        )
    finally:
        await provider.aclose()
    return completion.text


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
        spec = spec_for(project=conversation.project, model=conversation.model)
        if spec.kind == ProviderConnection.Kind.LOCAL:
            # Two processes running llama.cpp on a small machine slow each other down several
            # times over: the built-in model keeps its CPU for replies, titles take first words.
            raise ServiceError("the local model does not write titles", code="local_model")
        raw = asyncio.run(
            _ask_for_title(spec=spec, model=conversation.model, first_message=first.content)
        )
        title = services.clean_title(raw)
    except (ProviderError, ServiceError) as error:
        logger.info("titling conversation %s fell back to its first words: %s", conversation_id,
                    getattr(error, "code", error))  # fmt: skip
    services.conversation_set_title(
        conversation_id=conversation_id, title=title or services.fallback_title(first.content)
    )
