"""The OpenAI-compatible gateway (/v1): the official SDK against a live Daphne, and its refusals.

The live server is Daphne serving the real ASGI app (`config.asgi`) in a subprocess started
with the test settings and this run's test database file, so with `transaction=True` both
processes see the same committed rows. Not a fork (daphne's `DaphneProcess`): a fork late in
the run inherits thread-pool executors whose threads it does not have, and hangs. The fake
upstream runs in this process; the server reaches it over HTTP like any provider.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import openai
import pytest
from channels.db import database_sync_to_async
from django.core.asgi import get_asgi_application
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from accounts import api_keys
from accounts.models import ApiKey
from billing.models import Budget, ModelPrice, RateLimit, UsageRecord
from providers.llm.tokens import count_text_tokens
from providers.services import connection_model_add
from tests.chat.conftest import fake_connection, make_key, serve
from tests.conftest import membership, wait_for_background

pytestmark = pytest.mark.django_db

URL = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello there gateway"}]


def post(key: str | None, body: Any, *, raw: bytes | None = None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key is not None else {}
    return Client().post(
        URL,
        data=raw if raw is not None else json.dumps(body),
        content_type="application/json",
        **headers,
    )


# --- the acceptance test: the official SDK, unchanged, against a live server ----------------


@pytest.mark.django_db(transaction=True)
def test_the_official_sdk_works_unchanged(live_daphne, fake_upstream, alice, org_a, project_a):
    serve(project_a, fake_upstream)
    key = make_key(alice, org_a, project_a, ["chat"])
    client = openai.OpenAI(base_url=f"{live_daphne}/v1", api_key=key, max_retries=0, timeout=20)

    assert "fake-gpt" in [m.id for m in client.models.list()]

    completion = client.chat.completions.create(model="fake-gpt", messages=HELLO)
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "fake-gpt"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Echo: hello there gateway"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 4  # one per word, as the fake counts
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert completion.usage.prompt_tokens_details.cached_tokens == 0

    chunks = list(
        client.chat.completions.create(
            model="fake-gpt",
            messages=[{"role": "user", "content": "stream me please"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: stream me "  # cut at max_tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert not any(finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 3
    assert len({c.id for c in chunks}) == 1

    rows = list(UsageRecord.objects.order_by("id"))
    assert [(r.source, r.status, r.model, r.estimated) for r in rows] == [
        ("api", "ok", "fake-gpt", False),
        ("api", "ok", "fake-gpt", False),
    ]
    assert [(r.prompt_tokens, r.completion_tokens) for r in rows] == [
        (completion.usage.prompt_tokens, 4),
        (chunks[-1].usage.prompt_tokens, 3),
    ]
    assert all(r.project_id == project_a.pk and r.user_id is None for r in rows)
    # Each row names the key that made the call.
    assert {r.api_key.digest for r in rows} == {api_keys.digest_of(key)}
    assert fake_upstream.request_counts["fake-gpt"] == 2


# --- authentication and scopes -----------------------------------------------------------------


def test_every_unusable_key_gets_the_same_401(alice, org_a, project_a, fake_upstream):
    serve(project_a, fake_upstream)
    revoked = api_keys.api_key_create(
        actor=membership(alice, org_a), project=project_a, name="old", scopes=["chat"]
    )
    api_keys.api_key_revoke(actor=membership(alice, org_a), key=revoked.key)
    expired = api_keys.api_key_create(
        actor=membership(alice, org_a), project=project_a, name="exp", scopes=["chat"]
    )
    ApiKey.objects.filter(pk=expired.key.pk).update(expires_at=timezone.now() - timedelta(1))
    body = {"model": "fake-gpt", "messages": HELLO}

    answers = [
        Client().post(URL, data=json.dumps(body), content_type="application/json"),
        Client().post(
            URL, data="{}", content_type="application/json", HTTP_AUTHORIZATION="Basic x"
        ),
        post("", body),
        post("not-a-key", body),
        post(api_keys.generate_key(), body),  # well-formed, unknown
        post(revoked.plaintext, body),
        post(expired.plaintext, body),
        Client().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {revoked.plaintext}"),
    ]

    assert {a.status_code for a in answers} == {401}
    assert len({a.content for a in answers}) == 1
    error = answers[0].json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}
    assert all(revoked.plaintext not in a.content.decode() for a in answers)
    assert not fake_upstream.request_counts
    assert not UsageRecord.objects.exists()


def test_a_read_only_key_lists_models_but_may_not_chat(alice, org_a, project_a, fake_upstream):
    serve(project_a, fake_upstream)
    key = make_key(alice, org_a, project_a, ["read"])

    listing = Client().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}")
    refused = post(key, {"model": "fake-gpt", "messages": HELLO})

    assert listing.status_code == 200
    assert listing.json()["object"] == "list"
    fake = next(m for m in listing.json()["data"] if m["id"] == "fake-gpt")
    assert fake == {
        "id": "fake-gpt",
        "object": "model",
        "created": fake["created"],
        "owned_by": "openai_compatible",
    }
    assert fake["created"] > 0
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    assert refused.json()["error"]["code"] == "insufficient_scope"
    assert not fake_upstream.request_counts


def test_csrf_does_not_apply(alice, org_a, project_a, fake_upstream):
    serve(project_a, fake_upstream)
    key = make_key(alice, org_a, project_a)
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)  # even with a session cookie present

    answer = client.post(
        URL,
        data=json.dumps({"model": "fake-gpt", "messages": HELLO}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )

    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "Echo: hello there gateway"


# --- models ----------------------------------------------------------------------------------


def test_a_model_the_project_does_not_allow_is_not_found(
    alice, org_a, project_a, charlie, org_b, project_b, fake_upstream
):
    serve(project_a, fake_upstream)
    key_a = make_key(alice, org_a, project_a)
    key_b = make_key(charlie, org_b, project_b)  # a valid key, of a project without fake-gpt

    unknown = post(key_a, {"model": "gpt-9", "messages": HELLO})
    other_orgs = post(key_b, {"model": "fake-gpt", "messages": HELLO})

    for answer in (unknown, other_orgs):
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "model_not_found"
        assert answer.json()["error"]["param"] == "model"
    assert "fake-gpt" not in [
        m["id"]
        for m in Client().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key_b}").json()["data"]
    ]
    assert not fake_upstream.request_counts
    assert not UsageRecord.objects.exists()


# --- request validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"messages": HELLO}).encode(), "model"),
        (json.dumps({"model": "fake-gpt"}).encode(), "messages"),
        (json.dumps({"model": "fake-gpt", "messages": "hi"}).encode(), "messages"),
        (json.dumps({"model": "fake-gpt", "messages": []}).encode(), "messages"),
        (
            json.dumps({"model": "fake-gpt", "messages": [{"content": "x"}]}).encode(),
            "messages[0].role",
        ),
        (json.dumps({"model": 3, "messages": HELLO}).encode(), "model"),
        (
            json.dumps({"model": "fake-gpt", "messages": HELLO, "temperature": "hot"}).encode(),
            "temperature",
        ),
        (
            json.dumps({"model": "fake-gpt", "messages": HELLO, "max_tokens": 0}).encode(),
            "max_tokens",
        ),
        (json.dumps({"model": "fake-gpt", "messages": HELLO, "stream": "yes"}).encode(), "stream"),
        (json.dumps({"model": "fake-gpt", "messages": HELLO, "stop": [1]}).encode(), "stop"),
    ],
)
def test_a_malformed_request_is_refused_naming_the_param(
    alice, org_a, project_a, fake_upstream, raw, param
):
    serve(project_a, fake_upstream)
    answer = post(make_key(alice, org_a, project_a), None, raw=raw)

    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert answer.json()["error"]["param"] == param
    assert not fake_upstream.request_counts


def test_a_prompt_too_long_for_the_window_is_refused(alice, org_a, project_a, fake_upstream):
    connection = fake_connection(project_a, fake_upstream)
    connection_model_add(actor=None, connection=connection, name="fake-gpt", context_window=50)

    answer = post(
        make_key(alice, org_a, project_a),
        {"model": "fake-gpt", "messages": [{"role": "user", "content": "word " * 100}]},
    )

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "context_length_exceeded"
    assert not fake_upstream.request_counts
    assert not UsageRecord.objects.exists()


def test_options_are_passed_through(alice, org_a, project_a, fake_upstream):
    serve(project_a, fake_upstream)

    answer = post(
        make_key(alice, org_a, project_a),
        {
            "model": "fake-gpt",
            "messages": HELLO,
            "max_completion_tokens": 2,
            "temperature": 0.1,
            "stop": "never",
            "seed": 7,
        },
    )

    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "Echo: hello "
    assert answer.json()["choices"][0]["finish_reason"] == "length"
    assert answer.json()["usage"]["completion_tokens"] == 2


# --- quotas: refused before anything is sent -----------------------------------------------------


def test_over_budget_nothing_is_sent_and_nothing_is_billed(alice, org_a, project_a, fake_upstream):
    serve(project_a, fake_upstream)
    ModelPrice.objects.create(
        model="fake-gpt",
        input_per_million=Decimal("10"),
        cached_input_per_million=Decimal("5"),
        output_per_million=Decimal("30"),
        effective_from=timezone.now().date() - timedelta(1),
    )
    Budget.objects.create(
        organization=org_a, project=project_a, scope="project", limit_usd=Decimal("0.01")
    )

    # $0.01 pays the prompt and about 300 reply tokens at $30 per 1M: not the 1,000 asked.
    answer = post(
        make_key(alice, org_a, project_a),
        {"model": "fake-gpt", "messages": HELLO, "max_tokens": 1000},
    )

    assert answer.status_code == 429
    assert answer.json()["error"]["code"] == "budget_exceeded"
    assert answer.json()["error"]["type"] == "insufficient_quota"
    assert "at most" in answer.json()["error"]["message"]  # what it could afford
    assert answer["x-should-retry"] == "false"  # the official SDK does not ask again
    assert not fake_upstream.request_counts
    assert not UsageRecord.objects.exists()


def test_over_the_rate_limit_answers_429_with_retry_after(alice, org_a, project_a, fake_upstream):
    cache.clear()
    serve(project_a, fake_upstream)
    RateLimit.objects.create(project=project_a, requests_per_minute=1)
    key = make_key(alice, org_a, project_a)

    first = post(key, {"model": "fake-gpt", "messages": HELLO})
    second = post(key, {"model": "fake-gpt", "messages": HELLO})

    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(second["Retry-After"]) <= 60
    assert fake_upstream.request_counts["fake-gpt"] == 1
    assert UsageRecord.objects.count() == 1


# --- upstream failures: mapped, billed once --------------------------------------------------


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
@pytest.mark.django_db(transaction=True)  # the stream settles from its own task and thread
def test_upstream_errors_are_mapped_and_settled_once(
    alice, org_a, project_a, fake_upstream, marker, status, code
):
    serve(project_a, fake_upstream, f"fake-gpt{marker}")
    key = make_key(alice, org_a, project_a)

    for stream in (False, True):
        answer = post(key, {"model": f"fake-gpt{marker}", "messages": HELLO, "stream": stream})
        assert answer.status_code == status
        assert answer.json()["error"]["code"] == code
        assert answer.json()["error"]["type"]
        assert "sk-test" not in answer.content.decode()
        if code == "rate_limit_exceeded":
            assert int(answer["Retry-After"]) >= 1

    rows = list(UsageRecord.objects.all())
    assert [(r.status, r.prompt_tokens, r.completion_tokens) for r in rows] == [("error", 0, 0)] * 2


def test_an_upstream_without_usage_is_billed_by_estimate(alice, org_a, project_a, fake_upstream):
    serve(project_a, fake_upstream, "fake-gpt@nousage")

    key = make_key(alice, org_a, project_a)
    answer = post(key, {"model": "fake-gpt@nousage", "messages": HELLO})

    assert answer.status_code == 200
    usage = answer.json()["usage"]
    record = UsageRecord.objects.get()
    assert record.estimated
    assert record.status == "ok"
    assert (record.prompt_tokens, record.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert record.completion_tokens > 0


# --- streaming through the ASGI app, the client going away mid-stream ------------------------


async def _asgi_post(body: dict[str, Any], key: str, *, hang_up_after: int | None = None):
    """POST to the ASGI app as a server would; with ``hang_up_after``, disconnect once that
    many body chunks arrived. Returns (status, body chunks)."""
    status, _headers, chunks = await asgi_post(body, key, hang_up_after=hang_up_after)
    return status, chunks


async def asgi_post(
    body: dict[str, Any],
    key: str,
    *,
    hang_up_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], list[bytes]]:
    """As ``_asgi_post``, with extra request headers; returns (status, response headers with
    lower-case names, body chunks)."""
    app = get_asgi_application()
    payload = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": URL,
        "raw_path": URL.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {key}".encode()),
            *((name.lower().encode(), value.encode()) for name, value in (headers or {}).items()),
        ],
    }
    gone = asyncio.Event()
    requested = False
    status: list[int] = []
    response_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
            response_headers.update(
                (name.decode().lower(), value.decode()) for name, value in message["headers"]
            )
        elif message.get("body"):
            chunks.append(message["body"])
            if hang_up_after is not None and len(chunks) >= hang_up_after:
                gone.set()
        if message["type"] == "http.response.body" and not message.get("more_body"):
            gone.set()

    async with asyncio.timeout(20):
        await app(scope, receive, send)
    return status[0], response_headers, chunks


def _events(chunks: list[bytes]) -> list[Any]:
    text = b"".join(chunks).decode()
    return [
        "[DONE]" if line == "data: [DONE]" else json.loads(line.removeprefix("data: "))
        for line in text.split("\n\n")
        if line
    ]


@pytest.mark.django_db(transaction=True)
async def test_a_stream_without_include_usage_has_no_usage_chunk(
    alice, org_a, project_a, fake_upstream
):
    await database_sync_to_async(serve)(project_a, fake_upstream)
    key = await database_sync_to_async(make_key)(alice, org_a, project_a)

    status, chunks = await _asgi_post({"model": "fake-gpt", "messages": HELLO, "stream": True}, key)

    events = _events(chunks)
    assert status == 200
    assert events[-1] == "[DONE]"
    assert all(e["choices"] for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == (
        "Echo: hello there gateway"
    )
    record = await UsageRecord.objects.aget()
    assert (record.status, record.completion_tokens, record.estimated) == ("ok", 4, False)


@pytest.mark.django_db(transaction=True)
async def test_a_client_hanging_up_mid_stream_is_billed_once(
    alice, org_a, project_a, fake_upstream
):
    # 10 of the 40 words, then nothing until the call is closed: the reply cannot end before
    # the client has gone, however slowly this machine runs.
    model = "fake-gpt@slow100@words40@stall10"
    await database_sync_to_async(serve)(project_a, fake_upstream, model)
    key = await database_sync_to_async(make_key)(alice, org_a, project_a)

    # role chunk + 3 content chunks, then the client is gone
    status, chunks = await _asgi_post(
        {"model": model, "messages": HELLO, "stream": True}, key, hang_up_after=4
    )

    assert status == 200
    assert b"[DONE]" not in b"".join(chunks)
    records = [r async for r in UsageRecord.objects.all()]
    assert len(records) == 1
    record = records[0]
    assert record.status == "incomplete"
    assert record.estimated
    assert record.source == "api"
    assert 3 <= record.completion_tokens < 40
    assert record.prompt_tokens > 0
    await wait_for_background()  # the upstream side has ended: nothing settles a second time
    assert await UsageRecord.objects.acount() == 1


@pytest.mark.django_db(transaction=True)
async def test_an_upstream_dropping_mid_stream_ends_with_an_error_event(
    alice, org_a, project_a, fake_upstream
):
    model = "fake-gpt@drop2"
    await database_sync_to_async(serve)(project_a, fake_upstream, model)
    key = await database_sync_to_async(make_key)(alice, org_a, project_a)

    status, chunks = await _asgi_post({"model": model, "messages": HELLO, "stream": True}, key)

    events = _events(chunks)
    assert status == 200
    # An error event, then [DONE]: the stream ends as every stream ends.
    assert events[-2]["error"]["code"] == "upstream_error"
    assert events[-1] == "[DONE]"
    record = await UsageRecord.objects.aget()
    assert record.status == "error"
    assert record.estimated
    assert record.completion_tokens == count_text_tokens("Echo: hello ")  # the two sent
