"""The local provider against the real bundled model (SmolLM2-135M-Instruct), no mocks.

Greedy decoding (temperature 0, fixed seed) keeps replies reproducible. Every test uses the
default `LocalProvider()`: all of them share the one model the process loads (the first test
pays ~0.5 s for it). A provider with other settings would load a second model with its own
worker thread, and two llama.cpp threads in one process slow each other down ~3x (OpenMP).
Token counts are checked against llama.cpp's tokenizer loaded on its own (vocab only), not
against the provider's code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator

import llama_cpp
import pytest

from providers.llm.base import ChatRequest, ErrorCode, ProviderError, StreamEnd, TextDelta
from providers.llm.local_provider import (
    LOCAL_MODEL_NAME,
    LocalProvider,
    LocalStreamEvent,
    Waiting,
    local_context_window,
    local_model_path,
)

# SmolLM2's chat template adds its own system prompt when the messages have none.
SAY_HI_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
)

Tokenize = Callable[..., list[int]]


def chat(content: str, **options: object) -> ChatRequest:
    return ChatRequest(
        model=LOCAL_MODEL_NAME,
        messages=[{"role": "user", "content": content}],
        temperature=0,
        seed=1,
        **options,  # type: ignore[arg-type]
    )


# Long enough (1000 tokens, 13+ s here) that finishing early can only mean it was stopped.
LONG = chat("Write a long story about a lighthouse keeper.", max_tokens=1000)


@pytest.fixture
def local() -> LocalProvider:
    return LocalProvider()


@pytest.fixture(scope="module")
def tokenize() -> Iterator[Tokenize]:
    """llama.cpp's tokenizer for the model, from a vocab-only load of the GGUF file."""
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(local_model_path()).encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(model)

    def tokenize(text: str, *, special: bool = False) -> list[int]:
        data = text.encode()
        tokens = (llama_cpp.llama_token * (len(data) + 8))()
        count = llama_cpp.llama_tokenize(
            vocab, data, len(data), tokens, len(tokens), False, special
        )
        assert count >= 0
        return list(tokens[:count])

    yield tokenize
    llama_cpp.llama_model_free(model)


async def collect(events: AsyncIterator[LocalStreamEvent]) -> list[LocalStreamEvent]:
    return [event async for event in events]


def text_of(events: list[LocalStreamEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


async def next_delta(events: AsyncIterator[LocalStreamEvent]) -> TextDelta:
    async for event in events:
        if isinstance(event, TextDelta):
            return event
    raise AssertionError("the stream ended without text")


def test_it_finds_the_bundled_model() -> None:
    assert local_model_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert local_model_path().is_file()
    assert local_context_window() == 8192


async def test_it_streams_a_reply_with_usage(local: LocalProvider, tokenize: Tokenize) -> None:
    events = await collect(local.stream(chat("Say hi.", max_tokens=16)))

    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert all(isinstance(event, TextDelta) for event in events[:-1])  # no Waiting: model idle
    text = text_of(events)
    assert text.strip()
    assert end.finish_reason == "length"
    assert end.upstream_id
    assert end.usage is not None
    assert end.usage.prompt_tokens == len(tokenize(SAY_HI_PROMPT, special=True))
    assert end.usage.completion_tokens == 16 == len(tokenize(text))


async def test_it_counts_a_reply_that_ends_on_its_own(
    local: LocalProvider, tokenize: Tokenize
) -> None:
    events = await collect(local.stream(chat("What is 2+2? Answer with one number.")))

    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "stop"
    assert "4" in text_of(events)
    assert end.usage is not None
    # The end-of-generation token is not part of the reply, so it is not counted.
    assert end.usage.completion_tokens == len(tokenize(text_of(events))) > 0


async def test_it_completes_like_it_streams(local: LocalProvider) -> None:
    request = chat("Say hi.", max_tokens=16)
    streamed = await collect(local.stream(request))

    completion = await local.complete(request)

    end = streamed[-1]
    assert isinstance(end, StreamEnd)
    assert completion.text == text_of(streamed)
    assert completion.finish_reason == "length"
    assert completion.usage is not None
    assert end.usage is not None
    assert completion.usage.completion_tokens == end.usage.completion_tokens
    assert completion.usage.prompt_tokens == end.usage.prompt_tokens
    assert completion.raw["choices"][0]["message"]["content"] == completion.text
    assert completion.raw["usage"]["total_tokens"] == completion.usage.total_tokens


async def test_it_makes_a_second_request_wait_for_the_model(local: LocalProvider) -> None:
    first = local.stream(chat("Say hi.", max_tokens=24))
    await next_delta(first)  # the first request holds the model now

    second = asyncio.create_task(collect(local.stream(chat("Say hi.", max_tokens=8))))
    first_rest = await collect(first)

    events = await second
    assert events[0] == Waiting(position=1)
    assert isinstance(first_rest[-1], StreamEnd)
    assert isinstance(events[-1], StreamEnd)
    assert text_of(events)


async def test_a_cancelled_queued_request_leaves_the_queue(local: LocalProvider) -> None:
    running = local.stream(chat("Say hi.", max_tokens=24))
    await next_delta(running)
    queued = asyncio.create_task(collect(local.stream(LONG)))
    last = asyncio.create_task(collect(local.stream(chat("Say hi.", max_tokens=8))))
    await asyncio.sleep(0.05)  # both are queued behind `running`

    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    await collect(running)
    started = time.perf_counter()
    events = await last

    assert events[:2] == [Waiting(position=2), Waiting(position=1)]
    assert isinstance(events[-1], StreamEnd)
    assert time.perf_counter() - started < 5  # it did not wait for the long story


@pytest.mark.parametrize("how", ["aclose", "cancel"])
async def test_stopping_a_stream_frees_the_model_promptly(local: LocalProvider, how: str) -> None:
    events = local.stream(LONG)
    for _ in range(3):
        await next_delta(events)
    if how == "aclose":  # the consumer stops iterating
        await events.aclose()
    else:  # the task reading the stream is cancelled while it waits for the next delta
        reader = asyncio.create_task(collect(events))
        await asyncio.sleep(0.05)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader

    started = time.perf_counter()
    after = await collect(local.stream(chat("Say hi.", max_tokens=4)))

    assert not any(isinstance(event, Waiting) for event in after)
    assert isinstance(after[-1], StreamEnd)
    assert time.perf_counter() - started < 5  # the long story would have taken 10+ s more


async def test_it_refuses_a_prompt_longer_than_the_context(local: LocalProvider) -> None:
    events: list[LocalStreamEvent] = []

    async def read() -> None:
        async for event in local.stream(chat("word " * 9000, max_tokens=16)):
            events.append(event)

    with pytest.raises(ProviderError) as caught:
        await read()

    assert caught.value.code == ErrorCode.CONTEXT_TOO_LONG
    assert "8192" in caught.value.message
    assert not events


async def test_it_refuses_other_models_and_tools_before_queueing(local: LocalProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await local.complete(ChatRequest(model="gpt-4o", messages=[]))
    assert caught.value.code == ErrorCode.MODEL_NOT_FOUND

    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    with pytest.raises(ProviderError) as caught:
        await local.complete(chat("Hi", tools=[tool]))
    assert caught.value.code == ErrorCode.BAD_REQUEST


async def test_it_keeps_the_event_loop_responsive(local: LocalProvider) -> None:
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    events = await collect(local.stream(chat("Write a short story.", max_tokens=48)))
    elapsed = time.perf_counter() - started
    ticker.cancel()

    assert isinstance(events[-1], StreamEnd)
    # A loop blocked by llama.cpp would show one gap as long as the whole generation
    # (~0.6 s); the margin above 10 ms is for other processes sharing the CPUs.
    assert max(gaps) < 0.1
    assert len(gaps) >= elapsed / 0.02


async def test_it_lists_its_model(local: LocalProvider) -> None:
    assert await local.list_models() == [LOCAL_MODEL_NAME]
    await local.aclose()
