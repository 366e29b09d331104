"""Idempotency-Key on /v1/chat/completions: a repeat is answered again, not billed again."""

import asyncio
import contextlib
import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient, Client
from django.utils import timezone

from billing.models import UsageRecord
from core.models import IdempotentRequest
from tests.conftest import wait_for_background
from tests.gateway.test_openai_api import HELLO, URL, make_key, serve

pytestmark = pytest.mark.django_db(transaction=True)


def post(key: str, body: dict, idempotency_key: str | None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    if idempotency_key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = idempotency_key
    return Client().post(URL, data=json.dumps(body), content_type="application/json", **headers)


@pytest.fixture
def key(alice, org_a, project_a, fake_upstream) -> str:
    serve(project_a, fake_upstream)
    return make_key(alice, org_a, project_a)


BODY = {"model": "fake-gpt", "messages": HELLO}


def test_a_repeat_gets_the_same_answer_and_is_not_billed_again(key, fake_upstream):
    first = post(key, BODY, "order-42")
    second = post(key, BODY, "order-42")

    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true"
    assert UsageRecord.objects.count() == 1
    assert fake_upstream.request_counts["fake-gpt"] == 1


def test_a_repeat_with_a_different_body_is_a_conflict(key, fake_upstream):
    post(key, BODY, "order-42")

    again = post(key, {**BODY, "temperature": 0.1}, "order-42")

    assert again.status_code == 409
    assert again.json()["error"]["code"] == "idempotency_key_reused"
    assert UsageRecord.objects.count() == 1


def test_a_repeat_while_the_first_still_runs_is_a_conflict(key, alice):
    from accounts.models import ApiKey

    IdempotentRequest.objects.create(
        api_key=ApiKey.objects.get(), key="order-42", body_digest=_digest(BODY)
    )

    again = post(key, BODY, "order-42")

    assert again.status_code == 409
    assert again.json()["error"]["code"] == "idempotency_request_in_progress"
    assert not UsageRecord.objects.exists()


def test_after_24_hours_the_key_runs_again(key, fake_upstream):
    post(key, BODY, "order-42")
    IdempotentRequest.objects.update(created_at=timezone.now() - timedelta(hours=25))

    post(key, BODY, "order-42")

    assert UsageRecord.objects.count() == 2


def test_other_keys_and_requests_without_one_are_independent(key, alice, org_a, project_a):
    other = make_key(alice, org_a, project_a)
    post(key, BODY, "order-42")
    post(other, BODY, "order-42")
    post(key, BODY, None)

    assert UsageRecord.objects.count() == 3


async def test_a_stream_is_replayed_as_it_was_sent_and_billed_once(key, fake_upstream):
    body = json.dumps({**BODY, "stream": True, "stream_options": {"include_usage": True}})
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "stream-1"}
    client = AsyncClient()

    first = await client.post(URL, data=body, content_type="application/json", headers=headers)
    first_events = b"".join([chunk async for chunk in first.streaming_content])
    second = await client.post(URL, data=body, content_type="application/json", headers=headers)

    assert second["Content-Type"] == "text/event-stream"
    assert second["Idempotent-Replayed"] == "true"
    assert second.content == first_events
    assert first_events.endswith(b"data: [DONE]\n\n")
    assert first_events.count(b"chat.completion.chunk") >= 3
    assert await database_sync_to_async(UsageRecord.objects.count)() == 1
    assert fake_upstream.request_counts["fake-gpt"] == 1


async def test_a_stream_left_before_the_end_is_not_kept(key, project_a, fake_upstream):
    await database_sync_to_async(serve)(project_a, fake_upstream, "fake-gpt@slow300")
    body = json.dumps({**BODY, "model": "fake-gpt@slow300", "stream": True})
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "stream-2"}
    response = await AsyncClient().post(
        URL, data=body, content_type="application/json", headers=headers
    )
    first_chunk = asyncio.Event()

    async def read() -> None:  # as the server does, until the client goes away
        async for _ in response.streaming_content:
            first_chunk.set()

    reader = asyncio.create_task(read())
    await asyncio.wait_for(first_chunk.wait(), 10)
    reader.cancel()  # what Django does when the client disconnects
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await wait_for_background()  # the upstream side settles in its own task

    assert not await database_sync_to_async(IdempotentRequest.objects.exists)()
    assert await database_sync_to_async(UsageRecord.objects.count)() == 1  # billed once


def test_a_refusal_is_replayed_too_but_a_server_error_is_not_kept(key, project_a, fake_upstream):
    serve(project_a, fake_upstream, "fake-gpt@500")
    bad = {**BODY, "messages": []}
    assert post(key, bad, "k1").status_code == 400
    assert post(key, bad, "k1").status_code == 400

    broken = {**BODY, "model": "fake-gpt@500"}
    assert post(key, broken, "k2").status_code == 502
    assert not IdempotentRequest.objects.filter(key="k2").exists()  # may be retried


def _digest(body: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(body).encode()).hexdigest()


@pytest.mark.parametrize(
    "task_name",
    [
        "core.tasks.purge_idempotency_records",
        # Its name before it moved out of chat: queued messages may still carry it.
        "chat.tasks.purge_idempotency_records",
    ],
)
def test_answers_past_24_hours_are_purged_and_recent_ones_kept(key, task_name):
    import core.tasks  # noqa: F401 - what the worker's autodiscovery imports
    from config.celery import app

    purge_idempotency_records = app.tasks[task_name]
    post(key, BODY, "old")
    post(key, BODY, "recent")
    IdempotentRequest.objects.filter(key="old").update(
        created_at=timezone.now() - timedelta(hours=25)
    )

    purge_idempotency_records()

    assert list(IdempotentRequest.objects.values_list("key", flat=True)) == ["recent"]
