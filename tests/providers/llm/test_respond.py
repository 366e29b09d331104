"""Provider.respond / respond_stream: OpenAIProvider against the fake upstream's Responses API
through the real SDK (the body sent on as written, the answer and every event handed back as
the upstream sent them, every failure a ProviderError); the local model refuses."""

from __future__ import annotations

from typing import Any

import pytest

from providers.llm.base import ErrorCode, ProviderError
from providers.llm.local_provider import LocalProvider
from providers.llm.openai_provider import OpenAIProvider
from tests.providers.llm.conftest import API_KEY

TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 4,  # one per word of "Echo: stream me please"
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def output_text(response: dict[str, Any]) -> str:
    return "".join(
        part["text"]
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


async def collect(provider: OpenAIProvider, body: dict[str, Any]) -> list[dict[str, Any]]:
    return [event async for event in provider.respond_stream(body)]


async def test_it_sends_the_body_as_written_and_returns_the_response_as_sent(
    provider, fake_upstream
):
    body = {
        "model": "fake-gpt",
        "input": "hello there",
        "instructions": "Be brief.",
        "metadata": {"run": "7"},
        "a_future_parameter": {"kept": True},  # unknown to the SDK: sent on all the same
        "stream": False,
    }

    response = await provider.respond(body)

    sent = dict(body)
    del sent["stream"]  # respond() is the non-streaming call
    assert fake_upstream.requests[-1] == sent
    assert response["object"] == "response"
    assert response["id"].startswith("resp_")
    assert response["status"] == "completed"
    assert output_text(response) == "Echo: hello there"
    assert response["instructions"] == "Be brief."
    assert response["metadata"] == {"run": "7"}
    assert response["usage"]["output_tokens"] == 3
    assert response["usage"]["input_tokens_details"] == {
        "cached_tokens": 0,
        "cache_write_tokens": 0,
    }
    assert response["background"] is False  # a key the SDK left as sent, not one it made up
    assert response["error"] is None


async def test_previous_response_id_goes_straight_through(provider):
    first = await provider.respond({"model": "fake-gpt", "input": "My name is Ada."})

    second = await provider.respond(
        {
            "model": "fake-gpt@history",
            "input": "What is my name?",
            "previous_response_id": first["id"],
        }
    )

    assert output_text(second) == "Echo: My name is Ada. / What is my name?"
    assert second["previous_response_id"] == first["id"]
    assert second["usage"]["input_tokens"] > first["usage"]["input_tokens"]


async def test_the_stream_hands_back_each_event_in_order(provider, fake_upstream):
    events = await collect(provider, {"model": "fake-gpt", "input": "stream me please"})

    assert [event["type"] for event in events] == TEXT_EVENTS
    assert [event["sequence_number"] for event in events] == list(range(len(TEXT_EVENTS)))
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == (
        "Echo: stream me please"
    )
    completed = events[-1]["response"]
    assert output_text(completed) == "Echo: stream me please"
    assert completed["usage"]["output_tokens"] == 4
    assert fake_upstream.requests[-1]["stream"] is True


async def test_a_response_cut_short_ends_its_stream_as_incomplete(provider):
    events = await collect(
        provider, {"model": "fake-gpt", "input": "one two three four", "max_output_tokens": 2}
    )

    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_a_function_call_streams_its_arguments(provider):
    tools = [{"type": "function", "name": "weather", "parameters": {"type": "object"}}]

    events = await collect(
        provider, {"model": "fake-gpt@tool", "input": '{"city": "Paris"}', "tools": tools}
    )

    kinds = [event["type"] for event in events]
    assert "response.function_call_arguments.delta" in kinds
    [done] = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done["arguments"] == '{"city": "Paris"}'
    call = events[-1]["response"]["output"][0]
    assert (call["type"], call["name"], call["arguments"]) == (
        "function_call",
        "weather",
        '{"city": "Paris"}',
    )


@pytest.mark.parametrize(
    ("marker", "code"),
    [
        ("500", ErrorCode.UPSTREAM_UNAVAILABLE),
        ("429", ErrorCode.RATE_LIMITED),
        ("quota", ErrorCode.QUOTA_EXHAUSTED),
        ("401", ErrorCode.AUTH),
        ("context", ErrorCode.CONTEXT_TOO_LONG),
        ("html", ErrorCode.UPSTREAM_UNAVAILABLE),
    ],
)
async def test_every_refusal_is_a_provider_error_without_the_key(provider, marker, code):
    body = {"model": f"fake-gpt@{marker}", "input": "hello"}

    with pytest.raises(ProviderError) as answered:
        await provider.respond(body)
    with pytest.raises(ProviderError) as streamed:
        await collect(provider, body)

    assert answered.value.code == streamed.value.code == code
    assert API_KEY not in answered.value.message + streamed.value.message


async def test_an_unknown_previous_response_is_a_bad_request(provider):
    body = {"model": "fake-gpt", "input": "hi", "previous_response_id": "resp_nope"}

    with pytest.raises(ProviderError) as refused:
        await provider.respond(body)

    assert (refused.value.code, refused.value.status) == (ErrorCode.BAD_REQUEST, 400)
    assert "resp_nope" in refused.value.message


async def test_a_body_cut_in_half_is_unusable(provider):
    with pytest.raises(ProviderError) as failed:
        await provider.respond({"model": "fake-gpt@badjson", "input": "hello"})

    assert failed.value.code == ErrorCode.UPSTREAM_UNAVAILABLE


@pytest.mark.parametrize("marker", ["errorevent2", "badjson2", "drop2"])
async def test_a_stream_that_fails_midway_raises_after_what_came(provider, marker):
    seen: list[str] = []

    async def read() -> None:
        async for event in provider.respond_stream(
            {"model": f"fake-gpt@{marker}", "input": "one two three four"}
        ):
            seen.append(event["type"])

    with pytest.raises(ProviderError) as failed:
        await read()

    assert failed.value.code == ErrorCode.UPSTREAM_UNAVAILABLE
    assert seen[:2] == ["response.created", "response.in_progress"]
    assert "response.completed" not in seen
    if marker != "badjson2":  # a broken event is refused at once; the others after 2 deltas
        assert seen.count("response.output_text.delta") == 2


async def test_an_error_event_says_what_the_upstream_said(provider):
    with pytest.raises(ProviderError) as failed:
        await collect(provider, {"model": "fake-gpt@errorevent0", "input": "hello"})

    assert "The server had an error" in failed.value.message


async def test_an_upstream_that_does_not_answer_in_time_is_a_timeout(make_provider):
    provider = make_provider(timeout=0.3)

    with pytest.raises(ProviderError) as failed:
        await provider.respond({"model": "fake-gpt@hang", "input": "hello"})

    assert failed.value.code == ErrorCode.TIMEOUT


async def test_the_local_model_does_not_speak_the_responses_api():
    local = LocalProvider()
    body = {"model": "smollm2-135m-instruct", "input": "hello"}

    with pytest.raises(ProviderError) as answered:
        await local.respond(body)
    with pytest.raises(ProviderError) as streamed:
        await anext(local.respond_stream(body))

    for refused in (answered.value, streamed.value):
        assert refused.code == ErrorCode.BAD_REQUEST
        assert refused.message.startswith("The local model does not speak the Responses API")
