"""The fake upstream's /v1/embeddings and /v1/responses, driven by the official SDK straight at
the server: its typed objects and stream helpers must read what the fake sends."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator

import openai
import pytest
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseErrorEvent,
    ResponseFunctionToolCall,
    ResponseTextDeltaEvent,
)

from providers.llm.fake_upstream import EMBEDDING_SIZE, FakeUpstream, embedding_vector
from providers.llm.tokens import count_text_tokens

CAT = "The cat sat on the mat."
CAT_AGAIN = "A cat was sitting on a rug."
TAXES = "Quarterly tax filings are due in April."
WEATHER = [
    {
        "type": "function",
        "name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": False,
    }
]


@pytest.fixture
def client(fake_upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_upstream.base_url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


# --- embeddings --------------------------------------------------------------------------------


def test_it_embeds_related_texts_closer_with_unit_vectors(client):
    answer = client.embeddings.create(
        model="fake-embed", input=[CAT, CAT_AGAIN, TAXES], encoding_format="float"
    )

    cat, cat_again, taxes = (item.embedding for item in answer.data)
    assert [item.index for item in answer.data] == [0, 1, 2]
    assert {len(cat), len(cat_again), len(taxes)} == {EMBEDDING_SIZE}
    for vector in (cat, cat_again, taxes):
        assert math.isclose(dot(vector, vector), 1.0)
    assert dot(cat, cat_again) > dot(cat, taxes)
    assert answer.usage.prompt_tokens == sum(map(count_text_tokens, (CAT, CAT_AGAIN, TAXES)))
    assert answer.usage.total_tokens == answer.usage.prompt_tokens
    assert (answer.object, answer.model) == ("list", "fake-embed")


def test_base64_is_little_endian_float32_as_the_sdk_decodes_it(client, fake_upstream):
    decoded = client.embeddings.create(model="fake-embed", input=CAT)  # the SDK asks for base64

    assert fake_upstream.requests[-1]["encoding_format"] == "base64"
    expected = embedding_vector(CAT)
    as_float32 = struct.unpack(f"<{len(expected)}f", struct.pack(f"<{len(expected)}f", *expected))
    assert decoded.data[0].embedding == list(as_float32)


def test_dimensions_keep_the_first_ones_at_unit_length(client):
    full = client.embeddings.create(model="fake-embed", input=TAXES, encoding_format="float")
    short = client.embeddings.create(
        model="fake-embed", input=TAXES, encoding_format="float", dimensions=16
    )

    vector = short.data[0].embedding
    assert len(vector) == 16
    assert math.isclose(dot(vector, vector), 1.0)
    head = full.data[0].embedding[:16]
    assert any(head)  # the test says something: some of the text falls in the first 16
    norm = math.sqrt(dot(head, head))
    assert vector == pytest.approx([x / norm for x in head])


def test_token_arrays_count_their_tokens(client):
    answer = client.embeddings.create(
        model="fake-embed", input=[[1, 2, 3], [4, 5]], encoding_format="float"
    )

    assert len(answer.data) == 2
    assert answer.usage.prompt_tokens == 5


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": CAT, "dimensions": EMBEDDING_SIZE + 1}, "dimensions"),
        ({"input": CAT, "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_a_bad_embeddings_request_is_refused_naming_the_param(client, extra, param):
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="fake-embed", **extra)

    assert refused.value.body["param"] == param


def test_embeddings_take_the_error_markers(client, fake_upstream):
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="fake-embed@500", input=CAT)

    assert fake_upstream.request_counts == {"fake-embed@500": 1}


# --- responses ---------------------------------------------------------------------------------


def test_a_response_reads_as_the_sdk_types_it(client):
    response = client.responses.create(
        model="fake-gpt", input="hello there", instructions="Be brief."
    )

    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "Echo: hello there"
    [message] = response.output
    assert (message.type, message.role, message.status) == ("message", "assistant", "completed")
    assert message.content[0].type == "output_text"
    assert response.instructions == "Be brief."
    assert response.usage.output_tokens == 3
    assert response.usage.input_tokens > count_text_tokens("hello there")
    assert response.usage.total_tokens == response.usage.input_tokens + 3
    assert response.usage.input_tokens_details.cached_tokens == 0


def test_previous_response_id_continues_the_conversation(client):
    first = client.responses.create(model="fake-gpt", input="My name is Ada.", instructions="x")
    second = client.responses.create(
        model="fake-gpt@history",
        input=[{"role": "user", "content": "What is my name?"}],
        previous_response_id=first.id,
    )

    assert second.output_text == "Echo: My name is Ada. / What is my name?"
    assert second.previous_response_id == first.id
    assert second.instructions is None  # instructions are not carried over, as OpenAI does


def test_an_unknown_or_unstored_previous_response_is_refused(client):
    unstored = client.responses.create(model="fake-gpt", input="hello", store=False)

    for previous in ("resp_unknown", unstored.id):
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model="fake-gpt", input="hi", previous_response_id=previous)
        assert refused.value.code == "previous_response_not_found"
        assert refused.value.body["param"] == "previous_response_id"


def test_the_stream_helper_reads_every_event(client):
    with client.responses.stream(model="fake-gpt", input="stream me please") as stream:
        events = list(stream)
        final = stream.get_final_response()

    deltas = [event for event in events if isinstance(event, ResponseTextDeltaEvent)]
    assert [event.delta for event in deltas] == ["Echo: ", "stream ", "me ", "please"]
    assert deltas[-1].snapshot == "Echo: stream me please"  # the helper accumulated them
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[0].type == "response.created"
    assert isinstance(events[-1], ResponseCompletedEvent)
    assert final.output_text == "Echo: stream me please"
    assert final.usage.output_tokens == 4


def test_a_cut_response_is_incomplete(client):
    response = client.responses.create(model="fake-gpt", input="one two three", max_output_tokens=2)
    events = list(
        client.responses.create(
            model="fake-gpt", input="one two three", max_output_tokens=2, stream=True
        )
    )

    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Echo: one "
    assert events[-1].type == "response.incomplete"


def test_a_function_call_then_its_output(client):
    with client.responses.stream(
        model="fake-gpt@tool", input='{"city": "Paris"}', tools=WEATHER
    ) as stream:
        called = stream.get_final_response()
    [call] = called.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert (call.name, call.arguments) == ("weather", '{"city": "Paris"}')

    answer = client.responses.create(
        model="fake-gpt@tool",
        tools=WEATHER,
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
    )

    assert answer.output_text == "Echo: Sunny"


def test_an_error_mid_stream_is_the_error_event(client):
    events = list(client.responses.create(model="fake-gpt@errorevent1", input="a b", stream=True))

    assert isinstance(events[-1], ResponseErrorEvent)
    assert events[-1].code == "server_error"
    assert [e.type for e in events].count("response.output_text.delta") == 1


def test_a_stored_response_can_be_retrieved_and_deleted(client):
    response = client.responses.create(model="fake-gpt", input="keep me")

    assert client.responses.retrieve(response.id).output_text == "Echo: keep me"
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
