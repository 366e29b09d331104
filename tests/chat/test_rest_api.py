"""The REST API's conversations, messages and models (/api/v1/projects/<id>/…).

Messages run the real reply path (the fake upstream over HTTP), so these tests use committed
transactions: the reply's task reads and writes through its own connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from decimal import Decimal

import pytest
from asgiref.sync import ThreadSensitiveContext
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts import api_keys
from billing.models import Budget, ModelPrice, UsageRecord
from chat.models import Conversation, Message
from chat.streaming import conversation_group
from tests.chat.conftest import make_key, serve
from tests.conftest import wait_for_background

pytestmark = pytest.mark.django_db(transaction=True)


def key_client(key: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def conversations_url(project) -> str:
    return reverse("api-conversations", kwargs={"project_id": project.pk})


def messages_url(project, conversation_id: int) -> str:
    return reverse(
        "api-messages", kwargs={"project_id": project.pk, "conversation_id": conversation_id}
    )


def post_json(client, url: str, body: dict, **extra):
    return client.post(url, data=json.dumps(body), content_type="application/json", **extra)


def price_fake_gpt() -> None:
    """$1,000 per 1M tokens in and out: a token costs a tenth of a cent."""
    ModelPrice.objects.create(
        model="fake-gpt",
        input_per_million=Decimal("1000"),
        cached_input_per_million=Decimal("1000"),
        output_per_million=Decimal("1000"),
        effective_from="2024-01-01",
    )


@pytest.fixture
def served(project_a, fake_upstream):
    serve(
        project_a,
        fake_upstream,
        "fake-gpt",
        "fake-gpt@500",
        "fake-gpt@slow150",
        "fake-gpt@slow150@stall5",
        "other-model",
    )
    return project_a


# --- projects and models -----------------------------------------------------------------------


def test_it_lists_the_projects_a_caller_reaches(
    client_for, alice, org_a, project_a, charlie, project_b
):
    mine = client_for(alice).get(reverse("api-projects")).json()
    assert [p["id"] for p in mine["results"]] == [project_a.pk]
    assert mine["results"][0]["organization"]["slug"] == org_a.slug

    theirs = client_for(charlie).get(reverse("api-projects")).json()
    assert [p["id"] for p in theirs["results"]] == [project_b.pk]
    key = make_key(alice, org_a, project_a, ["read"])
    by_key = key_client(key).get(reverse("api-projects")).json()
    assert [p["id"] for p in by_key["results"]] == [project_a.pk]


def test_it_lists_the_models_the_project_allows(served, alice, org_a):
    key = make_key(alice, org_a, served, ["read"])

    models = key_client(key).get(reverse("api-models", kwargs={"project_id": served.pk})).json()

    names = [m["id"] for m in models]
    assert {"fake-gpt", "other-model"} <= set(names)
    assert sum(m["is_default"] for m in models) == 1


# --- conversations -----------------------------------------------------------------------------


def test_a_key_creates_reads_updates_and_deletes_a_conversation(served, alice, org_a):
    client = key_client(make_key(alice, org_a, served, ["chat", "read"]))

    created = post_json(
        client,
        conversations_url(served),
        {
            "title": "Support bot",
            "model": "fake-gpt",
            "temperature": 0.3,
            "system_prompt": "Be brief.",
        },
    )
    assert created.status_code == 201, created.content
    data = created.json()
    assert (data["title"], data["model"], data["temperature"], data["started_with"]) == (
        "Support bot",
        "fake-gpt",
        0.3,
        "api_key",
    )
    url = reverse(
        "api-conversation", kwargs={"project_id": served.pk, "conversation_id": data["id"]}
    )
    assert client.get(url).json()["system_prompt"] == "Be brief."

    patched = client.patch(
        url,
        data=json.dumps({"title": "Renamed", "archived": True}),
        content_type="application/json",
    )
    assert patched.status_code == 200
    assert (patched.json()["title"], patched.json()["archived"]) == ("Renamed", True)
    assert patched.json()["model"] == "fake-gpt"  # untouched fields stay

    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404
    assert not Conversation.objects.filter(pk=data["id"]).exists()


def test_bad_conversation_input_is_a_400_naming_the_field(served, alice, org_a):
    client = key_client(make_key(alice, org_a, served, ["chat", "read"]))

    too_hot = post_json(client, conversations_url(served), {"temperature": 7})
    unknown_model = post_json(client, conversations_url(served), {"model": "gpt-99"})

    assert too_hot.status_code == 400
    assert too_hot.json()["error"]["param"] == "temperature"
    assert too_hot.json()["error"]["type"] == "invalid_request_error"
    assert unknown_model.status_code == 404
    assert unknown_model.json()["error"]["code"] == "model_not_found"
    assert "gpt-99" in unknown_model.json()["error"]["message"]
    assert Conversation.objects.count() == 0


def test_keys_and_people_never_see_each_others_conversations(served, alice, bob, org_a, client_for):
    key = key_client(make_key(alice, org_a, served, ["chat", "read"]))
    by_key = post_json(key, conversations_url(served), {}).json()
    by_alice = post_json(client_for(alice), conversations_url(served), {}).json()
    by_bob = post_json(client_for(bob), conversations_url(served), {}).json()

    def ids(client) -> set[int]:
        return {c["id"] for c in client.get(conversations_url(served)).json()["results"]}

    assert ids(key) == {by_key["id"]}
    assert ids(client_for(alice)) == {by_alice["id"]}
    assert ids(client_for(bob)) == {by_bob["id"]}
    alices = reverse(
        "api-conversation", kwargs={"project_id": served.pk, "conversation_id": by_alice["id"]}
    )
    assert key.get(alices).status_code == 404
    assert client_for(bob).delete(alices).status_code == 404


def test_the_list_filters_orders_and_pages(served, alice, org_a):
    client = key_client(make_key(alice, org_a, served, ["chat", "read"]))
    for n in range(5):
        post_json(client, conversations_url(served), {"title": f"chat {n}", "model": "fake-gpt"})
    post_json(client, conversations_url(served), {"title": "the other", "model": "other-model"})

    page = client.get(conversations_url(served), {"page_size": 2, "ordering": "title"}).json()
    assert page["count"] == 6
    assert [c["title"] for c in page["results"]] == ["chat 0", "chat 1"]
    assert page["next"] is not None
    by_model = client.get(conversations_url(served), {"model": "other-model"}).json()
    assert [c["title"] for c in by_model["results"]] == ["the other"]
    searched = client.get(conversations_url(served), {"q": "chat 3"}).json()
    assert [c["title"] for c in searched["results"]] == ["chat 3"]

    bad = client.get(conversations_url(served), {"ordering": "secret_field"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "ordering"


# --- messages ----------------------------------------------------------------------------------


def test_posting_a_message_runs_the_model_and_returns_the_reply(served, alice, org_a):
    price_fake_gpt()
    key = make_key(alice, org_a, served, ["chat", "read"])
    client = key_client(key)
    conversation = post_json(client, conversations_url(served), {"model": "fake-gpt"}).json()

    response = post_json(client, messages_url(served, conversation["id"]), {"content": "hi there"})

    assert response.status_code == 201, response.content
    reply = response.json()
    assert (reply["role"], reply["state"], reply["content"]) == (
        "assistant",
        "complete",
        "Echo: hi there",
    )
    assert reply["completion_tokens"] == 3
    # One row for the reply (the conversation's title is a call of its own, also the key's).
    [row] = UsageRecord.objects.filter(message_id=reply["id"])
    assert (row.source, row.status, row.user_id) == ("api", "ok", None)
    assert row.api_key.digest == api_keys.digest_of(key)
    listed = client.get(messages_url(served, conversation["id"])).json()
    assert [(m["role"], m["content"]) for m in listed["results"]] == [
        ("user", "hi there"),
        ("assistant", "Echo: hi there"),
    ]
    assert row.cost == Decimal("0.001") * (row.prompt_tokens + row.completion_tokens)
    assert Decimal(listed["results"][1]["cost"]) == row.cost
    assert "E" not in listed["results"][1]["cost"]  # a plain decimal string


def test_a_failed_reply_is_saved_and_answered_with_an_error_status(served, alice, org_a):
    client = key_client(make_key(alice, org_a, served, ["chat", "read"]))
    conversation = post_json(client, conversations_url(served), {"model": "fake-gpt@500"}).json()

    response = post_json(client, messages_url(served, conversation["id"]), {"content": "hello"})

    assert response.status_code == 502
    body = response.json()
    assert body["error"]["code"] == "upstream_error"
    assert body["message"]["state"] == "error"
    assert Message.objects.filter(role="user", content="hello").exists()  # nothing lost
    assert UsageRecord.objects.count() == 1  # one row per upstream call, failed or not


@pytest.mark.parametrize(
    ("marker", "status", "code"),
    [
        ("@429", 429, "rate_limit_exceeded"),
        ("@quota", 429, "insufficient_quota"),
        ("@401", 502, "upstream_auth_failed"),
        ("@500", 502, "upstream_error"),
        ("@context", 400, "context_length_exceeded"),
    ],
)
def test_an_upstream_failure_has_the_same_status_and_code_as_on_v1(
    served, alice, org_a, fake_upstream, marker, status, code
):
    model = f"fake-gpt{marker}"
    serve(served, fake_upstream, model)
    client = key_client(make_key(alice, org_a, served, ["chat", "read"]))
    conversation = post_json(client, conversations_url(served), {"model": model}).json()

    rest = post_json(client, messages_url(served, conversation["id"]), {"content": "hello"})
    v1 = post_json(client, "/v1/chat/completions", {"model": model, "messages": [
        {"role": "user", "content": "hello"}]})  # fmt: skip

    for answer in (rest, v1):
        assert answer.status_code == status
        assert answer.json()["error"]["code"] == code
        # The upstream's own rate limit says when to come back, on both surfaces.
        assert ("Retry-After" in answer) == (code == "rate_limit_exceeded")
    assert rest.json()["error"]["type"] == v1.json()["error"]["type"]


def test_a_budget_refusal_is_a_429_and_sends_nothing(served, alice, org_a, fake_upstream):
    price_fake_gpt()
    Budget.objects.create(
        organization=org_a, project=served, scope="project", limit_usd=Decimal("0.000001")
    )
    client = key_client(make_key(alice, org_a, served, ["chat", "read"]))
    conversation = post_json(client, conversations_url(served), {"model": "fake-gpt"}).json()

    response = post_json(client, messages_url(served, conversation["id"]), {"content": "hello"})

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "budget_exceeded"
    assert fake_upstream.request_counts.get("fake-gpt", 0) == 0
    assert UsageRecord.objects.count() == 0


def test_an_empty_message_is_a_400(served, alice, org_a):
    client = key_client(make_key(alice, org_a, served, ["chat", "read"]))
    conversation = post_json(client, conversations_url(served), {}).json()

    missing = post_json(client, messages_url(served, conversation["id"]), {})
    blank = post_json(client, messages_url(served, conversation["id"]), {"content": "   "})

    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "content"
    assert blank.status_code == 400
    assert Message.objects.count() == 0


async def async_conversation(project, user, organization, model: str = "fake-gpt"):
    """An AsyncClient (streams are read on the test's own event loop), a key's header, and a
    conversation that key started."""
    key = await database_sync_to_async(make_key)(user, organization, project, ["chat", "read"])
    client, auth = AsyncClient(), {"Authorization": f"Bearer {key}"}
    created = await client.post(
        conversations_url(project),
        data={"model": model},
        content_type="application/json",
        headers=auth,
    )
    return client, auth, created


async def test_stream_true_sends_deltas_then_the_saved_reply(served, alice, org_a):
    client, auth, created = await async_conversation(served, alice, org_a)
    assert created.status_code == 201, created.content
    url = messages_url(served, created.json()["id"]) + "?stream=true"

    response = await client.post(
        url, data={"content": "stream this please"}, content_type="application/json", headers=auth
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    raw = b"".join([chunk async for chunk in response.streaming_content]).decode()
    events = [
        (block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1][6:]))
        for block in raw.strip().split("\n\n")
    ]
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "user_message"
    assert kinds[1] == "start"
    assert kinds[-1] == "done"
    assert "delta" in kinds
    text = "".join(data["text"] for kind, data in events if kind == "delta")
    assert text == "Echo: stream this please"
    final = events[-1][1]["message"]
    assert (final["state"], final["content"]) == ("complete", text)
    rows = UsageRecord.objects.filter(message_id=final["id"])
    assert await database_sync_to_async(rows.count)() == 1


# --- scopes and CSRF ---------------------------------------------------------------------------


def test_scopes_decide_what_a_key_may_do(served, alice, org_a):
    read_only = key_client(make_key(alice, org_a, served, ["read"]))
    chat_only = key_client(make_key(alice, org_a, served, ["chat"]))

    refused = post_json(read_only, conversations_url(served), {})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    assert chat_only.get(conversations_url(served)).status_code == 403
    assert post_json(chat_only, conversations_url(served), {}).status_code == 201
    assert read_only.get(conversations_url(served)).status_code == 200


def test_a_session_write_needs_the_csrf_token(served, alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    refused = post_json(client, conversations_url(served), {})
    client.get(reverse("home"))  # sets the CSRF cookie, as a page would
    token = client.cookies["csrftoken"].value
    accepted = post_json(client, conversations_url(served), {}, HTTP_X_CSRFTOKEN=token)

    assert refused.status_code == 403
    assert "CSRF" in refused.json()["error"]["message"]
    assert accepted.status_code == 201


# --- Idempotency-Key ---------------------------------------------------------------------------


def test_a_repeated_message_is_answered_again_not_run_again(served, alice, org_a, fake_upstream):
    client = key_client(make_key(alice, org_a, served, ["chat", "read"]))
    conversation = post_json(client, conversations_url(served), {"model": "fake-gpt"}).json()
    url = messages_url(served, conversation["id"])

    first = post_json(client, url, {"content": "hi"}, HTTP_IDEMPOTENCY_KEY="msg-1")
    again = post_json(client, url, {"content": "hi"}, HTTP_IDEMPOTENCY_KEY="msg-1")
    other = post_json(client, url, {"content": "bye"}, HTTP_IDEMPOTENCY_KEY="msg-1")

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert Message.objects.filter(role="user").count() == 1
    assert UsageRecord.objects.filter(message__isnull=False).count() == 1
    assert fake_upstream.request_counts["fake-gpt"] >= 1


def test_people_have_idempotency_keys_of_their_own(served, client_for, alice, bob):
    def send(user):
        client = client_for(user)
        conversation = post_json(client, conversations_url(served), {"model": "fake-gpt"}).json()
        url = messages_url(served, conversation["id"])
        return post_json(client, url, {"content": "same"}, HTTP_IDEMPOTENCY_KEY="k")

    assert send(alice).status_code == 201
    assert send(bob).status_code == 201  # the same key, another person: runs
    assert Message.objects.filter(role="assistant").count() == 2


async def test_a_streamed_message_is_replayed_as_it_streamed(served, alice, org_a):
    client, auth, created = await async_conversation(served, alice, org_a)
    url = messages_url(served, created.json()["id"]) + "?stream=true"
    headers = {**auth, "Idempotency-Key": "s-1"}

    first = await client.post(url, data={"content": "hi"}, content_type="application/json",
                              headers=headers)  # fmt: skip
    sent = b"".join([chunk async for chunk in first.streaming_content])
    again = await client.post(url, data={"content": "hi"}, content_type="application/json",
                              headers=headers)  # fmt: skip

    assert again["Idempotent-Replayed"] == "true"
    assert again.content == sent
    assert b"event: done" in sent
    count = Message.objects.filter(role="assistant").count
    assert await database_sync_to_async(count)() == 1


# --- stop ----------------------------------------------------------------------------------------


async def test_stop_ends_a_reply_mid_stream_and_keeps_what_came(served, alice, org_a, settings):
    # The reply's own task answers the stop; the fallback for a reply whose process died (it
    # is closed once the grace period is over) must not stand in for it here.
    settings.CHAT_ORPHAN_GRACE = 60
    # Five words, then nothing until the call is closed: only the stop can end this reply.
    client, auth, created = await async_conversation(
        served, alice, org_a, "fake-gpt@slow150@stall5"
    )
    conversation_id = created.json()["id"]
    streamed = await client.post(
        messages_url(served, conversation_id) + "?stream=true",
        data={"content": "one two three four five six seven eight nine ten"},
        content_type="application/json",
        headers=auth,
    )
    events = aiter(streamed.streaming_content)
    while b"event: delta" not in await anext(events):
        pass
    stop_url = reverse(
        "api-stop", kwargs={"project_id": served.pk, "conversation_id": conversation_id}
    )

    # In a thread of its own, as Django's ASGI handler serves every request; the test client
    # would run it in the one thread the reply's task saves it from, and the reply could not
    # be saved until the stop had given up waiting for it.
    async with ThreadSensitiveContext():
        stopped = await client.post(stop_url, headers=auth)
    rest = b"".join([chunk async for chunk in events])

    assert stopped.status_code == 200, stopped.content
    reply = stopped.json()
    assert (reply["state"], reply["finish_reason"]) == ("stopped", "stop_requested")
    assert reply["error_code"] == ""  # saved by the reply's task, not closed as an orphan
    assert reply["content"].startswith("Echo: ")
    assert not reply["content"].endswith("ten")  # cut short
    assert b"event: done" in rest
    rows = UsageRecord.objects.filter(message_id=reply["id"])
    assert await database_sync_to_async(list)(rows.values_list("status", flat=True)) == ["stopped"]
    again = await client.post(stop_url, headers=auth)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_busy"


async def test_a_client_that_leaves_still_gets_the_saved_reply_on_its_retry(served, alice, org_a):
    client, auth, created = await async_conversation(served, alice, org_a, "fake-gpt@slow150")
    url = messages_url(served, created.json()["id"])
    headers = {**auth, "Idempotency-Key": "leaving"}

    def send():
        return client.post(
            url, data={"content": "a b c d e"}, content_type="application/json", headers=headers
        )

    # What the conversation's open tabs hear: the first words of the reply say it has begun.
    layer = get_channel_layer()
    tab = await layer.new_channel()
    group = conversation_group(project_id=served.pk, conversation_id=created.json()["id"])
    await layer.group_add(group, tab)

    first = asyncio.create_task(send())
    async with asyncio.timeout(30):
        while (await layer.receive(tab))["payload"]["type"] != "delta":
            pass
    await layer.group_discard(group, tab)
    first.cancel()  # the client went away: Django cancels the request
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await wait_for_background()

    retry = await send()

    assert retry.status_code == 201, retry.content
    assert retry["Idempotent-Replayed"] == "true"
    assert (retry.json()["state"], retry.json()["content"]) == ("complete", "Echo: a b c d e")
    count = Message.objects.filter(role="assistant").count
    assert await database_sync_to_async(count)() == 1


# --- queries -------------------------------------------------------------------------------------


def test_lists_take_the_same_queries_however_long_they_are(served, alice, org_a):
    client = key_client(make_key(alice, org_a, served, ["chat", "read"]))
    conversation = post_json(client, conversations_url(served), {"model": "fake-gpt"}).json()
    for n in range(3):
        post_json(client, messages_url(served, conversation["id"]), {"content": f"hi {n}"})

    def count(url: str) -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        return len(queries)

    few = count(messages_url(served, conversation["id"]))
    for n in range(3, 20):
        post_json(client, messages_url(served, conversation["id"]), {"content": f"hi {n}"})
    many = count(messages_url(served, conversation["id"]))
    assert many == few  # 40 messages cost what 6 did

    few = count(conversations_url(served))
    for _ in range(20):
        post_json(client, conversations_url(served), {})
    assert count(conversations_url(served)) == few


async def test_a_stream_left_midway_is_replayed_whole_once_saved(served, alice, org_a):
    client, auth, created = await async_conversation(served, alice, org_a, "fake-gpt@slow150")
    url = messages_url(served, created.json()["id"]) + "?stream=true"
    headers = {**auth, "Idempotency-Key": "left-stream"}

    def send():
        return client.post(
            url, data={"content": "a b c d e"}, content_type="application/json", headers=headers
        )

    first = await send()
    got_delta = asyncio.Event()

    async def read() -> None:
        async for chunk in first.streaming_content:
            if b"event: delta" in chunk:
                got_delta.set()

    reader = asyncio.create_task(read())
    await asyncio.wait_for(got_delta.wait(), 10)
    reader.cancel()  # the client went away mid-reply
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await wait_for_background()

    retry = await send()

    assert retry["Idempotent-Replayed"] == "true"
    events = retry.content.decode().strip().split("\n\n")
    assert [e.split("\n")[0] for e in events] == [
        "event: user_message",
        "event: start",
        "event: delta",
        "event: done",
    ]
    assert json.loads(events[2].split("\n")[1][6:])["text"] == "Echo: a b c d e"
    count = Message.objects.filter(role="assistant").count
    assert await database_sync_to_async(count)() == 1
