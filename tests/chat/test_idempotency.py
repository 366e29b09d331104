"""Idempotency-Key on /v1/chat/completions: a repeat is answered again, not billed again."""

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from billing.models import UsageRecord
from chat.models import IdempotentRequest
from tests.chat.test_openai_api import HELLO, URL, make_key, serve

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


def test_a_streaming_request_with_a_key_is_refused_clearly(key):
    answer = post(key, {**BODY, "stream": True}, "order-42")

    assert answer.status_code == 400
    assert "non-streaming requests only" in answer.json()["error"]["message"]
    assert not UsageRecord.objects.exists()


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
