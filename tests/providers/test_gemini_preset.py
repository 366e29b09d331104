"""The "Gemini" choice when adding a connection: Google's OpenAI-compatible endpoint with its
models added from the catalog, asking only for a Google AI Studio key — and nothing fetched
from Google while doing it."""

import socket

import pytest
from django.urls import reverse

from accounts.models import Project
from billing.pricing import price_for
from providers import services as provider_services
from providers.crypto import decrypt
from providers.models import ConnectionModel, ProviderConnection
from tests.conftest import membership

pytestmark = pytest.mark.django_db

KEY = "AIzaSyTest-gemini-key-0123456789"
GEMINI_URL = "https://generativelanguage.googleapis.com/v1beta/openai/"


def url(name: str, project: Project) -> str:
    return reverse(name, args=[project.organization.slug, project.slug])


def form(**overrides) -> dict:
    data = {"kind": "gemini", "name": "", "base_url": "", "api_key": KEY, "timeout": "60",
            "max_retries": "2"}  # fmt: skip
    data.update(overrides)
    return data


def added():
    """The connections tenants added (the global built-in one is always there)."""
    return ProviderConnection.objects.filter(organization__isnull=False)


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to resolve or reach a host fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network call was made: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_the_form_offers_gemini_and_says_which_key_it_needs(client_for, alice, project_a):
    page = client_for(alice).get(url("connection_new", project_a)).content.decode()

    assert '<option value="gemini">Gemini (Google AI Studio)</option>' in page
    assert "Google AI Studio" in page
    assert "aistudio.google.com/apikey" in page


def test_choosing_gemini_adds_the_connection_and_its_models_without_calling_google(
    client_for, alice, project_a, offline
):
    response = client_for(alice).post(url("connection_new", project_a), form(), follow=True)

    connection = added().get()
    assert (connection.kind, connection.base_url, connection.name) == (
        "openai_compatible",
        GEMINI_URL,
        "Gemini",
    )
    assert (connection.organization, connection.project) == (project_a.organization, project_a)
    assert decrypt(connection.api_key_encrypted) == KEY
    assert connection.api_key_hint.endswith("6789")
    assert connection.supports_moderation is False  # no /v1/moderations at Google
    assert connection.models_refreshed_at is None  # nothing was fetched
    models = {
        m.name: (
            m.context_window, m.max_output_tokens, m.supports_vision, m.supports_tools,
            m.supports_json, m.supports_embeddings, m.fetched, m.unpriced_allowed,
        )
        for m in ConnectionModel.objects.filter(connection=connection)
    }  # fmt: skip
    assert models == {
        "gemini-2.5-flash": (1_048_576, 65_536, True, True, True, False, False, False),
        "gemini-2.5-pro": (1_048_576, 65_536, True, True, True, False, False, False),
    }
    body = response.content.decode()
    assert "with its models: gemini-2.5-flash, gemini-2.5-pro" in body
    assert KEY not in body  # write-only, as every key


def test_a_gemini_connection_is_shared_and_named_as_asked(client_for, alice, project_a, offline):
    client_for(alice).post(
        url("connection_new", project_a), form(name="Google", shared="on", base_url="")
    )

    connection = added().get()
    assert (connection.name, connection.project) == ("Google", None)
    assert connection.models.count() == 2


def test_without_a_key_it_asks_for_a_google_ai_studio_key(client_for, alice, project_a, offline):
    response = client_for(alice).post(url("connection_new", project_a), form(api_key=""))

    assert response.status_code == 200
    assert "Gemini needs an API key from Google AI Studio" in response.content.decode()
    assert not added().exists()
    assert not ConnectionModel.objects.filter(connection__organization__isnull=False).exists()


def test_a_member_cannot_add_one(client_for, bob, project_a):
    response = client_for(bob).post(url("connection_new", project_a), form())

    assert response.status_code == 403
    assert not added().exists()


def test_its_models_are_priced(alice, org_a, project_a, offline):
    connection = provider_services.connection_create_preset(
        actor=membership(alice, org_a), project=project_a, preset="gemini", api_key=KEY
    )

    for model in connection.models.all():
        price = price_for(model.name, on=connection.created_at.date())
        assert price is not None
        assert price.model == model.name
