"""/v1 moderation: with the key's project moderating, a chat completion's input is checked
before the chat call is reserved; flagged, it is refused in OpenAI's shape and costs only the
check."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.models import ApiKey
from billing.models import Hold, UsageRecord
from chat import moderation
from chat.models import ChatSettings, ModerationFlag
from tests.chat.conftest import fake_connection, make_key, serve

pytestmark = pytest.mark.django_db

URL = "/v1/chat/completions"


def post(key: str, body: dict[str, Any]):
    return Client().post(
        URL,
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def chat(*messages: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "model": "fake-gpt",
        "messages": [{"role": role, "content": content} for role, content in messages],
        **extra,
    }


def moderate(project, patterns: str = "") -> None:
    ChatSettings.objects.update_or_create(
        project=project,
        defaults={"moderation_enabled": True, "moderation_patterns": patterns},
    )
    moderation.forget_config()


@pytest.fixture
def key(alice, org_a, project_a) -> str:
    return make_key(alice, org_a, project_a, ["chat"])


@pytest.fixture
def with_moderations(project_a, fake_upstream) -> None:
    """fake-gpt on a connection that answers /v1/moderations."""
    fake_connection(project_a, fake_upstream, supports_moderation=True)
    serve(project_a, fake_upstream, "fake-gpt")


def test_flagged_input_is_refused_and_only_the_check_is_billed(
    with_moderations, key, project_a, fake_upstream
):
    moderate(project_a)

    response = post(key, chat(("system", "Be brief."), ("user", "I will kill him")))

    assert response.status_code == 400
    assert response["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error == {
        "message": "Your message was not sent: it was flagged for violence.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "content_flagged",
    }
    assert fake_upstream.request_counts == {"omni-moderation-latest": 1}  # never the chat model
    assert fake_upstream.requests[-1]["input"] == "Be brief.\n\nI will kill him"
    [row] = UsageRecord.objects.all()
    api_key = ApiKey.objects.get(project=project_a)
    assert (row.source, row.model, row.status, row.api_key, row.user, row.cost) == (
        "moderation",
        "omni-moderation-latest",
        "ok",
        api_key,
        None,
        0,
    )
    [flag] = ModerationFlag.objects.all()
    assert (flag.project, flag.source, flag.target, flag.categories) == (
        project_a,
        "gateway",
        "input",
        ["violence"],
    )
    assert (flag.api_key, flag.user, flag.checked_by) == (
        api_key,
        None,
        "connection:omni-moderation-latest",
    )
    assert flag.excerpt == "Be brief.\n\nI will kill him"
    assert not Hold.objects.exists()


def test_a_stream_is_refused_before_it_starts(with_moderations, key, project_a, fake_upstream):
    moderate(project_a)

    response = post(key, chat(("user", "I will murder it"), stream=True))

    assert response.status_code == 400
    assert response["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "content_flagged"
    assert "fake-gpt" not in fake_upstream.request_counts
    assert list(UsageRecord.objects.values_list("source", flat=True)) == ["moderation"]


def test_clean_input_is_checked_then_answered(with_moderations, key, project_a, fake_upstream):
    moderate(project_a)

    response = post(
        key,
        chat(
            ("developer", "Answer kindly."),
            ("assistant", "I could kill for a coffee."),  # what a model said is not checked
            ("user", "hello there"),
        ),
    )

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Echo: hello there"
    assert fake_upstream.request_counts == {"omni-moderation-latest": 1, "fake-gpt": 1}
    moderation_request = next(r for r in fake_upstream.requests if "input" in r)
    assert moderation_request["input"] == "Answer kindly.\n\nhello there"
    assert sorted(UsageRecord.objects.values_list("source", flat=True)) == ["api", "moderation"]
    assert not ModerationFlag.objects.exists()


def test_text_parts_are_checked_too(with_moderations, key, project_a, fake_upstream):
    moderate(project_a)
    body = {
        "model": "fake-gpt",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "you absolute moron"}]},
        ],
    }

    response = post(key, body)

    assert response.status_code == 400
    assert response.json()["error"]["message"].endswith("flagged for harassment.")


def test_where_the_connection_has_no_moderations_the_patterns_decide_and_nothing_is_billed(
    key, project_a, fake_upstream
):
    serve(project_a, fake_upstream, "fake-gpt")
    moderate(project_a, patterns="spam: \\bbuy now\\b")

    refused = post(key, chat(("user", "BUY NOW, cheap watches")))

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "content_flagged"
    assert refused.json()["error"]["message"].endswith("flagged for spam.")
    assert sum(fake_upstream.request_counts.values()) == 0
    assert not UsageRecord.objects.exists()
    assert ModerationFlag.objects.get().checked_by == "patterns"


def test_a_failing_check_fails_closed_with_its_one_error_row(
    with_moderations, key, project_a, fake_upstream, settings
):
    moderate(project_a)
    settings.MODERATION_MODEL = "omni-moderation-latest@500"

    response = post(key, chat(("user", "hello there")))

    assert response.status_code == 503
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("moderation_unavailable", "api_error")
    assert "fake-gpt" not in fake_upstream.request_counts
    [row] = UsageRecord.objects.all()
    assert (row.source, row.status, row.cost) == ("moderation", "error", 0)
    assert not ModerationFlag.objects.exists()


def test_an_invalid_body_is_refused_before_any_check(
    with_moderations, key, project_a, fake_upstream
):
    moderate(project_a)

    response = post(key, {"model": "fake-gpt", "messages": "kill"})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
    assert sum(fake_upstream.request_counts.values()) == 0
    assert not UsageRecord.objects.exists()


def test_with_moderation_off_nothing_is_checked_and_no_query_is_added(
    with_moderations, key, project_a, fake_upstream
):
    assert post(key, chat(("user", "I will kill him"))).status_code == 200  # settings now kept

    with CaptureQueriesContext(connection) as queries:
        response = post(key, chat(("user", "I will kill him again")))

    assert response.status_code == 200
    assert fake_upstream.request_counts == {"fake-gpt": 2}
    assert not [q for q in queries.captured_queries if "chat_chatsettings" in q["sql"]]
    assert not ModerationFlag.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_official_sdk_sees_a_bad_request_naming_the_categories(
    live_daphne, fake_upstream, alice, org_a, project_a
):
    fake_connection(project_a, fake_upstream, supports_moderation=True)
    serve(project_a, fake_upstream, "fake-gpt")
    ChatSettings.objects.create(project=project_a, moderation_enabled=True)
    client = openai.OpenAI(
        base_url=f"{live_daphne}/v1",
        api_key=make_key(alice, org_a, project_a, ["chat"]),
        max_retries=2,  # x-should-retry: false, so never used
        timeout=20,
    )

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="fake-gpt", messages=[{"role": "user", "content": "I will stab you, idiot"}]
        )

    assert refused.value.code == "content_flagged"
    assert refused.value.param == "messages"
    assert "flagged for harassment, violence" in refused.value.message
    assert fake_upstream.request_counts == {"omni-moderation-latest": 1}
    assert list(UsageRecord.objects.values_list("source", flat=True)) == ["moderation"]
    assert ModerationFlag.objects.get().source == "gateway"
