"""During its grace an organization scheduled for deletion spends nothing: a chat reply, a REST
message and a /v1 call are refused before anything is sent upstream, with the same clear error;
cancelled, it spends again. Every page of the organization says so.

These need two changes outside the lifecycle app: billing's spend guards (billing/services.py,
which lifecycle.apps adds its check to) and the banner in templates/base.html."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from django.test import Client
from django.urls import reverse

from billing.models import UsageRecord
from lifecycle import services
from tests.chat.conftest import make_key, serve
from tests.chat.test_socket import create
from tests.conftest import membership

HELLO = [{"role": "user", "content": "hello there"}]


def schedule(alice, org_a) -> None:
    services.organization_deletion_request(actor=membership(alice, org_a), confirm_name=org_a.name)


def cancel(alice, org_a) -> None:
    services.organization_deletion_cancel(actor=membership(alice, org_a))


def v1(key: str):
    return Client().post(
        "/v1/chat/completions",
        data=json.dumps({"model": "fake-gpt", "messages": HELLO}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


@pytest.mark.django_db
def test_a_v1_call_is_refused_and_nothing_is_sent(alice, org_a, project_a, fake_upstream):
    serve(project_a, fake_upstream)
    key = make_key(alice, org_a, project_a)
    schedule(alice, org_a)

    refused = v1(key)

    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "organization_pending_deletion"
    assert "scheduled for deletion" in error["message"]
    assert refused["x-should-retry"] == "false"
    assert sum(fake_upstream.request_counts.values()) == 0
    assert not UsageRecord.objects.exists()

    cancel(alice, org_a)
    assert v1(key).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_a_rest_message_is_refused(alice, org_a, project_a, fake_upstream):
    serve(project_a, fake_upstream)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {make_key(alice, org_a, project_a, ['chat'])}")
    conversations = reverse("api-conversations", kwargs={"project_id": project_a.pk})
    started = client.post(
        conversations, data=json.dumps({"model": "fake-gpt"}), content_type="application/json"
    )
    assert started.status_code == 201  # reading and writing its own data is still allowed
    schedule(alice, org_a)

    refused = client.post(
        reverse(
            "api-messages",
            kwargs={"project_id": project_a.pk, "conversation_id": started.json()["id"]},
        ),
        data=json.dumps({"content": "hello"}),
        content_type="application/json",
    )

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "organization_pending_deletion"
    assert sum(fake_upstream.request_counts.values()) == 0
    assert not UsageRecord.objects.exists()


@pytest.mark.django_db(transaction=True)
async def test_a_chat_reply_is_refused(
    open_socket,
    make_conversation,
    alice,
    org_a,
    project_a,
):
    conversation = await create(make_conversation, alice, project_a)
    await database_sync_to_async(schedule)(alice, org_a)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="hello")
    error = await socket.receive()

    assert error["type"] == "error"
    assert error["code"] == "organization_pending_deletion"
    assert "scheduled for deletion" in error["message"]
    assert not await database_sync_to_async(UsageRecord.objects.exists)()


@pytest.mark.django_db
def test_every_page_of_the_organization_shows_the_banner_once(
    client_for, alice, bob, org_a, project_a
):
    schedule(alice, org_a)
    pages = [
        reverse(name, args=[org_a.slug])
        for name in ("organization_settings", "usage_dashboard", "budgets")
    ] + [reverse("chat_home", args=[org_a.slug, project_a.slug])]

    for url in pages:
        page = client_for(bob).get(url).content.decode()
        assert page.count("Org A is scheduled for deletion on") == 1, url
    assert "scheduled for deletion" not in client_for(bob).get(reverse("home")).content.decode()
