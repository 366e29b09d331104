"""The upstream is capped at what was held: a hard budget is never overspent, whether the call
asks for no reply cap, carries large tool schemas, or meets an upstream that ignores its cap;
an upstream that reports more than was held is recorded as it reported, flagged, and staff hear
of it; and the official SDK asks once for a refusal that asking again cannot fix.
"""

from __future__ import annotations

import json
from decimal import Decimal

import openai
import pytest
from channels.db import database_sync_to_async
from django.test import Client

from accounts.models import User
from billing.models import BudgetPeriod, Hold, UsageRecord
from providers.models import ProviderConnection
from tests.chat.conftest import make_key, serve
from tests.gateway.test_openai_api import _asgi_post

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "tell me everything"}]
LIMIT = Decimal("0.30")  # at fake_price: the prompt and about a hundred reply tokens


@pytest.fixture
def keyed(alice, org_a, project_a, fake_upstream, fake_price, make_budget):
    serve(
        project_a,
        fake_upstream,
        "fake-gpt@words2000",
        "fake-gpt@ignorecap@words2000",
        "fake-gpt@tool",
    )
    make_budget(project_a.organization, limit=LIMIT, scope="project", project=project_a)
    return make_key(alice, org_a, project_a, ["chat"])


def complete(key: str, **body):
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}").post(
        "/v1/chat/completions", data=json.dumps(body), content_type="application/json"
    )


def assert_within_budget() -> UsageRecord:
    [row] = UsageRecord.objects.all()
    period = BudgetPeriod.objects.get()
    assert period.spent == row.cost
    assert period.spent <= LIMIT
    assert (period.reserved, Hold.objects.count()) == (0, 0)
    return row


def test_a_call_without_max_tokens_gets_the_cap_the_budget_can_pay(keyed, fake_upstream):
    answer = complete(keyed, model="fake-gpt@words2000", messages=HELLO)

    assert answer.status_code == 200
    choice = answer.json()["choices"][0]
    assert choice["finish_reason"] == "length"  # capped: the model would have gone on
    row = assert_within_budget()
    assert not row.over_hold
    assert 0 < row.completion_tokens < 2000


def test_a_call_asking_for_more_than_the_budget_pays_is_refused_naming_what_it_could(
    keyed, fake_upstream
):
    answer = complete(keyed, model="fake-gpt@words2000", messages=HELLO, max_tokens=1000)

    assert answer.status_code == 429
    error = answer.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert "It can pay for at most" in error["message"]
    assert answer["x-should-retry"] == "false"
    assert not fake_upstream.request_counts
    assert not UsageRecord.objects.exists()


def test_large_tool_schemas_are_held_for_too(keyed, fake_upstream):
    # Descriptions of a few thousand tokens: the prompt alone would cost more than the budget.
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{n}",
                "description": "lookup " * 400,
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
        for n in range(4)
    ]

    answer = complete(keyed, model="fake-gpt@tool", messages=HELLO, tools=tools)

    assert answer.status_code == 429
    assert answer.json()["error"]["code"] == "budget_exceeded"
    assert not fake_upstream.request_counts  # nothing was sent upstream

    small = [{**tools[0], "function": {**tools[0]["function"], "description": "lookup"}}]
    fits = complete(keyed, model="fake-gpt@tool", messages=HELLO, tools=small)
    assert fits.status_code == 200  # the same call with a small schema is affordable
    assert fits.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "tool_0"
    assert_within_budget()


async def test_a_stream_whose_upstream_ignores_the_cap_is_cut_off(keyed, fake_upstream):
    status, chunks = await _asgi_post(
        {"model": "fake-gpt@ignorecap@words2000", "messages": HELLO, "stream": True}, keyed
    )

    body = b"".join(chunks).decode()
    assert status == 200
    assert body.endswith("data: [DONE]\n\n")
    assert '"finish_reason":"length"' in body  # cut here, at what was held
    row = await database_sync_to_async(assert_within_budget)()
    assert row.estimated  # the upstream's usage never came: it was counted here
    assert not row.over_hold


def test_an_upstream_reporting_more_than_was_held_is_flagged_and_staff_told(
    keyed, fake_upstream, mailoutbox, django_capture_on_commit_callbacks
):
    User.objects.create_user(email="ops@example.com", password="x", is_staff=True)

    with django_capture_on_commit_callbacks(execute=True):
        answer = complete(keyed, model="fake-gpt@ignorecap@words2000", messages=HELLO)

    assert answer.status_code == 200
    [row] = UsageRecord.objects.all()
    assert row.over_hold
    assert row.completion_tokens == 2000  # what the upstream reported, not what was held
    [alert] = [m for m in mailoutbox if "more than was held" in m.subject]
    assert alert.to == ["ops@example.com"]  # staff (budget alerts go to the owners)
    assert str(row.request_id) in alert.body


def test_the_official_sdk_asks_once_for_a_budget_refusal(live_daphne, keyed, fake_upstream):
    sent: list[str] = []
    client = openai.OpenAI(
        base_url=f"{live_daphne}/v1",
        api_key=keyed,
        max_retries=2,  # the SDK's default: it would retry a plain 429 twice
        timeout=20,
        http_client=openai.DefaultHttpxClient(
            event_hooks={"request": [lambda request: sent.append(str(request.url))]}
        ),
    )

    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="fake-gpt@words2000", messages=HELLO, max_tokens=1000)

    assert refused.value.code == "budget_exceeded"
    assert sent == [f"{live_daphne}/v1/chat/completions"]  # one request, no retries
    assert not fake_upstream.request_counts


def test_a_connection_cap_is_the_models_longest_reply(keyed, project_a, fake_upstream):
    from providers.models import ConnectionModel

    ConnectionModel.objects.filter(
        connection__in=ProviderConnection.objects.filter(project=project_a)
    ).update(max_output_tokens=50)

    too_long = complete(keyed, model="fake-gpt@words2000", messages=HELLO, max_tokens=51)
    capped = complete(keyed, model="fake-gpt@words2000", messages=HELLO)

    assert too_long.status_code == 400
    assert too_long.json()["error"]["param"] == "max_tokens"
    assert capped.status_code == 200
    assert capped.json()["usage"]["completion_tokens"] == 50
