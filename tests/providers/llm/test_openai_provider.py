"""OpenAIProvider against the fake upstream over real HTTP, through the real `openai` SDK."""

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
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
from tests.providers.llm.conftest import API_KEY, LOOPBACK, MakeProvider

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


# -- every Chat Completions parameter, sent on as it is ------------------------------------

# Every optional field of ChatRequest, set (tools with no `@tool` marker: the fake answers in text).
EVERY_PARAMETER: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": 0.9,
    "max_tokens": 50,
    "max_completion_tokens": 3,
    "presence_penalty": 0.1,
    "frequency_penalty": -0.2,
    "stop": ["\n\n"],
    "seed": 42,
    "logit_bias": {"50256": -100, "15339": 5},
    "logprobs": True,
    "top_logprobs": 2,
    "response_format": {"type": "json_object"},
    "tools": TOOLS,
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning_effort": "low",
    "verbosity": "low",
    "modalities": ["text"],
    "audio": {"format": "mp3", "voice": "alloy"},
    "prediction": {"type": "content", "content": "Echo: hello"},
    "web_search_options": {"search_context_size": "low"},
    "service_tier": "flex",
    "store": True,
    "metadata": {"team": "search"},
    "user": "user-1",
    "safety_identifier": "hash-of-user",
    "prompt_cache_key": "tenant-7",
    "prompt_cache_options": {"mode": "implicit"},
    "prompt_cache_retention": "24h",
    "moderation": {"model": "omni-moderation-latest"},
}


def record_bodies(provider: OpenAIProvider) -> list[dict[str, Any]]:
    """The JSON bodies of the chat calls `provider` sends, as they leave it.

    Seen by a request hook on the SDK's HTTP client, which the provider builds for itself (the
    fake upstream does not report what it received)."""
    bodies: list[dict[str, Any]] = []

    async def record(request: httpx2.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            bodies.append(json.loads(request.content))

    provider._client._client.event_hooks["request"].append(record)
    return bodies


def test_the_test_sets_every_parameter():
    assert set(EVERY_PARAMETER) == {f.name for f in fields(ChatRequest)} - {"model", "messages"}


@pytest.mark.parametrize("stream", [True, False])
async def test_every_parameter_reaches_the_upstream_unchanged(provider, stream):
    bodies = record_bodies(provider)
    request = chat("fake-gpt", **EVERY_PARAMETER)

    if stream:
        text, _, error = await consume(provider, request)
        assert error is None
    else:
        text = (await provider.complete(request)).text

    assert text == "Echo: hello big "  # the fake caps by max_completion_tokens, when sent
    (body,) = bodies
    for name, value in EVERY_PARAMETER.items():
        assert body[name] == value, name
    assert body["messages"] == MESSAGES


@pytest.mark.parametrize(
    ("cap", "absent"),
    [("max_completion_tokens", "max_tokens"), ("max_tokens", "max_completion_tokens")],
)
async def test_each_reply_cap_is_sent_under_its_own_name(provider, cap, absent):
    bodies = record_bodies(provider)

    text, _, _ = await consume(provider, chat("fake-gpt", **{cap: 2}))

    assert text == "Echo: hello "
    (body,) = bodies
    assert body[cap] == 2
    assert absent not in body


async def test_unset_parameters_are_not_sent(provider):
    bodies = record_bodies(provider)

    await provider.complete(chat("fake-gpt"))

    (body,) = bodies
    assert set(body) == {"model", "messages"}


def test_it_leaves_every_parameter_to_the_upstream(provider):
    assert provider.unsupported(chat("fake-gpt", **EVERY_PARAMETER)) is None


async def test_without_logprobs_from_the_upstream_deltas_carry_none(provider):
    _, events, _ = await consume(provider, chat("fake-gpt"))
    completion = await provider.complete(chat("fake-gpt"))

    assert all(e.logprobs is None for e in events if isinstance(e, TextDelta))
    assert completion.logprobs is None


# -- logprobs, from an upstream that sends them ----------------------------------------------


def _entry(token: str, logprob: float) -> dict[str, Any]:
    alternative = {"token": "Yo", "logprob": -3.5, "bytes": list(b"Yo")}
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": token, "logprob": logprob, "bytes": list(token.encode())},
            alternative,
        ],
    }


HI, THERE = _entry("Hi", -0.25), _entry(" there", -0.5)


class _LogprobsUpstream(BaseHTTPRequestHandler):
    """Answers every chat call with "Hi there" and the logprobs of its two tokens, OpenAI's way:
    each streamed chunk carries the entries of its own tokens."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        envelope = {"id": "chatcmpl-lp", "created": 0, "model": body["model"]}
        if body.get("stream"):
            pieces = [({"role": "assistant", "content": ""}, None, None)]
            pieces += [
                ({"content": e["token"]}, {"content": [e], "refusal": None}, None)
                for e in (HI, THERE)
            ]
            pieces.append(({}, None, "stop"))
            data = (
                "".join(
                    "data: "
                    + json.dumps(
                        {
                            **envelope,
                            "object": "chat.completion.chunk",
                            "choices": [
                                {
                                    "index": 0,
                                    "delta": delta,
                                    "logprobs": logprobs,
                                    "finish_reason": finish,
                                }
                            ],
                        }
                    )
                    + "\n\n"
                    for delta, logprobs, finish in pieces
                )
                + "data: [DONE]\n\n"
            )
            content_type = "text/event-stream"
        else:
            data = json.dumps(
                {
                    **envelope,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "Hi there"},
                            "logprobs": {"content": [HI, THERE], "refusal": None},
                            "finish_reason": "stop",
                        }
                    ],
                }
            )
            content_type = "application/json"
        encoded = data.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(encoded)))
        self.end_headers()
        self.wfile.write(encoded)


@pytest.fixture
def logprobs_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LogprobsUpstream)  # HTTP/1.0: no keep-alive
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join()


async def test_streamed_logprobs_come_with_their_text(logprobs_upstream):
    provider = OpenAIProvider(
        base_url=logprobs_upstream,
        api_key=API_KEY,
        max_retries=0,
        timeout=2,
        address_policy=LOOPBACK,
    )
    try:
        _, events, error = await consume(provider, chat("any", logprobs=True, top_logprobs=2))
    finally:
        await provider.aclose()

    assert error is None
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert [(d.text, d.logprobs) for d in deltas] == [
        ("Hi", {"content": [HI], "refusal": None}),
        (" there", {"content": [THERE], "refusal": None}),
    ]


async def test_a_completion_carries_its_logprobs(logprobs_upstream):
    provider = OpenAIProvider(
        base_url=logprobs_upstream,
        api_key=API_KEY,
        max_retries=0,
        timeout=2,
        address_policy=LOOPBACK,
    )
    try:
        completion = await provider.complete(chat("any", logprobs=True))
    finally:
        await provider.aclose()

    assert completion.text == "Hi there"
    assert completion.logprobs == {"content": [HI, THERE], "refusal": None}
