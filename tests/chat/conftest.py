"""Chat test helpers: conversations on the fake upstream, with any fault markers."""

from collections.abc import Callable

import pytest

from accounts.models import Project, User
from chat import services
from chat.models import Conversation


@pytest.fixture
def make_conversation(fake_upstream, settings) -> Callable[..., Conversation]:
    """A conversation of ``user`` in ``project`` on ``model`` (fault markers allowed)."""

    def make(user: User, project: Project, model: str = "fake-gpt", **fields) -> Conversation:
        if model not in settings.LLM_MODELS:
            settings.LLM_MODELS = [*settings.LLM_MODELS, model]
        conversation = services.conversation_create(user=user, project=project, model=model)
        for name, value in fields.items():
            setattr(conversation, name, value)
        conversation.save()
        return conversation

    return make
