"""POST /v1/moderations: passed through (metered, one ledger row per upstream call) to the
project's connection that answers moderation, or answered by the project's pattern list, in
OpenAI's shape; the official SDK's ``client.moderations.create`` works unchanged."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.models import ApiKey
from billing.models import ModelPrice, UsageRecord
from chat import moderation as chat_moderation
from chat.models import ChatSettings, ModerationFlag
from gateway.moderation import MAX_INPUTS, OPENAI_CATEGORIES
from providers.crypto import encrypt
from providers.models import ProviderConnection
from providers.services import connection_model_add
from tests.chat.conftest import FAKE_KEY, fake_connection, make_key, serve

pytestmark = pytest.mark.django_db

URL = "/v1/moderations"


def post(key: str | None, body: Any):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
    return Client().post(
        URL,
        data=body if isinstance(body, bytes) else json.dumps(body),
        content_type="application/json",
        **headers,
    )


def patterns(project, text: str, *, enabled: bool = False) -> None:
    ChatSettings.objects.update_or_create(
        project=project,
        defaults={"moderation_enabled": enabled, "moderation_patterns": text},
    )
    chat_moderation.forget_config()


@pytest.fixture
def key(alice, org_a, project_a) -> str:
    return make_key(alice, org_a, project_a, ["chat"])


@pytest.fixture
def with_moderations(project_a, fake_upstream) -> None:
    """fake-gpt on a connection that answers /v1/moderations."""
    fake_connection(project_a, fake_upstream, supports_moderation=True)
    serve(project_a, fake_upstream, "fake-gpt")


@pytest.fixture
def without_moderations(project_a, fake_upstream) -> None:
    """fake-gpt on a connection that does not: the pattern list answers."""
    serve(project_a, fake_upstream, "fake-gpt")


@pytest.mark.django_db(transaction=True)
def test_the_official_sdk_is_answered_by_the_connection_and_each_call_billed_once(
    live_daphne, fake_upstream, alice, org_a, project_a
):
    fake_connection(project_a, fake_upstream, supports_moderation=True)
    serve(project_a, fake_upstream, "fake-gpt")
    # billing 0013's row (a transactional test before this one may have flushed the seeds).
    price, _ = ModelPrice.objects.get_or_create(
        model="omni-moderation-latest",
        effective_from="2026-12-06",
        defaults={
            "input_per_million": 0,
            "cached_input_per_million": 0,
            "output_per_million": 0,
        },
    )
    client = openai.OpenAI(
        base_url=f"{live_daphne}/v1",
        api_key=make_key(alice, org_a, project_a, ["chat"]),
        max_retries=0,
        timeout=20,
    )

    one = client.moderations.create(model="omni-moderation-latest", input="I will kill him")
    two = client.moderations.create(input=["you idiot", "a kind word"])

    assert one.id.startswith("modr-")
    assert one.model == "omni-moderation-latest"
    [result] = one.results
    assert result.flagged is True
    assert result.categories.violence is True
    assert result.categories.harassment is False
    assert result.category_scores.violence == 1.0
    assert result.category_applied_input_types.violence == ["text"]
    assert [r.flagged for r in two.results] == [True, False]
    assert two.results[0].categories.harassment is True
    # One upstream call per input, each its own ledger row, billed to the key.
    assert fake_upstream.request_counts == {"omni-moderation-latest": 3}
    api_key = ApiKey.objects.get(project=project_a)
    rows = list(UsageRecord.objects.order_by("pk"))
    assert [(r.source, r.model, r.status, r.api_key, r.user) for r in rows] == [
        ("moderation", "omni-moderation-latest", "ok", api_key, None)
    ] * 3
    assert {(r.price, r.cost) for r in rows} == {(price, 0)}
    assert not ModerationFlag.objects.exists()  # asked, not refused: nothing recorded


@pytest.mark.django_db(transaction=True)
def test_the_official_sdk_is_answered_by_the_pattern_list_without_a_connection(
    live_daphne, fake_upstream, alice, org_a, project_a
):
    serve(project_a, fake_upstream, "fake-gpt")
    patterns(project_a, "violence: \\bkill\\b\nspam: buy now")
    client = openai.OpenAI(
        base_url=f"{live_daphne}/v1",
        api_key=make_key(alice, org_a, project_a, ["chat"]),
        max_retries=0,
        timeout=20,
    )

    answer = client.moderations.create(input="Buy now or I kill the deal")

    [result] = answer.results
    assert answer.model == "patterns"
    assert result.flagged is True
    assert result.categories.violence is True
    assert result.categories.model_extra["spam"] is True  # its own name, as well
    assert result.category_scores.sexual == 0.0
    assert fake_upstream.request_counts == {}
    assert not UsageRecord.objects.exists()  # nothing called, nothing billed


def test_every_openai_category_is_named_and_the_projects_own_ones_too(
    without_moderations, key, project_a
):
    patterns(project_a, "Violence: stab\nspam: buy now\n# a comment")

    response = post(key, {"input": ["buy now, I stab", "hello"]})

    assert response.status_code == 200
    flagged, clean = response.json()["results"]
    assert set(flagged["categories"]) == {*OPENAI_CATEGORIES, "spam"}
    assert {name for name, hit in flagged["categories"].items() if hit} == {"violence", "spam"}
    assert flagged["category_scores"]["spam"] == 1.0
    assert flagged["category_applied_input_types"]["hate"] == ["text"]
    assert clean["flagged"] is False
    assert set(clean["categories"]) == set(OPENAI_CATEGORIES)


def test_the_pattern_list_answers_whether_or_not_the_project_moderates_its_input(
    without_moderations, key, project_a
):
    patterns(project_a, "violence: kill", enabled=True)
    on = post(key, {"input": "kill"}).json()
    patterns(project_a, "violence: kill", enabled=False)
    off = post(key, {"input": "kill"}).json()

    assert on["results"][0]["flagged"] is off["results"][0]["flagged"] is True


def test_once_read_the_answer_costs_no_query_on_models_or_settings(
    without_moderations, key, project_a
):
    patterns(project_a, "violence: kill")
    for model in ("omni-moderation-latest", "fake-gpt"):  # settings and routes now kept
        assert post(key, {"input": "kill", "model": model}).status_code == 200

    with CaptureQueriesContext(connection) as queries:
        again = post(key, {"input": "kill", "model": "omni-moderation-latest"})
        named = post(key, {"input": "kill", "model": "fake-gpt"})

    assert again.json()["results"][0]["flagged"] is named.json()["results"][0]["flagged"] is True
    read = " ".join(q["sql"] for q in queries.captured_queries)
    assert "providers_" not in read
    assert "chat_chatsettings" not in read


def test_content_parts_are_one_input_and_images_are_refused(without_moderations, key, project_a):
    patterns(project_a, "violence: kill")

    parts = post(
        key,
        {"input": [{"type": "text", "text": "I will"}, {"type": "text", "text": "kill"}]},
    )
    image = post(
        key,
        {
            "input": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ]
        },
    )

    assert [r["flagged"] for r in parts.json()["results"]] == [True]
    assert image.status_code == 400
    assert image.json()["error"]["param"] == "input[1]"
    assert "only text" in image.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        ({"model": "omni-moderation-latest"}, "input"),
        ({"input": "hi", "temperature": 1}, "temperature"),
        ({"input": []}, "input"),
        ({"input": 42}, "input"),
        ({"input": ["a", {"type": "text", "text": "b"}]}, "input"),
        ({"input": ["x"] * (MAX_INPUTS + 1)}, "input"),
        ({"input": "hi", "model": ""}, "model"),
        ({"input": [{"type": "text", "text": 3}]}, "input[0].text"),
    ],
)
def test_a_body_openai_would_refuse_is_refused_naming_the_parameter(
    with_moderations, key, fake_upstream, body, param
):
    response = post(key, body)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["param"] == param
    assert fake_upstream.request_counts == {}


def test_a_key_is_needed_and_it_needs_the_chat_scope(alice, org_a, project_a, without_moderations):
    read_only = make_key(alice, org_a, project_a, ["read"])

    assert post(None, {"input": "hi"}).status_code == 401
    assert post("lgw_not-a-key", {"input": "hi"}).status_code == 401
    refused = post(read_only, {"input": "hi"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"


def test_an_outsiders_key_gets_its_own_projects_answer_and_nothing_of_ours(
    with_moderations, charlie, org_b, project_b, project_a, fake_upstream
):
    patterns(project_a, "violence: kill")
    theirs = make_key(charlie, org_b, project_b, ["chat"])

    response = post(theirs, {"input": "I will kill him", "model": "fake-gpt"})

    # Project B has no connection that moderates and no patterns: A's are not B's.
    assert response.status_code == 200
    assert response.json()["model"] == "patterns"
    assert response.json()["results"][0]["flagged"] is False
    assert fake_upstream.request_counts == {}
    assert not UsageRecord.objects.exists()


def test_a_model_of_the_project_is_checked_where_its_connection_says(
    without_moderations, key, project_a, fake_upstream, fake_price
):
    """fake-gpt's connection does not moderate; another connection of the project does."""
    moderator = ProviderConnection.objects.create(
        organization=project_a.organization,
        project=project_a,
        kind=ProviderConnection.Kind.COMPATIBLE,
        name="Moderator",
        base_url=fake_upstream.base_url,
        timeout=5.0,
        max_retries=0,
        api_key_encrypted=encrypt(FAKE_KEY),
        supports_moderation=True,
    )
    connection_model_add(actor=None, connection=moderator, name="fake-gpt-mini")
    patterns(project_a, "violence: kill")

    named = post(key, {"input": "kill", "model": "fake-gpt"})  # its connection: no moderation
    other = post(key, {"input": "kill"})  # not a project model: the connection that moderates
    mini = post(key, {"input": "kill", "model": "fake-gpt-mini"})  # on the moderating one

    assert (named.json()["model"], named.json()["results"][0]["flagged"]) == ("patterns", True)
    assert other.json()["model"] == "omni-moderation-latest"
    assert mini.json()["model"] == "fake-gpt-mini"
    assert fake_upstream.request_counts == {"omni-moderation-latest": 1, "fake-gpt-mini": 1}
    rows = UsageRecord.objects.order_by("pk")
    assert [(r.model, r.connection_id) for r in rows] == [
        ("omni-moderation-latest", moderator.pk),
        ("fake-gpt-mini", moderator.pk),
    ]


def test_an_upstream_failure_is_answered_in_openais_shape_and_its_row_says_error(
    with_moderations, key, fake_upstream
):
    response = post(key, {"input": "hi", "model": "omni-moderation-latest@500"})

    assert response.status_code >= 500
    assert response.json()["error"]["code"] == "upstream_error"
    [row] = UsageRecord.objects.all()
    assert (row.source, row.status, row.cost) == ("moderation", "error", 0)


def test_an_unpriced_moderation_model_is_refused_before_it_is_sent(
    with_moderations, key, fake_upstream, settings
):
    settings.BILLING_ALLOW_UNPRICED = False

    response = post(key, {"input": "hi", "model": "house-moderation"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_unpriced"
    assert fake_upstream.request_counts == {}
    assert not UsageRecord.objects.exists()
