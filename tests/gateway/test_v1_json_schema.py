"""Structured Outputs on /v1/chat/completions: a `json_schema` whose schema is not valid JSON
Schema is refused before anything is reserved or sent (400 `invalid_json_schema`, naming
`response_format.json_schema.schema`); a valid one goes upstream unchanged; the bundled local
model enforces it, and what the official SDK gets back validates, streamed or not, and through
the SDK's own Pydantic recipe (`chat.completions.parse`)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from django.test import Client
from pydantic import BaseModel

from billing.models import UsageRecord
from providers.llm.catalog import LOCAL_MODEL_NAME
from tests.chat.conftest import make_key, serve

pytestmark = pytest.mark.django_db

URL = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello there gateway"}]
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
PARAM = "response_format.json_schema.schema"


def with_schema(schema: Any, name: str = "city") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def post(key: str, body: dict[str, Any]):
    return Client().post(
        URL,
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"type": 12},
            "Invalid schema for response_format 'city': not valid JSON Schema at $.type: 12 is "
            "not valid under any of the given schemas",
        ),
        (
            {"type": "object", "properties": {"age": {"type": "integr"}}},
            "Invalid schema for response_format 'city': not valid JSON Schema at "
            "$.properties.age.type: 'integr' is not valid under any of the given schemas",
        ),
        (
            {"type": "object", "required": "age"},
            "Invalid schema for response_format 'city': not valid JSON Schema at $.required: "
            "'age' is not of type 'array'",
        ),
        (
            {"$schema": "https://example.com/draft", "type": "object"},
            "Unknown '$schema' in 'response_format.json_schema.schema': https://example.com/draft.",
        ),
    ],
)
@pytest.mark.parametrize("model", ["fake-gpt", LOCAL_MODEL_NAME])
def test_a_schema_that_is_not_json_schema_is_refused_before_any_call(
    alice, org_a, project_a, fake_upstream, schema, message, model
):
    serve(project_a, fake_upstream)
    key = make_key(alice, org_a, project_a)

    answer = post(key, {"model": model, "messages": HELLO, "response_format": with_schema(schema)})

    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "message": message,
        "type": "invalid_request_error",
        "param": PARAM,
        "code": "invalid_json_schema",
    }
    assert fake_upstream.request_counts == {}
    assert not UsageRecord.objects.exists()


def test_a_schema_that_is_not_an_object_is_refused_as_before(
    alice, org_a, project_a, fake_upstream
):
    serve(project_a, fake_upstream)

    answer = post(
        make_key(alice, org_a, project_a),
        {"model": "fake-gpt", "messages": HELLO, "response_format": with_schema([1])},
    )

    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == PARAM
    assert fake_upstream.request_counts == {}


def test_a_valid_schema_goes_upstream_unchanged(alice, org_a, project_a, fake_upstream):
    serve(project_a, fake_upstream)
    response_format = with_schema(CITY)

    answer = post(
        make_key(alice, org_a, project_a),
        {"model": "fake-gpt", "messages": HELLO, "response_format": response_format},
    )

    assert answer.status_code == 200, answer.content
    assert fake_upstream.request_counts == {"fake-gpt": 1}
    assert fake_upstream.requests[-1]["response_format"] == response_format


def test_a_schema_the_local_model_cannot_enforce_is_refused_before_any_call(
    alice, org_a, project_a, fake_upstream
):
    schema = {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}

    answer = post(
        make_key(alice, org_a, project_a),
        {"model": LOCAL_MODEL_NAME, "messages": HELLO, "response_format": with_schema(schema)},
    )

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "response_format"
    assert error["type"] == "invalid_request_error"
    assert not UsageRecord.objects.exists()


# --- the official SDK against a live server, on the local model --------------------------------

QUESTION = [
    {"role": "system", "content": "Answer with the city and its population."},
    {"role": "user", "content": "What is the capital of France, and how many people live there?"},
]


@pytest.fixture
def sdk(live_daphne, alice, org_a, project_a) -> openai.OpenAI:
    key = make_key(alice, org_a, project_a, ["chat"])
    return openai.OpenAI(base_url=f"{live_daphne}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.mark.django_db(transaction=True)
def test_the_sdk_gets_json_that_matches_the_schema_from_the_local_model(sdk):
    completion = sdk.chat.completions.create(
        model=LOCAL_MODEL_NAME,
        messages=QUESTION,
        response_format=with_schema(CITY),
        temperature=0,
        seed=1,
        max_tokens=200,
    )

    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content or ""), CITY)

    chunks = list(
        sdk.chat.completions.create(
            model=LOCAL_MODEL_NAME,
            messages=QUESTION,
            response_format=with_schema(CITY),
            temperature=0,
            seed=1,
            max_tokens=200,
            stream=True,
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    jsonschema.validate(json.loads(streamed), CITY)
    rows = UsageRecord.objects.filter(model=LOCAL_MODEL_NAME)
    assert [(r.source, r.status) for r in rows] == [("api", "ok"), ("api", "ok")]


class City(BaseModel):
    city: str
    population: int


@pytest.mark.django_db(transaction=True)
def test_the_sdks_pydantic_recipe_works_against_the_local_model(sdk):
    completion = sdk.chat.completions.parse(
        model=LOCAL_MODEL_NAME,
        messages=QUESTION,
        response_format=City,
        temperature=0,
        seed=1,
        max_tokens=200,
    )

    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, City)
    assert parsed.city
    assert completion.choices[0].message.refusal is None


@pytest.mark.django_db(transaction=True)
def test_the_sdk_hears_a_broken_schema_as_a_bad_request_and_nothing_goes_upstream(
    sdk, fake_upstream, project_a
):
    serve(project_a, fake_upstream)

    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model="fake-gpt",
            messages=HELLO,
            response_format=with_schema({"type": "object", "properties": {"a": {"type": 1}}}),
        )

    assert caught.value.code == "invalid_json_schema"
    assert caught.value.param == PARAM
    assert fake_upstream.request_counts == {}
    assert not UsageRecord.objects.exists()
