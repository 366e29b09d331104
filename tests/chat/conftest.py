"""Chat test helpers: conversations on the fake upstream, with any fault markers."""

from collections.abc import Callable

import pytest

from accounts import api_keys
from accounts.models import Project, User
from chat import services
from chat.actors import Actor
from chat.models import Conversation
from providers.crypto import encrypt, key_hint
from providers.models import ProviderConnection
from providers.services import connection_model_add
from tests.conftest import membership

FAKE_KEY = "sk-test-5f3a9c0e1b7d4a2f"


def fake_connection(project: Project, upstream, **fields) -> ProviderConnection:
    """The project's connection to the fake upstream: no retries, short timeout, exact counts."""
    connection, _ = ProviderConnection.objects.get_or_create(
        organization=project.organization,
        project=project,
        kind=ProviderConnection.Kind.COMPATIBLE,
        defaults={
            "name": "Fake upstream",
            "base_url": upstream.base_url,
            "timeout": 5.0,
            "max_retries": 0,
            "api_key_encrypted": encrypt(FAKE_KEY),
            "api_key_hint": key_hint(FAKE_KEY),
            **fields,
        },
    )
    return connection


@pytest.fixture
def make_conversation(fake_upstream) -> Callable[..., Conversation]:
    """A conversation of ``user`` in ``project`` on ``model`` served by the fake upstream
    (fault markers allowed: ``fake-gpt@500``)."""

    def make(user: User, project: Project, model: str = "fake-gpt", **fields) -> Conversation:
        connection = fake_connection(project, fake_upstream)
        connection_model_add(actor=None, connection=connection, name=model)
        conversation = services.conversation_create(
            actor=Actor(user=user), project=project, model=model
        )
        for name, value in fields.items():
            setattr(conversation, name, value)
        conversation.save()
        return conversation

    return make


def serve(project: Project, upstream, *models: str) -> None:
    """Let ``project`` use ``models`` (fault markers allowed) served by the fake upstream."""
    connection = fake_connection(project, upstream)
    for model in models or ("fake-gpt",):
        connection_model_add(actor=None, connection=connection, name=model)


def make_key(user, organization, project: Project, scopes: list[str] | None = None) -> str:
    return api_keys.api_key_create(
        actor=membership(user, organization),
        project=project,
        name="gateway test",
        scopes=scopes or ["chat"],
    ).plaintext
