"""Idempotency-Key keeps only completed answers. A refusal before any work, an upstream failure
(a stream that ended in an error event included) and a server error free the key: once the
cause is gone (a budget raised, a model allowed), the same key runs the call.
"""

from decimal import Decimal

import pytest

from billing.models import Budget, ModelPrice, UsageRecord
from core.models import IdempotentRequest
from tests.core.test_idempotency import BODY, post
from tests.gateway.test_openai_api import HELLO, asgi_post, make_key, serve

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def key(alice, org_a, project_a, fake_upstream) -> str:
    serve(project_a, fake_upstream, "fake-gpt", "fake-gpt@500", "fake-gpt@errorevent2")
    return make_key(alice, org_a, project_a)


def test_a_budget_refusal_is_not_replayed_once_the_budget_is_raised(
    key, org_a, project_a, fake_upstream
):
    ModelPrice.objects.create(
        model="fake-gpt*",
        input_per_million=Decimal(1000),
        cached_input_per_million=Decimal(1000),
        output_per_million=Decimal(1000),
        effective_from="2024-01-01",
    )
    budget = Budget.objects.create(
        organization=org_a, project=project_a, scope="project", limit_usd=Decimal("0.000001")
    )

    refused = post(key, BODY, "order-7")
    budget.limit_usd = Decimal(100)
    budget.save()
    again = post(key, BODY, "order-7")

    assert refused.status_code == 429
    assert again.status_code == 200
    assert "Idempotent-Replayed" not in again
    assert fake_upstream.request_counts["fake-gpt"] == 1
    replayed = post(key, BODY, "order-7")  # and now the completed answer is kept
    assert replayed["Idempotent-Replayed"] == "true"
    assert replayed.json() == again.json()


def test_a_model_not_found_is_not_replayed_once_the_model_is_allowed(key, project_a, fake_upstream):
    mini = {**BODY, "model": "fake-gpt-mini"}

    refused = post(key, mini, "order-8")
    serve(project_a, fake_upstream, "fake-gpt-mini")
    again = post(key, mini, "order-8")

    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "model_not_found"
    assert again.status_code == 200
    assert "Idempotent-Replayed" not in again
    assert fake_upstream.request_counts["fake-gpt-mini"] == 1


def test_an_upstream_failure_is_not_replayed(key, fake_upstream):
    failed = post(key, {**BODY, "model": "fake-gpt@500"}, "order-9")
    again = post(key, {**BODY, "model": "fake-gpt@500"}, "order-9")

    assert failed.status_code == again.status_code == 502
    assert "Idempotent-Replayed" not in again
    assert fake_upstream.request_counts["fake-gpt@500"] == 2
    assert UsageRecord.objects.count() == 2


@pytest.mark.django_db(transaction=True)
async def test_a_stream_that_ended_in_an_error_event_is_not_replayed(key, fake_upstream):
    body = {"model": "fake-gpt@errorevent2", "messages": HELLO, "stream": True}

    first = await asgi_post(body, key, headers={"Idempotency-Key": "order-10"})
    second = await asgi_post(body, key, headers={"Idempotency-Key": "order-10"})

    for status, headers, chunks in (first, second):
        assert status == 200
        assert "idempotent-replayed" not in headers
        assert b'"error"' in b"".join(chunks)
    assert fake_upstream.request_counts["fake-gpt@errorevent2"] == 2
    assert not await IdempotentRequest.objects.aexists()
