"""OpenAIProvider against the fake upstream over real HTTP, through the real `openai` SDK."""

import time

import openai
import pytest

from providers.llm.base import (
    ChatRequest,
    ErrorCode,
    ProviderError,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
)
from providers.llm.fake_upstream import FakeUpstream, argument_fragments, tool_call
from providers.llm.openai_provider import OpenAIProvider
from providers.llm.tokens import count_message_tokens
from tests.providers.llm.conftest import API_KEY, MakeProvider

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello big world"},
]


def chat(model: str, **options) -> ChatRequest:
    return ChatRequest(model=model, messages=MESSAGES, **options)


async def consume(
    provider: OpenAIProvider, request: ChatRequest
) -> tuple[str, list[StreamEvent], ProviderError | None]:
    """The text received, every event, and the error that ended the stream if any."""
    events: list[StreamEvent] = []
    error = None
    try:
        async for event in provider.stream(request):
            events.append(event)
    except ProviderError as exc:
        error = exc
    return "".join(e.text for e in events if isinstance(e, TextDelta)), events, error


async def test_it_streams_deltas_then_one_stream_end_with_exact_usage(provider):
    text, events, error = await consume(provider, chat("fake-gpt"))

    assert error is None
    assert text == "Echo: hello big world"
    assert [e.text for e in events[:-1]] == ["Echo: ", "hello ", "big ", "world"]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "stop"
    assert end.upstream_id.startswith("chatcmpl-")
    assert end.usage is not None
    assert end.usage.prompt_tokens == count_message_tokens(MESSAGES)
    assert end.usage.completion_tokens == 4
    assert end.usage.total_tokens == end.usage.prompt_tokens + 4
    assert end.usage.cached_tokens == 0


async def test_it_stops_at_max_tokens_with_finish_reason_length(provider):
    text, events, _ = await consume(provider, chat("fake-gpt", max_tokens=2))

    assert text == "Echo: hello "
    assert events[-1].finish_reason == "length"
    assert events[-1].usage.completion_tokens == 2


async def test_it_reads_cached_tokens(provider):
    _, events, _ = await consume(provider, chat("fake-gpt@cached5"))

    assert events[-1].usage.cached_tokens == 5


async def test_it_passes_the_optional_parameters_through(provider):
    # The SDK would refuse unknown keywords and the fake refuses malformed JSON, so a
    # success with every option set shows they are all sent under their wire names.
    request = chat(
        "fake-gpt-mini",
        temperature=0.7,
        top_p=0.9,
        max_tokens=50,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        stop=["\n\n"],
        seed=42,
        response_format={"type": "text"},
        user="user-1",
    )
    text, _, error = await consume(provider, request)

    assert error is None
    assert text == "Echo: hello big world"


async def test_it_completes_without_streaming(provider):
    completion = await provider.complete(chat("fake-gpt"))

    assert completion.text == "Echo: hello big world"
    assert completion.finish_reason == "stop"
    assert completion.usage.prompt_tokens == count_message_tokens(MESSAGES)
    assert completion.usage.completion_tokens == 4
    assert completion.upstream_id.startswith("chatcmpl-")
    assert completion.raw["object"] == "chat.completion"


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "never_called", "parameters": {}}},
]


async def test_it_streams_a_tool_call_as_tool_call_deltas(provider):
    text, events, error = await consume(provider, chat("fake-gpt@tool", tools=TOOLS))

    assert error is None
    assert text == ""
    deltas = events[:-1]
    assert all(isinstance(e, ToolCallDelta) and e.index == 0 for e in deltas)
    first, rest = deltas[0], deltas[1:]
    assert first.id.startswith("call_")
    assert (first.type, first.name, first.arguments) == ("function", "search", "")
    assert all((e.id, e.type, e.name) == (None, None, None) for e in rest)
    sent = tool_call(MESSAGES, TOOLS)["arguments"]
    assert [e.arguments for e in rest] == argument_fragments(sent)
    assert len(rest) > 2  # really in fragments
    assert "".join(e.arguments for e in deltas) == '{"query": "hello big world"}'
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "tool_calls"
    assert end.usage.completion_tokens == len(rest)


async def test_it_completes_a_tool_call_without_streaming(provider):
    completion = await provider.complete(chat("fake-gpt@tool", tools=TOOLS))

    assert completion.text == ""
    assert completion.finish_reason == "tool_calls"
    (call,) = completion.raw["choices"][0]["message"]["tool_calls"]
    assert call["id"].startswith("call_")
    assert call["function"] == tool_call(MESSAGES, TOOLS)


async def test_it_lists_models(provider):
    assert await provider.list_models() == ["fake-gpt", "fake-gpt-mini"]


async def test_it_maps_rate_limits_with_retry_after(
    make_provider: MakeProvider, fake_upstream: FakeUpstream
):
    _, _, error = await consume(make_provider(max_retries=0), chat("fake-gpt@429"))

    assert error.code == ErrorCode.RATE_LIMITED
    assert error.retryable is True
    assert error.retry_after == 1.0
    assert error.status == 429
    assert fake_upstream.request_counts["fake-gpt@429"] == 1


async def test_it_still_lets_the_sdk_retry_rate_limits(
    make_provider: MakeProvider, fake_upstream: FakeUpstream
):
    # The quota veto must not catch ordinary 429s; the SDK waits the Retry-After (1 s).
    _, _, error = await consume(make_provider(max_retries=1), chat("fake-gpt@429"))

    assert error.code == ErrorCode.RATE_LIMITED
    assert fake_upstream.request_counts["fake-gpt@429"] == 2


async def test_it_never_retries_insufficient_quota(
    make_provider: MakeProvider, fake_upstream: FakeUpstream
):
    _, _, error = await consume(make_provider(max_retries=2), chat("fake-gpt@quota"))

    assert error.code == ErrorCode.QUOTA_EXHAUSTED
    assert error.retryable is False
    assert fake_upstream.request_counts["fake-gpt@quota"] == 1


async def test_it_lets_the_sdk_retry_server_errors(
    make_provider: MakeProvider, fake_upstream: FakeUpstream
):
    _, _, error = await consume(make_provider(max_retries=1), chat("fake-gpt@500"))

    assert error.code == ErrorCode.UPSTREAM_UNAVAILABLE
    assert error.retryable is True
    assert error.status == 500
    assert fake_upstream.request_counts["fake-gpt@500"] == 2


@pytest.mark.parametrize(("api_key", "model"), [(API_KEY, "fake-gpt@401"), ("sk-bad", "fake-gpt")])
async def test_it_maps_rejected_keys_to_auth(make_provider: MakeProvider, api_key, model):
    _, _, error = await consume(make_provider(api_key=api_key), chat(model))

    assert error.code == ErrorCode.AUTH
    assert error.message == "The provider rejected the API key (401)."
    assert error.retryable is False


async def test_it_maps_a_rejected_key_when_listing_models(make_provider: MakeProvider):
    with pytest.raises(ProviderError) as caught:
        await make_provider(api_key="sk-bad").list_models()

    assert caught.value.code == ErrorCode.AUTH


async def test_it_times_out_on_a_hung_upstream(make_provider: MakeProvider):
    started = time.monotonic()
    _, _, error = await consume(make_provider(timeout=0.5), chat("fake-gpt@hang"))

    assert error.code == ErrorCode.TIMEOUT
    assert error.retryable is True
    assert time.monotonic() - started < 2


async def test_it_times_out_when_chunks_stop_coming(make_provider: MakeProvider):
    # Headers and the role chunk arrive at once; the read timeout applies between chunks.
    _, _, error = await consume(make_provider(timeout=0.2), chat("fake-gpt@slow1000"))

    assert error.code == ErrorCode.TIMEOUT


async def test_it_keeps_the_partial_reply_when_the_connection_drops(provider):
    text, events, error = await consume(provider, chat("fake-gpt@drop2"))

    assert text == "Echo: hello "
    assert not any(isinstance(e, StreamEnd) for e in events)
    assert error.code == ErrorCode.UPSTREAM_UNAVAILABLE
    assert error.retryable is True


async def test_it_combines_markers(provider):
    text, _, error = await consume(provider, chat("fake-gpt@slow20@drop3"))

    assert text == "Echo: hello big "
    assert error.code == ErrorCode.UPSTREAM_UNAVAILABLE


async def test_it_ends_without_usage_when_the_upstream_sends_none(provider):
    text, events, error = await consume(provider, chat("fake-gpt@nousage"))

    assert error is None
    assert text == "Echo: hello big world"
    assert events[-1] == StreamEnd(
        finish_reason="stop", usage=None, upstream_id=events[-1].upstream_id
    )


@pytest.mark.parametrize(
    ("model", "code", "status"),
    [
        ("fake-gpt@context", ErrorCode.CONTEXT_TOO_LONG, 400),
        ("no-such-model", ErrorCode.MODEL_NOT_FOUND, 404),
        ("fake-gpt@typo", ErrorCode.BAD_REQUEST, 400),
    ],
)
async def test_it_maps_request_errors(provider, model, code, status):
    _, _, error = await consume(provider, chat(model))

    assert error.code == code
    assert error.status == status
    assert error.retryable is False


async def test_complete_maps_errors_too(provider):
    with pytest.raises(ProviderError) as caught:
        await provider.complete(chat("fake-gpt@context"))

    assert caught.value.code == ErrorCode.CONTEXT_TOO_LONG


@pytest.mark.parametrize(
    "model",
    ["@429", "@quota", "@401", "@500", "@context", "@drop1", "@hang", "@typo"],
)
async def test_no_error_message_contains_the_key(make_provider: MakeProvider, model):
    _, _, error = await consume(make_provider(timeout=0.3), chat("fake-gpt" + model))

    assert error is not None
    assert API_KEY not in error.message
    assert API_KEY not in str(error)
    assert API_KEY not in repr(error)


async def test_it_releases_the_stream_when_the_consumer_stops_early(provider):
    stream = provider.stream(chat("fake-gpt@words500@slow5"))
    first = [await anext(stream) for _ in range(3)]
    await stream.aclose()

    assert [e.text for e in first] == ["lorem ", "ipsum ", "dolor "]
    _, _, error = await consume(provider, chat("fake-gpt"))  # the client still works
    assert error is None


# -- the bare SDK against the fake: what the provider builds on ------------------------


async def test_the_sdk_streams_openai_shaped_chunks(fake_upstream: FakeUpstream):
    async with openai.AsyncOpenAI(
        base_url=fake_upstream.base_url, api_key=API_KEY, max_retries=0, timeout=2
    ) as client:
        stream = await client.chat.completions.create(
            model="fake-gpt",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]

    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


async def test_the_sdk_raises_a_connection_error_on_a_mid_stream_drop(fake_upstream: FakeUpstream):
    async with openai.AsyncOpenAI(
        base_url=fake_upstream.base_url, api_key=API_KEY, max_retries=2, timeout=2
    ) as client:
        stream = await client.chat.completions.create(
            model="fake-gpt@drop1", messages=MESSAGES, stream=True
        )
        received = []

        async def read_all() -> None:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content)

        with pytest.raises(openai.APIConnectionError):
            await read_all()

    assert received == ["", "Echo: "]
    assert fake_upstream.request_counts["fake-gpt@drop1"] == 1  # no retry once streaming


async def test_the_bare_sdk_retries_insufficient_quota(fake_upstream: FakeUpstream):
    # Why OpenAIProvider installs its response hook: left alone, the SDK treats every 429
    # alike and asks again for credit that is not coming.
    async with openai.AsyncOpenAI(
        base_url=fake_upstream.base_url, api_key=API_KEY, max_retries=1, timeout=2
    ) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="fake-gpt@quota", messages=MESSAGES)

    assert caught.value.code == "insufficient_quota"
    assert fake_upstream.request_counts["fake-gpt@quota"] == 2
