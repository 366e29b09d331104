"""The model picker: each model with its price (by the one money rule) and what it takes, and
a switch over the socket that needs no reload and is kept."""

from __future__ import annotations

from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from django.urls import reverse

from billing.models import ModelPrice
from chat import selectors
from chat.models import Conversation
from tests.chat.conftest import serve


def detail(conversation: Conversation) -> str:
    project = conversation.project
    return reverse(
        "conversation_detail", args=[project.organization.slug, project.slug, conversation.pk]
    )


@pytest.mark.django_db
def test_the_picker_shows_each_models_price_and_what_it_takes(
    make_conversation, alice, project_a, fake_upstream, client_for
):
    serve(project_a, fake_upstream, "fake-gpt", "fake-gpt-mini")
    for model, price_in, price_out in (
        ("fake-gpt", "2.50", "10.00"),
        ("fake-gpt-mini", "0.075", "0.30"),
    ):
        ModelPrice.objects.create(
            model=model,
            input_per_million=Decimal(price_in),
            cached_input_per_million=Decimal(0),
            output_per_million=Decimal(price_out),
            effective_from="2024-01-01",
        )
    conversation = make_conversation(alice, project_a)

    response = client_for(alice).get(detail(conversation))

    body = response.content.decode()
    options = {o.name: o for o in response.context["model_options"]}
    assert options["fake-gpt"].price.input_per_million == Decimal("2.50")
    assert ">fake-gpt · $2.50 in / $10.00 out" in body
    # Under a dollar: 4 places, not "$0.08" (the display rule, core.money).
    assert ">fake-gpt-mini · $0.075 in / $0.30 out" in body
    assert 'data-model-info="fake-gpt"' in body
    assert "-token window" in body


@pytest.mark.django_db
def test_a_model_without_a_price_says_so_and_the_local_one_is_free(
    make_conversation, alice, project_a, client_for
):
    conversation = make_conversation(alice, project_a)  # fake-gpt: no price row
    ModelPrice.objects.filter(model__startswith="fake").delete()

    options = {o.name: o for o in selectors.model_options(project_a)}
    body = client_for(alice).get(detail(conversation)).content.decode()

    assert options["fake-gpt"].price is None
    assert ">fake-gpt · no price set" in body
    assert options["smollm2-135m-instruct"].free  # seeded at 0


pytestmark_socket = pytest.mark.django_db(transaction=True)


@pytestmark_socket
async def test_switching_the_model_over_the_socket_is_kept_and_every_tab_hears_it(
    open_socket, make_conversation, alice, project_a, fake_upstream
):
    conversation = await database_sync_to_async(make_conversation)(alice, project_a)
    await database_sync_to_async(serve)(project_a, fake_upstream, "fake-gpt-mini")
    _, socket = await open_socket(alice, conversation.pk)
    _, other_tab = await open_socket(alice, conversation.pk)

    await socket.send(type="model", model="fake-gpt-mini")
    heard = (await other_tab.until("model"))[-1]

    assert heard == {"type": "model", "model": "fake-gpt-mini"}
    assert (await socket.until("model"))[-1]["model"] == "fake-gpt-mini"
    await database_sync_to_async(conversation.refresh_from_db)()
    assert conversation.model == "fake-gpt-mini"
    await socket.send(type="message", content="hi")
    started = (await socket.until("assistant.started"))[-1]
    assert started["message"]["model"] == "fake-gpt-mini"
    await socket.until("done")


@pytestmark_socket
@pytest.mark.parametrize("model", ["not-a-model", "", None, 12])
async def test_a_model_the_project_does_not_allow_is_refused(
    open_socket, make_conversation, alice, project_a, model
):
    conversation = await database_sync_to_async(make_conversation)(alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="model", model=model)
    error = await socket.receive()

    assert (error["type"], error["code"]) == ("error", "model_not_found")
    await database_sync_to_async(conversation.refresh_from_db)()
    assert conversation.model == "fake-gpt"


@pytestmark_socket
async def test_only_a_rooms_maker_switches_its_model(
    open_socket, make_conversation, alice, bob, project_a, fake_upstream
):
    room = await database_sync_to_async(make_conversation)(alice, project_a, sharing="project")
    await database_sync_to_async(serve)(project_a, fake_upstream, "fake-gpt-mini")
    _, socket = await open_socket(bob, room.pk)

    await socket.send(type="model", model="fake-gpt-mini")
    error = (await socket.until("error"))[-1]

    assert error["code"] == "not_room_owner"
    await database_sync_to_async(room.refresh_from_db)()
    assert room.model == "fake-gpt"
