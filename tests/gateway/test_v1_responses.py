"""/v1/responses: the official SDK, unchanged, against a live server (the fake upstream and the
local model), and what the endpoints refuse.

Chained responses rebuild their history from the stored chain for a chat-completions upstream
(the fake echoes the last user message, and records every request: the second request's
messages show the first exchange), and pass ``previous_response_id`` through, as the upstream's
own id, to a connection that speaks the Responses API (the fake's ``@history`` answers with every
user message of the conversation it kept). Each call is billed once; stored responses belong to
the key's project."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import jsonschema
import openai
import pytest
from django.test import Client
from django.utils import timezone
from pydantic import BaseModel

from accounts.models import ApiKey
from billing.models import Budget, Hold, ModelPrice, UsageRecord
from core import config_cache
from gateway.models import StoredResponse
from gateway.responses import responses_line_run
from providers.llm.catalog import LOCAL_MODEL_NAME
from providers.models import ConnectionModel
from tests.chat.conftest import fake_connection, make_key, serve

pytestmark = pytest.mark.django_db

URL = "/v1/responses"
FAKE_MODELS = (
    "fake-gpt",
    "fake-gpt@tool",
    "fake-gpt@500",
    "fake-gpt@history",
    "fake-gpt@tool@history",
)
WEATHER = {
    "type": "function",
    "name": "weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"query": {"type": "string"}},
        "required": ["query"],
    },
}


def post(key: str, body: dict[str, Any], *, raw: bytes | None = None):
    return Client().post(
        URL,
        data=raw if raw is not None else json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def get(key: str, path: str):
    return Client().get(path, HTTP_AUTHORIZATION=f"Bearer {key}")


def delete(key: str, path: str):
    return Client().delete(path, HTTP_AUTHORIZATION=f"Bearer {key}")


@pytest.fixture
def key(alice, org_a, project_a, fake_upstream, fake_price) -> str:
    serve(project_a, fake_upstream, *FAKE_MODELS)
    return make_key(alice, org_a, project_a)


@pytest.fixture
def local_price(db) -> ModelPrice:
    """The local model's price of 0 (seeded by a migration, which a transactional test's
    flush empties)."""
    price, _ = ModelPrice.objects.get_or_create(
        model=LOCAL_MODEL_NAME,
        effective_from="2024-01-01",
        defaults={
            "input_per_million": Decimal(0),
            "cached_input_per_million": Decimal(0),
            "output_per_million": Decimal(0),
        },
    )
    return price


@pytest.fixture
def sdk(
    live_daphne, fake_upstream, fake_price, local_price, alice, org_a, project_a
) -> Iterator[openai.OpenAI]:
    """The official client, with a key of a project that may use the fake upstream's models and
    the built-in local model."""
    serve(project_a, fake_upstream, *FAKE_MODELS)
    with openai.OpenAI(
        base_url=f"{live_daphne}/v1",
        api_key=make_key(alice, org_a, project_a),
        max_retries=0,
        timeout=120,
    ) as client:
        yield client


def messages_sent(fake_upstream) -> list[list[dict[str, Any]]]:
    return [body["messages"] for body in fake_upstream.requests if "messages" in body]


# --- the official SDK, against a live server -----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_sdk_chains_two_responses_and_the_second_request_carries_the_first_exchange(
    sdk, fake_upstream, project_a
):
    first = sdk.responses.create(
        model="fake-gpt", input="My cat is called Nabi.", instructions="Answer briefly."
    )
    second = sdk.responses.create(
        model="fake-gpt",
        input="What is my cat called?",
        previous_response_id=first.id,
        instructions="Answer in Korean.",
    )

    assert first.id.startswith("resp_")
    assert (first.object, first.status, first.model) == ("response", "completed", "fake-gpt")
    assert first.output_text == "Echo: My cat is called Nabi."
    assert first.output[0].type == "message"
    assert first.output[0].role == "assistant"
    assert first.usage.output_tokens == 6  # one per word, as the fake counts
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens
    assert first.instructions == "Answer briefly."
    assert second.previous_response_id == first.id
    assert second.output_text == "Echo: What is my cat called?"
    # The history went upstream: the first exchange, then the new question; the first
    # response's instructions are not carried over, as OpenAI documents.
    assert messages_sent(fake_upstream) == [
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "My cat is called Nabi."},
        ],
        [
            {"role": "system", "content": "Answer in Korean."},
            {"role": "user", "content": "My cat is called Nabi."},
            {"role": "assistant", "content": "Echo: My cat is called Nabi."},
            {"role": "user", "content": "What is my cat called?"},
        ],
    ]
    # Billed once each: one row per upstream call, as the upstream counted.
    rows = list(UsageRecord.objects.order_by("id"))
    assert [(r.source, r.status, r.model, r.estimated) for r in rows] == [
        ("api", "ok", "fake-gpt", False)
    ] * 2
    assert [(r.prompt_tokens, r.completion_tokens) for r in rows] == [
        (first.usage.input_tokens, 6),
        (second.usage.input_tokens, second.usage.output_tokens),
    ]
    assert fake_upstream.request_counts["fake-gpt"] == 2
    assert list(StoredResponse.objects.for_project(project_a).values_list("id", flat=True)) == [
        second.id,
        first.id,
    ]


@pytest.mark.django_db(transaction=True)
def test_the_sdk_reads_back_pages_through_and_deletes_a_stored_response(sdk):
    asked = [
        {"role": "developer", "content": "Be terse."},
        *({"role": "user", "content": f"note {n}"} for n in range(4)),
    ]
    created = sdk.responses.create(model="fake-gpt", input=asked, metadata={"topic": "notes"})

    retrieved = sdk.responses.retrieve(created.id)
    assert retrieved.id == created.id
    assert retrieved.output_text == created.output_text == "Echo: note 3"
    assert retrieved.created_at == created.created_at
    assert retrieved.usage.input_tokens == created.usage.input_tokens
    assert retrieved.metadata == {"topic": "notes"}

    # Newest first by default, a page at a time; the SDK follows the cursor by itself.
    everything = list(sdk.responses.input_items.list(created.id, limit=2))
    assert [item.content[0].text for item in everything] == [
        "note 3",
        "note 2",
        "note 1",
        "note 0",
        "Be terse.",
    ]
    assert everything[-1].role == "developer"
    assert all(item.id.startswith("msg_") for item in everything)
    page = sdk.responses.input_items.list(created.id, limit=2, order="asc")
    assert [item.content[0].text for item in page.data] == ["Be terse.", "note 0"]
    assert page.has_more is True
    assert page.first_id == page.data[0].id
    assert page.last_id == page.data[1].id
    after = sdk.responses.input_items.list(created.id, order="asc", after=page.last_id, limit=10)
    assert [item.content[0].text for item in after.data] == ["note 1", "note 2", "note 3"]
    assert after.has_more is False

    # ``before``: the API takes it, the SDK's list() only as an extra query parameter.
    before = sdk.responses.input_items.list(created.id, extra_query={"before": everything[2].id})
    assert [item.content[0].text for item in before.data] == ["note 3", "note 2"]
    with pytest.raises(openai.BadRequestError):
        sdk.responses.input_items.list(created.id, after="msg_unknown")
    with pytest.raises(openai.BadRequestError):
        sdk.responses.input_items.list(created.id, limit=101)

    deleted = sdk.responses.delete(created.id)
    assert deleted is None  # the SDK reads nothing from the answer
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.input_items.list(created.id)


@pytest.mark.django_db(transaction=True)
def test_a_response_not_stored_can_be_neither_read_back_nor_continued(sdk, fake_upstream):
    unstored = sdk.responses.create(model="fake-gpt", input="forget me", store=False)

    assert unstored.output_text == "Echo: forget me"
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError) as refused:
        sdk.responses.create(model="fake-gpt", input="and now?", previous_response_id=unstored.id)
    assert refused.value.param == "previous_response_id"
    assert not StoredResponse.objects.exists()
    assert fake_upstream.request_counts["fake-gpt"] == 1  # the refused one sent nothing
    assert UsageRecord.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_function_tool_round_trip(sdk, fake_upstream):
    called = sdk.responses.create(
        model="fake-gpt@tool", input="weather in Seoul tomorrow", tools=[WEATHER]
    )

    (call,) = called.output
    assert call.type == "function_call"
    assert call.name == "weather"
    assert call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"query": "weather in Seoul tomorrow"}
    assert called.output_text == ""
    assert called.tools[0].name == "weather"

    answered = sdk.responses.create(
        model="fake-gpt@tool",
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}],
        tools=[WEATHER],
    )

    assert answered.output_text == "Echo: sunny, 21C"
    # Upstream: the question, the model's call, then its result, as chat completions take them.
    *_, last = messages_sent(fake_upstream)
    assert last == [
        {"role": "user", "content": "weather in Seoul tomorrow"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "weather", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21C"},
    ]
    assert fake_upstream.requests[-1]["tools"] == [
        {
            "type": "function",
            "function": {k: WEATHER[k] for k in ("name", "description", "parameters")},
        }
    ]
    assert UsageRecord.objects.filter(status="ok").count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_local_model_continues_a_chain(sdk):
    first = sdk.responses.create(
        model=LOCAL_MODEL_NAME,
        input="My favourite colour is green.",
        max_output_tokens=24,
        temperature=0,
    )
    second = sdk.responses.create(
        model=LOCAL_MODEL_NAME,
        input="What is my favourite colour?",
        previous_response_id=first.id,
        max_output_tokens=24,
        temperature=0,
    )

    for answer in (first, second):
        assert answer.status in ("completed", "incomplete")
        assert answer.output_text.strip()
    # The first exchange went with the second question: it counted as input.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    rows = UsageRecord.objects.filter(model=LOCAL_MODEL_NAME).order_by("id")
    assert [(r.source, r.status, r.prompt_tokens) for r in rows] == [
        ("api", "ok", first.usage.input_tokens),
        ("api", "ok", second.usage.input_tokens),
    ]


CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


@pytest.mark.django_db(transaction=True)
def test_the_local_model_answers_json_that_matches_the_schema(sdk):
    answer = sdk.responses.create(
        model=LOCAL_MODEL_NAME,
        instructions="Answer with the city and its population.",
        input="What is the capital of France, and how many people live there?",
        text={"format": {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}},
        temperature=0,
        max_output_tokens=200,
    )

    assert answer.status == "completed"
    jsonschema.validate(json.loads(answer.output_text), CITY)
    assert answer.text.format.type == "json_schema"

    # The SDK's Pydantic recipe sends the same format and parses what comes back.
    parsed = sdk.responses.parse(
        model=LOCAL_MODEL_NAME,
        input="What is the capital of Italy, and how many people live there?",
        text_format=City,
        temperature=0,
        max_output_tokens=200,
    )
    assert isinstance(parsed.output_parsed, City)
    assert parsed.output_parsed.city


class City(BaseModel):
    city: str
    population: int


# --- a connection that speaks the Responses API ------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_responses_upstream_gets_its_own_previous_response_id(
    live_daphne, fake_upstream, fake_price, alice, org_a, project_a
):
    fake_connection(project_a, fake_upstream, supports_responses=True)
    serve(project_a, fake_upstream, "fake-gpt@history")
    client = openai.OpenAI(
        base_url=f"{live_daphne}/v1",
        api_key=make_key(alice, org_a, project_a),
        max_retries=0,
        timeout=30,
    )

    first = client.responses.create(model="fake-gpt@history", input="I live in Busan.")
    second = client.responses.create(
        model="fake-gpt@history", input="Where do I live?", previous_response_id=first.id
    )
    streamed = list(
        client.responses.create(
            model="fake-gpt@history",
            input="And my name?",
            previous_response_id=second.id,
            stream=True,
        )
    )

    assert first.id.startswith("resp_")
    # The upstream kept the conversation itself: its answer names every user message.
    assert second.output_text == "Echo: I live in Busan. / Where do I live?"
    assert streamed[-1].type == "response.completed"
    assert streamed[-1].response.output_text == (
        "Echo: I live in Busan. / Where do I live? / And my name?"
    )
    stored = {r.id: r for r in StoredResponse.objects.all()}
    bodies = [body for body in fake_upstream.requests if "input" in body]
    assert [body.get("previous_response_id") for body in bodies] == [
        None,
        stored[first.id].upstream_id,
        stored[second.id].upstream_id,
    ]
    assert [body["input"] for body in bodies] == [
        "I live in Busan.",
        "Where do I live?",
        "And my name?",
    ]
    assert stored[first.id].upstream_id
    assert stored[first.id].upstream_id != first.id
    # Reserved, capped and settled like any call: one row each, the upstream's usage.
    assert all(isinstance(body["max_output_tokens"], int) for body in bodies)
    rows = list(UsageRecord.objects.order_by("id"))
    assert [(r.source, r.status, r.estimated) for r in rows] == [("api", "ok", False)] * 3
    assert [r.prompt_tokens for r in rows[:2]] == [
        first.usage.input_tokens,
        second.usage.input_tokens,
    ]
    assert client.responses.retrieve(second.id).output_text == second.output_text


def test_a_chain_moved_to_a_responses_upstream_sends_its_history_as_input(
    key, fake_upstream, project_a
):
    first = post(key, {"model": "fake-gpt@history", "input": "I live in Busan."}).json()
    connection = fake_connection(project_a, fake_upstream)
    connection.supports_responses = True
    connection.save()

    second = post(
        key,
        {
            "model": "fake-gpt@history",
            "input": "Where do I live?",
            "previous_response_id": first["id"],
        },
    )

    assert second.status_code == 200, second.content
    # No upstream id to continue from: the stored chain went as items.
    body = fake_upstream.requests[-1]
    assert "previous_response_id" not in body
    assert [item.get("role") for item in body["input"]] == ["user", "assistant", "user"]
    assert second.json()["output"][0]["content"][0]["text"] == (
        "Echo: I live in Busan. / Where do I live?"
    )


def test_a_responses_upstream_failing_is_an_openai_error_billed_once(key, project_a, fake_upstream):
    connection = fake_connection(project_a, fake_upstream)
    connection.supports_responses = True
    connection.save()

    failed = post(key, {"model": "fake-gpt@500", "input": "hello"})
    unstored = post(key, {"model": "fake-gpt", "input": "hello", "store": False})

    assert failed.status_code == 502
    assert failed.json()["error"]["code"] == "upstream_error"
    assert unstored.status_code == 200
    assert unstored.json()["output"][0]["content"][0]["text"] == "Echo: hello"
    assert fake_upstream.requests[-1]["store"] is False  # as asked, upstream too
    assert [r.status for r in UsageRecord.objects.order_by("id")] == ["error", "ok"]
    assert not StoredResponse.objects.exists()


# --- tenancy and keys --------------------------------------------------------------------------


def test_another_projects_key_finds_no_response(
    key, charlie, org_b, project_b, fake_upstream, project_a
):
    mine = post(key, {"model": "fake-gpt", "input": "secret plans"}).json()["id"]
    outsider = make_key(charlie, org_b, project_b)
    fake_upstream.reset()

    answers = [
        get(outsider, f"{URL}/{mine}"),
        delete(outsider, f"{URL}/{mine}"),
        get(outsider, f"{URL}/{mine}/input_items"),
        post(
            outsider,
            {"model": LOCAL_MODEL_NAME, "input": "go on", "previous_response_id": mine},
        ),
    ]

    assert [a.status_code for a in answers] == [404] * 4
    assert answers[0].json()["error"]["message"] == f"No response found with id '{mine}'."
    assert answers[3].json()["error"]["param"] == "previous_response_id"
    assert answers[3].json()["error"]["code"] == "previous_response_not_found"
    assert all("secret" not in a.content.decode() for a in answers)
    assert not fake_upstream.request_counts
    assert StoredResponse.objects.for_project(project_a).filter(pk=mine).exists()
    assert get(key, f"{URL}/{mine}").status_code == 200


def test_a_missing_response_is_the_same_404(key):
    answers = [
        get(key, f"{URL}/resp_nothing"),
        delete(key, f"{URL}/resp_nothing"),
        get(key, f"{URL}/resp_nothing/input_items"),
    ]

    assert [a.status_code for a in answers] == [404] * 3
    assert answers[0].json()["error"] == {
        "message": "No response found with id 'resp_nothing'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_a_read_only_key_reads_responses_but_cannot_create_or_delete_them(
    key, alice, org_a, project_a
):
    made = post(key, {"model": "fake-gpt", "input": "hello"}).json()["id"]
    reader = make_key(alice, org_a, project_a, ["read"])

    assert get(reader, f"{URL}/{made}").status_code == 200
    assert get(reader, f"{URL}/{made}/input_items").status_code == 200
    for refused in (
        post(reader, {"model": "fake-gpt", "input": "hi"}),
        delete(reader, f"{URL}/{made}"),
    ):
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "insufficient_scope"
    assert StoredResponse.objects.filter(pk=made).exists()
    assert (
        get(
            key,
            f"{URL}/{made}",
        ).status_code
        == 200
    )
    assert Client().get(f"{URL}/{made}").status_code == 401


def test_a_deleted_response_is_gone_and_the_chain_goes_on_from_what_is_left(key, fake_upstream):
    first = post(key, {"model": "fake-gpt", "input": "one"}).json()["id"]
    second = post(key, {"model": "fake-gpt", "input": "two", "previous_response_id": first})

    deleted = delete(key, f"{URL}/{first}")

    assert deleted.status_code == 200
    assert deleted.json() == {"id": first, "object": "response", "deleted": True}
    assert get(key, f"{URL}/{first}").status_code == 404
    third = post(
        key, {"model": "fake-gpt", "input": "three", "previous_response_id": second.json()["id"]}
    )
    assert third.status_code == 200
    assert [m["content"] for m in messages_sent(fake_upstream)[-1]] == [
        "two",
        "Echo: two",
        "three",
    ]


def test_a_project_that_moderates_checks_the_new_input_only(key, project_a, fake_upstream):
    from chat import moderation
    from chat.models import ChatSettings

    connection = fake_connection(project_a, fake_upstream)
    connection.supports_moderation = True
    connection.save()
    said = post(key, {"model": "fake-gpt", "input": "I could kill for a coffee."}).json()["id"]
    ChatSettings.objects.update_or_create(project=project_a, defaults={"moderation_enabled": True})
    moderation.forget_config()
    fake_upstream.reset()

    flagged = post(key, {"model": "fake-gpt", "instructions": "Be brief.", "input": "I will kill"})
    clean = post(key, {"model": "fake-gpt", "input": "hello", "previous_response_id": said})

    assert flagged.status_code == 400
    assert flagged.json()["error"]["code"] == "content_flagged"
    assert flagged.json()["error"]["param"] == "input"
    assert clean.status_code == 200
    checked = [body["input"] for body in fake_upstream.requests if "messages" not in body]
    assert checked == ["Be brief.\n\nI will kill", "hello"]  # the history was checked before
    assert fake_upstream.request_counts["fake-gpt"] == 1
    assert sorted(UsageRecord.objects.values_list("source", flat=True)) == [
        "api",
        "api",
        "moderation",
        "moderation",
    ]


def test_a_repeat_with_the_same_idempotency_key_is_replayed_not_billed_again(key, fake_upstream):
    def create(idempotency_key: str, text: str):
        return Client().post(
            URL,
            data=json.dumps({"model": "fake-gpt", "input": text}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {key}",
            HTTP_IDEMPOTENCY_KEY=idempotency_key,
        )

    first, repeat = create("k-1", "hello"), create("k-1", "hello")
    changed = create("k-1", "something else")

    assert first.status_code == repeat.status_code == 200
    assert repeat["Idempotent-Replayed"] == "true"
    assert repeat.json() == first.json()
    assert changed.status_code == 409
    assert fake_upstream.request_counts["fake-gpt"] == 1
    assert UsageRecord.objects.count() == StoredResponse.objects.count() == 1


# --- refusals before anything is sent ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "fake-gpt", "input": "hi", "frobnicate": 1}, "frobnicate", None),
        ({"model": "fake-gpt"}, "input", None),
        ({"input": "hi"}, "model", None),
        ({"model": "fake-gpt", "input": []}, "input", None),
        (
            {"model": "fake-gpt", "input": [{"type": "reasoning", "id": "rs_1"}]},
            "input[0].type",
            None,
        ),
        (
            {"model": "fake-gpt", "input": [{"role": "robot", "content": "hi"}]},
            "input[0].role",
            None,
        ),
        ({"model": "fake-gpt", "input": "hi", "temperature": 3}, "temperature", None),
        (
            {"model": "fake-gpt", "input": "hi", "tools": [{"type": "web_search"}]},
            "tools[0].type",
            None,
        ),
        (
            {
                "model": "fake-gpt",
                "input": "hi",
                "tools": [{"type": "function", "name": "no spaces"}],
            },
            "tools[0].name",
            None,
        ),
        (
            {
                "model": "fake-gpt",
                "input": "hi",
                "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 12}}},
            },
            "text.format.schema",
            "invalid_json_schema",
        ),
        ({"model": "fake-gpt", "input": "hi", "max_output_tokens": 0}, "max_output_tokens", None),
        ({"model": "fake-gpt", "input": "hi", "conversation": "conv_1"}, "conversation", None),
        ({"model": "fake-gpt", "input": "hi", "stream_options": {}}, "stream_options", None),
        ({"model": "gpt-9", "input": "hi"}, "model", "model_not_found"),
        ({"model": LOCAL_MODEL_NAME, "input": "hi", "tools": [WEATHER]}, "tools", None),
    ],
)
def test_a_malformed_request_is_refused_naming_the_param(key, fake_upstream, body, param, code):
    answer = post(key, body)

    assert answer.status_code in (400, 404), answer.content
    error = answer.json()["error"]
    assert error["param"] == param
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert not fake_upstream.request_counts
    assert not UsageRecord.objects.exists()
    assert not StoredResponse.objects.exists()


def test_a_body_that_is_not_json_is_refused(key):
    answer = post(key, {}, raw=b"{not json")

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_json"


def test_images_for_a_model_without_vision_are_refused_naming_the_part(key, fake_upstream):
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    item = {"role": "user", "content": [{"type": "input_text", "text": "what is it?"}, image]}

    answer = post(key, {"model": "fake-gpt", "input": [item]})

    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "input[0].content[1]"
    assert answer.json()["error"]["code"] == "model_lacks_vision"
    assert not fake_upstream.request_counts


def test_images_go_to_a_vision_model_as_image_url_parts(key, project_a, fake_upstream):
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    ConnectionModel.objects.filter(name="fake-gpt", connection__project=project_a).update(
        supports_vision=True
    )
    config_cache.clear()
    item = {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "what is it?"},
            {"type": "input_image", "image_url": url, "detail": "low"},
        ],
    }

    answer = post(key, {"model": "fake-gpt", "input": [item]})

    assert answer.status_code == 200, answer.content
    assert fake_upstream.requests[-1]["messages"][-1]["content"] == [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
    ]
    text = answer.json()["output"][0]["content"][0]["text"]
    assert text == f"Echo: what is it? [image/png {len(buffer.getvalue())} B]"
    listed = get(key, f"{URL}/{answer.json()['id']}/input_items").json()["data"]
    assert listed[0]["content"][1] == {
        "type": "input_image",
        "image_url": url,
        "detail": "low",
        "file_id": None,
    }


def test_over_budget_nothing_is_sent_and_nothing_is_kept(key, org_a, project_a, fake_upstream):
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

    answer = post(key, {"model": "fake-gpt", "input": "hello", "max_output_tokens": 1000})

    assert answer.status_code == 429
    assert answer.json()["error"]["code"] == "budget_exceeded"
    assert answer["x-should-retry"] == "false"
    assert not fake_upstream.request_counts
    assert not UsageRecord.objects.exists()
    assert not StoredResponse.objects.exists()


# --- what the upstream does --------------------------------------------------------------------


def test_an_upstream_failure_is_an_openai_error_billed_once_and_nothing_is_kept(key, fake_upstream):
    answer = post(key, {"model": "fake-gpt@500", "input": "hello"})

    assert answer.status_code == 502
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["type"]) == ("upstream_error", "api_error")
    assert "sk-test" not in answer.content.decode()
    record = UsageRecord.objects.get()
    assert (record.status, record.source, record.prompt_tokens) == ("error", "api", 0)
    assert fake_upstream.request_counts["fake-gpt@500"] == 1
    assert not StoredResponse.objects.exists()


def test_a_reply_cut_at_max_output_tokens_is_incomplete(key, fake_upstream):
    answer = post(
        key, {"model": "fake-gpt", "input": "one two three four five", "max_output_tokens": 3}
    )

    assert answer.status_code == 200
    response = answer.json()
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"
    assert response["output"][0]["content"][0]["text"] == "Echo: one two "
    assert response["usage"]["output_tokens"] == 3
    assert response["max_output_tokens"] == 3
    assert fake_upstream.requests[-1]["max_tokens"] == 3
    assert StoredResponse.objects.get().status == "incomplete"


def test_parameters_are_translated_and_echoed(key, fake_upstream):
    answer = post(
        key,
        {
            "model": "fake-gpt",
            "input": "hello",
            "temperature": 0.3,
            "top_p": 0.9,
            "user": "u-42",
            "text": {"format": {"type": "json_object"}},
            "tool_choice": {"type": "function", "name": "weather"},
            "tools": [WEATHER],
            "parallel_tool_calls": False,
        },
    )

    assert answer.status_code == 200, answer.content
    sent = fake_upstream.requests[-1]
    assert (sent["temperature"], sent["top_p"], sent["user"]) == (0.3, 0.9, "u-42")
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert sent["parallel_tool_calls"] is False
    assert "store" not in sent
    assert "metadata" not in sent
    response = answer.json()
    assert (response["temperature"], response["top_p"], response["user"]) == (0.3, 0.9, "u-42")
    assert response["text"]["format"] == {"type": "json_object"}
    assert response["tool_choice"] == {"type": "function", "name": "weather"}
    assert response["parallel_tool_calls"] is False
    assert response["tools"][0]["name"] == "weather"
    retrieved = get(key, f"{URL}/{response['id']}").json()
    assert {k: v for k, v in retrieved.items() if k != "output"} == {
        k: v for k, v in response.items() if k != "output"
    }


def test_the_history_is_trimmed_to_the_window_oldest_first(key, project_a, fake_upstream):
    ConnectionModel.objects.filter(name="fake-gpt", connection__project=project_a).update(
        context_window=400
    )
    previous = None
    for n in range(6):
        text = f"turn {n}: " + "words " * 30
        body = {"model": "fake-gpt", "input": text, "max_output_tokens": 40}
        if previous:
            body["previous_response_id"] = previous
        answer = post(key, body)
        assert answer.status_code == 200, answer.content
        previous = answer.json()["id"]

    last = messages_sent(fake_upstream)[-1]
    texts = [m["content"] for m in last]
    assert texts[-1].startswith("turn 5:")
    assert any(t.startswith("turn 4:") for t in texts)  # the newest turns were kept
    assert not any(t.startswith("turn 0:") for t in texts)  # the oldest were left out
    assert [m["role"] for m in last[:-1]] == ["user", "assistant"] * ((len(last) - 1) // 2)

    refused = post(
        key,
        {
            "model": "fake-gpt",
            "input": "and?",
            "previous_response_id": previous,
            "max_output_tokens": 40,
            "truncation": "disabled",
        },
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded"


# --- a batch line ------------------------------------------------------------------------------


def line(*, key: ApiKey, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A batch line, run and recorded as the batch runner does."""
    run = responses_line_run(key=key, body=body)
    if run.settle is not None:
        run.settle()
    return run.status_code, run.body


def test_a_batch_line_is_billed_as_a_batch_line_and_never_raises(
    alice, org_a, project_a, fake_upstream, fake_price
):
    serve(project_a, fake_upstream)
    make_key(alice, org_a, project_a)
    api_key = ApiKey.objects.select_related("project").get(project=project_a)

    ok = line(key=api_key, body={"model": "fake-gpt", "input": "line one"})
    bad = line(key=api_key, body={"model": "fake-gpt", "input": 12})
    streaming = line(key=api_key, body={"model": "fake-gpt", "input": "x", "stream": True})

    assert ok[0] == 200
    assert ok[1]["output"][0]["content"][0]["text"] == "Echo: line one"
    assert bad[0] == 400
    assert bad[1]["error"]["param"] == "input"
    assert streaming[0] == 400
    assert streaming[1]["error"]["param"] == "stream"
    record = UsageRecord.objects.get()
    assert (record.source, record.status, record.api_key_id) == ("batch", "ok", api_key.pk)
    assert StoredResponse.objects.filter(pk=ok[1]["id"]).exists()


def test_a_batch_line_settles_only_when_the_runner_records_it(
    alice, org_a, project_a, fake_upstream, fake_price
):
    serve(project_a, fake_upstream)
    make_key(alice, org_a, project_a)
    api_key = ApiKey.objects.select_related("project").get(project=project_a)

    run = responses_line_run(key=api_key, body={"model": "fake-gpt", "input": "kept for later"})

    assert run.ok
    # Answered, but neither billed nor stored until the batch records the line.
    assert not UsageRecord.objects.exists()
    assert not StoredResponse.objects.exists()
    assert run.settle is not None
    row = run.settle()
    assert (row.source, row.request_id.hex) == ("batch", run.request_id)
    assert StoredResponse.objects.get().pk == run.body["id"]
    assert not Hold.objects.exists()
