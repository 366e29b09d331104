"""Which provider serves a project's model. The only place services get a Provider from."""

from django.conf import settings

from accounts.models import Project

from .llm.base import Provider
from .llm.openai_provider import OpenAIProvider


def provider_for(*, project: Project | None, model: str) -> Provider:
    """Until per-project connections land, every project uses the upstream in settings."""
    return OpenAIProvider(
        base_url=settings.LLM_BASE_URL,
        api_key=settings.LLM_API_KEY,
        timeout=settings.LLM_TIMEOUT,
        max_retries=settings.LLM_MAX_RETRIES,
    )
