"""A conversation's sampling settings — temperature, top_p, both penalties, stop, seed, max
tokens, JSON mode — are set on the page and over REST, checked as OpenAI documents them, and
what is stored is what is sent upstream. An unknown setting is refused, not dropped."""

import json

import pytest
from django.urls import reverse

from chat import services
from chat.actors import Actor
from chat.models import Conversation
from providers.llm.catalog import context_window
from providers.models import ConnectionModel
from tests.chat.conftest import make_key, serve

pytestmark = pytest.mark.django_db(transaction=True)

SETTINGS = {
    "temperature": 0.3,
    "top_p": 0.5,
    "presence_penalty": 1.0,
    "frequency_penalty": -1.0,
    "stop": ["END", "\n\n"],
    "seed": 7,
    "json_mode": True,
}


@pytest.fixture
def served(project_a, fake_upstream):
    serve(project_a, fake_upstream, "fake-gpt")
    ConnectionModel.objects.filter(name="fake-gpt").update(supports_json=True)
    return project_a


def conversation_url(project, pk: int) -> str:
    return reverse("api-conversation", kwargs={"project_id": project.pk, "conversation_id": pk})


def test_rest_sets_every_sampling_setting_and_stores_it(served, alice, org_a, client):
    key = make_key(alice, org_a, served, ["chat", "read"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    created = client.post(
        reverse("api-conversations", kwargs={"project_id": served.pk}),
        data=json.dumps({"title": "s", "model": "fake-gpt"}),
        content_type="application/json",
        **auth,
    ).json()

    patched = client.patch(
        conversation_url(served, created["id"]),
        data=json.dumps(SETTINGS),
        content_type="application/json",
        **auth,
    )

    assert patched.status_code == 200, patched.content
    assert {name: patched.json()[name] for name in SETTINGS} == SETTINGS
    stored = Conversation.objects.get(pk=created["id"])
    assert {name: getattr(stored, name) for name in SETTINGS} == SETTINGS


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"seed": "seven"}, "seed"),
        ({"top_k": 40}, "top_k"),  # not a setting: refused, not dropped
    ],
)
def test_rest_refuses_a_setting_out_of_range_naming_it(served, alice, org_a, client, change, param):
    key = make_key(alice, org_a, served, ["chat", "read"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    created = client.post(
        reverse("api-conversations", kwargs={"project_id": served.pk}),
        data=json.dumps({"model": "fake-gpt"}),
        content_type="application/json",
        **auth,
    ).json()

    refused = client.patch(
        conversation_url(served, created["id"]),
        data=json.dumps(change),
        content_type="application/json",
        **auth,
    )

    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == param


def test_json_mode_needs_a_model_that_takes_it(served, alice, project_a):
    ConnectionModel.objects.filter(name="fake-gpt").update(supports_json=False)
    conversation = services.conversation_create(
        actor=Actor(user=alice), project=project_a, model="fake-gpt"
    )

    with pytest.raises(services.ServiceError, match="JSON mode"):
        services.conversation_update_settings(
            conversation=conversation, model="fake-gpt", system_prompt="", json_mode=True
        )


def test_the_page_sets_them(served, alice, client_for):
    conversation = services.conversation_create(
        actor=Actor(user=alice), project=served, model="fake-gpt"
    )
    url = reverse(
        "conversation_settings",
        args=[served.organization.slug, served.slug, conversation.pk],
    )

    client_for(alice).post(
        url,
        {
            "model": "fake-gpt",
            "system_prompt": "Answer in JSON.",
            **{k: v for k, v in SETTINGS.items() if k not in ("stop", "json_mode")},
            "stop": "END\nSTOP",
            "json_mode": "on",
            "max_tokens": "",
        },
    )

    conversation.refresh_from_db()
    assert (conversation.top_p, conversation.seed, conversation.stop) == (0.5, 7, ["END", "STOP"])
    assert conversation.json_mode
    assert conversation.max_tokens is None


def test_what_is_stored_is_what_is_sent(served, alice):
    conversation = services.conversation_create(
        actor=Actor(user=alice), project=served, model="fake-gpt"
    )
    services.conversation_update_settings(
        conversation=conversation, model="fake-gpt", system_prompt="Answer in JSON.", **SETTINGS
    )

    pending = services.reply_start(
        actor=Actor(user=alice), conversation_id=conversation.pk, content="hello"
    )

    request = pending.call.request
    assert (request.temperature, request.top_p) == (0.3, 0.5)
    assert (request.presence_penalty, request.frequency_penalty) == (1.0, -1.0)
    assert (request.stop, request.seed) == (["END", "\n\n"], 7)
    assert request.response_format == {"type": "json_object"}
    # No max tokens set: the reply may use what the context leaves (not a fixed 1,024).
    assert request.max_tokens == pending.call.cap
    assert pending.call.cap > context_window("fake-gpt") // 2
