"""Every call ends, whatever bytes the upstream sends: on every surface — the web socket, a REST
message (JSON and streamed), ``/v1`` (JSON and streamed) — the client gets an answer in that
surface's shape, the user's message is kept, what arrived of the reply is saved (text no
database can store replaced, never dropped), no hold is left, the ledger has exactly one row
for the call, and the server answers the next call as usual.

The upstream is the project's fake (providers/llm/fake_upstream.py), told to misbehave by the
markers on the model name. For the upstreams that stall or hang, the connection's read timeout
is short, so the call ends soon; every other call (the healthy one after each case included)
has a timeout no loaded machine reaches, so no case depends on how fast this machine runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.test import AsyncClient, Client
from django.urls import reverse

from billing.models import BudgetPeriod, Hold, UsageRecord
from chat.models import Message
from providers.models import ProviderConnection
from tests.chat.conftest import make_key, serve
from tests.chat.test_socket import create
from tests.gateway.test_openai_api import _asgi_post, _events

pytestmark = pytest.mark.django_db(transaction=True)

SAID = "hello there friend"
FULL = "Echo: hello there friend"
TWO = "Echo: hello "  # the first two chunks the fake sends
STALLED_TIMEOUT = 1.0  # seconds the connection waits between chunks, for a stalled upstream
TIMEOUT = 60.0  # for the rest


@dataclass(frozen=True)
class Hostile:
    marker: str
    ends: str  # "error" or "complete", when the upstream is streamed to
    partial: str  # what is saved of the reply when it ends in an error
    json_ends: str  # the same for a non-streamed upstream call (/v1 without stream)
    saved: str = FULL  # the saved reply when it completes


HOSTILE = [
    Hostile("badjson2", "error", TWO, "error"),
    Hostile("html", "error", "", "error"),
    Hostile("text", "error", "", "error"),
    Hostile("cut2", "error", TWO, "error"),
    Hostile("drop2", "error", TWO, "error"),
    Hostile("stall2", "error", TWO, "error"),
    Hostile("hang", "error", "", "error"),
    Hostile("errorevent2", "error", TWO, "error"),
    Hostile("nochoices", "error", "", "error"),
    Hostile("surrogate", "complete", "", "complete", saved="Echo: \ufffdhello there friend"),
    Hostile("nul", "complete", "", "complete", saved="Echo: \ufffdhello there friend"),
    Hostile("badusage", "complete", "", "complete"),
]
IDS = [h.marker for h in HOSTILE]


@pytest.fixture
def world(alice, org_a, project_a, fake_upstream, fake_price, make_budget, hostile):
    """Project A on the fake upstream with every hostile model, a budget (so every call takes
    and gives back a hold) and a chat key."""
    serve(project_a, fake_upstream, "fake-gpt", *(f"fake-gpt@{h.marker}" for h in HOSTILE))
    stalls = hostile.marker.startswith(("stall", "hang"))
    set_timeout(project_a, STALLED_TIMEOUT if stalls else TIMEOUT)
    make_budget(project_a.organization, limit=1000, scope="project", project=project_a)
    return make_key(alice, org_a, project_a, ["chat", "read"])


def set_timeout(project, seconds: float) -> None:
    ProviderConnection.objects.filter(project=project).update(timeout=seconds)


@database_sync_to_async
def books() -> tuple[list[UsageRecord], int, Decimal]:
    rows = list(UsageRecord.objects.order_by("id"))
    reserved = sum((p.reserved for p in BudgetPeriod.objects.all()), Decimal(0))
    return rows, Hold.objects.count(), reserved


@database_sync_to_async
def messages(conversation_id: int) -> list[Message]:
    return list(Message.objects.filter(conversation_id=conversation_id).order_by("id"))


async def assert_books_hold(model: str, *, calls: int = 1) -> None:
    rows, holds, reserved = await books()
    assert [r.model for r in rows] == [model] * calls  # one row per call, titles excluded
    assert (holds, reserved) == (0, Decimal(0))


async def assert_saved(conversation_id: int, hostile: Hostile) -> None:
    user, reply = await messages(conversation_id)
    assert (user.role, user.content) == ("user", SAID)
    if hostile.ends == "complete":
        assert (reply.state, reply.content) == ("complete", hostile.saved)
    else:
        assert reply.state == ("incomplete" if hostile.partial else "error")
        assert reply.content == hostile.partial
        assert reply.error_code
        assert reply.error_message


# --- the web socket -------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE, ids=IDS)
async def test_the_socket(open_socket, make_conversation, alice, project_a, world, hostile):
    model = f"fake-gpt@{hostile.marker}"
    conversation = await create(make_conversation, alice, project_a, model=model, title="t")
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content=SAID)
    last = (await socket.until("done", "error", within=30))[-1]

    assert last["type"] == ("done" if hostile.ends == "complete" else "error")
    if last["type"] == "error":
        assert last["code"]
        assert last["message"]
        assert last["reply"]["content"] == hostile.partial
    await assert_saved(conversation.pk, hostile)
    await assert_books_hold(model)

    await database_sync_to_async(set_timeout)(project_a, TIMEOUT)
    healthy = await create(make_conversation, alice, project_a, model="fake-gpt", title="t")
    _, again = await open_socket(alice, healthy.pk)
    await again.send(type="message", content=SAID)
    assert (await again.until("done", "error"))[-1]["message"]["content"] == FULL


# --- a REST message, JSON and streamed -------------------------------------------------------


class KeyClient(AsyncClient):
    """An AsyncClient that sends a project key with every request."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.auth = {"Authorization": f"Bearer {key}"}

    async def post(self, path: str, **kwargs: Any) -> Any:  # type: ignore[override]
        return await super().post(path, headers=self.auth, **kwargs)


async def _api_conversation(client: KeyClient, project, model: str) -> int:
    answer = await client.post(
        reverse("api-conversations", kwargs={"project_id": project.pk}),
        data=json.dumps({"model": model, "title": "t"}),
        content_type="application/json",
    )
    assert answer.status_code == 201, answer.content
    return answer.json()["id"]


async def _post_message(client: KeyClient, project, conversation_id: int, *, stream: bool):
    url = reverse(
        "api-messages", kwargs={"project_id": project.pk, "conversation_id": conversation_id}
    )
    return await client.post(
        url + ("?stream=true" if stream else ""),
        data=json.dumps({"content": SAID}),
        content_type="application/json",
    )


async def _sse(response) -> list[tuple[str, Any]]:
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()
    events = []
    for block in body.split("\n\n"):
        if block:
            name, data = block.split("\n", 1)
            events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def _sync_conversation(client: Client, project, model: str) -> int:
    answer = client.post(
        reverse("api-conversations", kwargs={"project_id": project.pk}),
        data=json.dumps({"model": model, "title": "t"}),
        content_type="application/json",
    )
    assert answer.status_code == 201, answer.content
    return answer.json()["id"]


def _sync_message(client: Client, project, conversation_id: int):
    url = reverse(
        "api-messages", kwargs={"project_id": project.pk, "conversation_id": conversation_id}
    )
    return client.post(url, data=json.dumps({"content": SAID}), content_type="application/json")


@pytest.mark.parametrize("hostile", HOSTILE, ids=IDS)
def test_a_rest_message(project_a, world, hostile):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {world}")
    model = f"fake-gpt@{hostile.marker}"
    conversation_id = _sync_conversation(client, project_a, model)

    answer = _sync_message(client, project_a, conversation_id)

    body = answer.json()
    if hostile.ends == "complete":
        assert answer.status_code == 201
        assert body["content"] == hostile.saved
    else:
        assert answer.status_code >= 400
        assert body["error"]["code"]
        assert body["error"]["message"]
        assert body["message"]["content"] == hostile.partial  # the saved reply comes along
    async_to_sync(assert_saved)(conversation_id, hostile)
    async_to_sync(assert_books_hold)(model)
    set_timeout(project_a, TIMEOUT)
    healthy = _sync_conversation(client, project_a, "fake-gpt")
    assert _sync_message(client, project_a, healthy).status_code == 201


@pytest.mark.parametrize("hostile", HOSTILE, ids=IDS)
async def test_a_streamed_rest_message(project_a, world, hostile):
    client = KeyClient(world)
    model = f"fake-gpt@{hostile.marker}"
    conversation_id = await _api_conversation(client, project_a, model)

    answer = await _post_message(client, project_a, conversation_id, stream=True)

    assert answer.status_code == 200
    events = await _sse(answer)
    kind, data = events[-1]
    if hostile.ends == "complete":
        assert kind == "done"
        assert data["message"]["content"] == hostile.saved
    else:
        assert kind == "error"
        assert data["error"]["code"]
        assert data["message"]["content"] == hostile.partial
    await assert_saved(conversation_id, hostile)
    await assert_books_hold(model)
    await database_sync_to_async(set_timeout)(project_a, TIMEOUT)
    healthy = await _api_conversation(client, project_a, "fake-gpt")
    answer = await _post_message(client, project_a, healthy, stream=True)
    assert (await _sse(answer))[-1][0] == "done"


# --- /v1, JSON and streamed ---------------------------------------------------------------------

HELLO = [{"role": "user", "content": SAID}]


@pytest.mark.parametrize("hostile", HOSTILE, ids=IDS)
def test_v1_chat_completions(project_a, world, hostile):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {world}")
    model = f"fake-gpt@{hostile.marker}"

    answer = client.post(
        "/v1/chat/completions",
        data=json.dumps({"model": model, "messages": HELLO}),
        content_type="application/json",
    )

    assert answer["content-type"] == "application/json"  # never Django's HTML page
    body = answer.json()
    if hostile.json_ends == "complete":
        assert answer.status_code == 200
        assert body["choices"][0]["message"]["content"].startswith("Echo: ")
    else:
        assert answer.status_code >= 400
        assert set(body["error"]) >= {"message", "type", "code", "param"}
    async_to_sync(assert_books_hold)(model)
    set_timeout(project_a, TIMEOUT)
    healthy = client.post(
        "/v1/chat/completions",
        data=json.dumps({"model": "fake-gpt", "messages": HELLO}),
        content_type="application/json",
    )
    assert healthy.json()["choices"][0]["message"]["content"] == FULL


@pytest.mark.parametrize("hostile", HOSTILE, ids=IDS)
async def test_a_streamed_v1_chat_completion(project_a, world, hostile):
    model = f"fake-gpt@{hostile.marker}"

    status, chunks = await _asgi_post({"model": model, "messages": HELLO, "stream": True}, world)

    if status != 200:  # it failed before the first byte: an error status, OpenAI's error JSON
        assert hostile.ends == "error"
        assert set(json.loads(b"".join(chunks))["error"]) >= {"message", "type", "code"}
    else:
        events = _events(chunks)
        assert events[-1] == "[DONE]"  # every stream ends
        if hostile.ends == "complete":
            text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
            assert text.startswith("Echo: ")
            assert text.endswith("hello there friend")
        else:  # it failed after the first byte: an error event, then [DONE]
            assert set(events[-2]["error"]) >= {"message", "type", "code"}
            deltas = [e for e in events[:-2] if e.get("choices")]
            text = "".join(e["choices"][0]["delta"].get("content") or "" for e in deltas)
            assert text == hostile.partial
    await assert_books_hold(model)
    await database_sync_to_async(set_timeout)(project_a, TIMEOUT)
    status, chunks = await _asgi_post(
        {"model": "fake-gpt", "messages": HELLO, "stream": True}, world
    )
    assert (status, _events(chunks)[-1]) == (200, "[DONE]")
