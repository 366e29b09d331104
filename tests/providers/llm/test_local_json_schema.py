"""Structured Outputs on the bundled local model: a `json_schema` response format becomes a
llama.cpp grammar, so the reply can only be JSON of the schema's shape, streamed or not. A schema
the converter cannot take is refused, naming `response_format`, before the request queues.

Against the real model (SmolLM2-135M-Instruct), greedy and seeded, as in test_local_provider.py:
every test uses the default `LocalProvider()`, which shares the one model the process loads.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import jsonschema
import pytest

from providers.llm import local_provider
from providers.llm.base import ChatRequest, ErrorCode, ProviderError, StreamEnd, TextDelta
from providers.llm.local_provider import LOCAL_MODEL_NAME, LocalProvider

# On the worker that runs the local model's other tests (tests/conftest.py): two workers
# running llama.cpp at once would each take twice as long.
pytestmark = pytest.mark.xdist_group("local-model")

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
# More of what the grammar enforces: an enum, array bounds, a boolean, a nested object, a
# pattern and a local $ref.
PALETTE = {
    "type": "object",
    "$defs": {"hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}},
    "properties": {
        "colors": {
            "type": "array",
            "items": {"enum": ["red", "green", "blue"]},
            "minItems": 1,
            "maxItems": 3,
        },
        "warm": {"type": "boolean"},
        "main": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 12},
                "hex": {"$ref": "#/$defs/hex"},
            },
            "required": ["name", "hex"],
            "additionalProperties": False,
        },
    },
    "required": ["colors", "warm", "main"],
    "additionalProperties": False,
}


def schema_format(schema: dict[str, Any], name: str = "answer") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def ask(content: str, schema: dict[str, Any], **options: Any) -> ChatRequest:
    return ChatRequest(
        model=LOCAL_MODEL_NAME,
        messages=[{"role": "user", "content": content}],
        response_format=schema_format(schema),
        **{"temperature": 0, "seed": 1, "max_tokens": 200, **options},
    )


@pytest.fixture
def local() -> LocalProvider:
    return LocalProvider()


async def test_a_reply_matches_the_schema(local: LocalProvider) -> None:
    request = ask("What is the capital of France, and how many people live there?", CITY)

    completion = await local.complete(request)

    assert completion.finish_reason == "stop"
    reply = json.loads(completion.text)
    jsonschema.validate(reply, CITY)
    assert list(reply) == ["city", "population"]
    assert completion.raw["choices"][0]["message"]["content"] == completion.text


async def test_a_streamed_reply_matches_the_schema(local: LocalProvider) -> None:
    request = ask("Name a big city in Korea and its population.", CITY)

    events = [event async for event in local.stream(request)]

    text = "".join(event.text for event in events if isinstance(event, TextDelta))
    assert len([e for e in events if isinstance(e, TextDelta)]) > 1  # streamed, not at once
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "stop"
    jsonschema.validate(json.loads(text), CITY)


async def test_enums_bounds_patterns_and_refs_are_enforced(local: LocalProvider) -> None:
    completion = await local.complete(ask("Describe a sunset palette.", PALETTE, max_tokens=300))

    reply = json.loads(completion.text)
    jsonschema.validate(reply, PALETTE)


def test_a_schema_it_can_enforce_is_not_refused(local: LocalProvider) -> None:
    assert local.unsupported(ask("x", CITY)) is None
    assert local.unsupported(ask("x", PALETTE)) is None


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        (
            {"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}},
            "Fetching remote schemas is not allowed",
        ),
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "Unrecognized"),
        (
            {"type": "object", "properties": {"a": {"type": "string", "pattern": "[a-z]+"}}},
            'Pattern must start with "^" and end with "$"',
        ),
    ],
)
async def test_a_schema_it_cannot_enforce_is_refused_before_it_queues(
    local: LocalProvider, schema: dict[str, Any], reason: str
) -> None:
    # The model is busy: a request that queued would first be told to wait (`Waiting`).
    busy = local.stream(
        ChatRequest(
            model=LOCAL_MODEL_NAME,
            messages=[{"role": "user", "content": "Write a long story about a lighthouse."}],
            temperature=0,
            max_tokens=1000,
        )
    )
    async with contextlib.aclosing(busy):
        assert isinstance(await anext(busy), TextDelta)  # generating now
        refused = local.stream(ask("Anything.", schema))

        with pytest.raises(ProviderError) as caught:
            await anext(refused)

    error = caught.value
    assert error.code == ErrorCode.BAD_REQUEST
    assert error.param == "response_format"
    assert error.message.startswith(
        "response_format: the local model cannot enforce this JSON Schema (json_schema.schema): "
    )
    assert reason in error.message
    assert local.unsupported(ask("Anything.", schema)) == "response_format"


async def test_a_json_schema_without_a_schema_is_refused(local: LocalProvider) -> None:
    request = ChatRequest(
        model=LOCAL_MODEL_NAME,
        messages=[{"role": "user", "content": "Hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "a"}},
    )

    with pytest.raises(ProviderError) as caught:
        await local.complete(request)

    assert caught.value.param == "response_format"
    assert "needs json_schema.schema" in caught.value.message


async def test_a_grammar_llama_cpp_cannot_read_is_refused_not_run(
    local: LocalProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The converter should never write one; if it did, sampling would get no grammar at all.
    monkeypatch.setattr(local_provider, "_schema_grammar", lambda schema: "root ::= [")

    with pytest.raises(ProviderError) as caught:
        await local.complete(ask("Hi", CITY))

    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert caught.value.param == "response_format"
    assert "could not read the grammar" in caught.value.message
    monkeypatch.undo()
    after = await local.complete(ask("Name a city.", CITY))  # the model serves on
    jsonschema.validate(json.loads(after.text), CITY)


async def test_it_cannot_moderate(local: LocalProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await local.moderate(model="omni-moderation-latest", input="hello")

    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert caught.value.message.startswith("The local model cannot moderate; ")
