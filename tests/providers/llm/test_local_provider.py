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
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

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
        **{"temperature": 0, "seed": 1, **options},  # type: ignore[arg-type]
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
    queued_stream = local.stream(LONG)
    assert await anext(queued_stream) == Waiting(position=1)  # queued behind `running`
    last = local.stream(chat("Say hi.", max_tokens=8))
    assert await anext(last) == Waiting(position=2)  # and behind the long story
    queued = asyncio.create_task(collect(queued_stream))
    await asyncio.sleep(0)  # let it start waiting on its queue

    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued

    # The long story left the queue with its reader: only the last request waits there now,
    # and it moved up to the front at once.
    engine = await local._engine()
    assert [job.request for job in engine._queue] == [chat("Say hi.", max_tokens=8)]
    assert await asyncio.wait_for(anext(last), 30) == Waiting(position=1)
    await collect(running)
    events = await collect(last)
    assert isinstance(events[-1], StreamEnd)
    assert text_of(events)


@pytest.mark.parametrize("how", ["aclose", "cancel"])
async def test_stopping_a_stream_frees_the_model_promptly(local: LocalProvider, how: str) -> None:
    events = local.stream(LONG)
    for _ in range(3):
        await next_delta(events)
    if how == "aclose":  # the consumer stops iterating
        await events.aclose()
    else:  # the task reading the stream is cancelled while it reads the next deltas
        read: list[LocalStreamEvent] = []
        reading = asyncio.Event()

        async def reader() -> None:
            async for event in events:
                read.append(event)
                reading.set()

        task = asyncio.create_task(reader())
        await asyncio.wait_for(reading.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    after = await collect(local.stream(chat("Say hi.", max_tokens=4)))

    # The model was free for the next request at once: it never had to wait in the queue
    # (the long story, still running, would have put it there).
    assert not any(isinstance(event, Waiting) for event in after)
    assert isinstance(after[-1], StreamEnd)


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
    happened: list[str] = []  # "d" for each delta received, "t" for each turn of the ticker

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.005)
            happened.append("t")

    ticker = asyncio.create_task(tick())
    events: list[LocalStreamEvent] = []
    async for event in local.stream(chat("Write a short story.", max_tokens=48)):
        events.append(event)
        if isinstance(event, TextDelta):
            happened.append("d")
    ticker.cancel()

    assert isinstance(events[-1], StreamEnd)
    # Generation runs off the loop: the ticker keeps turning while the deltas come in. A loop
    # blocked by llama.cpp would run no ticker turn between the first delta and the last.
    during = "".join(happened).strip("t")
    assert during.count("d") > 10
    assert "t" in during


async def test_it_lists_its_model(local: LocalProvider) -> None:
    assert await local.list_models() == [LOCAL_MODEL_NAME]
    await local.aclose()


# --- Chat Completions parameters: what llama.cpp can do, and refusals for the rest ----------------


def logprob_entries(events: list[LocalStreamEvent]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for event in events:
        if isinstance(event, TextDelta):
            assert event.logprobs is not None
            entries += event.logprobs["content"]
    return entries


async def test_the_same_seed_gives_the_same_text(local: LocalProvider) -> None:
    # Sampling at a high temperature: without the seed, the text would vary.
    def poem(seed: int) -> ChatRequest:
        return chat("Write a poem about the sea.", temperature=1.5, max_tokens=12, seed=seed)

    first = await local.complete(poem(1))
    again = await local.complete(poem(1))  # over the KV cache the first one left
    await local.complete(chat("Something else entirely.", max_tokens=2))
    after_another = await local.complete(poem(1))
    others = {(await local.complete(poem(seed))).text for seed in (2, 3)}

    assert first.text
    assert again.text == first.text
    assert after_another.text == first.text
    assert others != {first.text}  # the seed is what decides


async def test_a_seeded_request_still_reuses_whole_slices_of_the_cache(
    local: LocalProvider,
) -> None:
    # 563 prompt tokens: the first 512 are one whole slice of a fresh read, reusable as is.
    story = chat(
        "Tell me about lighthouses. " * 75 + "Now write a poem about the sea.",
        temperature=1.5,
        max_tokens=8,
        seed=7,
    )

    first = await local.complete(story)
    again = await local.complete(story)

    assert again.text == first.text
    assert first.usage is not None
    assert again.usage is not None
    assert again.usage.prompt_tokens == first.usage.prompt_tokens > 512
    assert again.usage.cached_tokens == 512


async def test_it_stops_at_a_stop_sequence(local: LocalProvider) -> None:
    count = "Count from 1 to 10, separated by commas."
    whole = await local.complete(chat(count, max_tokens=40))

    stopped = await local.complete(chat(count, max_tokens=40, stop=["5", "never"]))

    assert "5" in whole.text
    assert stopped.text == whole.text[: whole.text.index("5")]
    assert stopped.finish_reason == "stop"


async def test_max_completion_tokens_caps_the_reply(local: LocalProvider) -> None:
    events = await collect(local.stream(chat("Say hi.", max_completion_tokens=5)))

    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "length"
    assert end.usage is not None
    assert end.usage.completion_tokens == 5


async def test_it_streams_logprobs_with_each_piece_of_text(local: LocalProvider) -> None:
    events = await collect(
        local.stream(chat("Say hi.", max_tokens=8, logprobs=True, top_logprobs=3))
    )

    entries = logprob_entries(events)
    assert all(
        isinstance(e, TextDelta) and e.logprobs and e.logprobs["content"] for e in events[:-1]
    )
    assert len(entries) == 8  # one per token
    assert "".join(entry["token"] for entry in entries) == text_of(events)
    for entry in entries:
        assert entry["logprob"] <= 0
        assert bytes(entry["bytes"]).decode() == entry["token"]
        top = entry["top_logprobs"]
        assert len(top) == 3
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        # Greedy decoding (temperature 0) picks the likeliest token.
        assert (top[0]["token"], top[0]["logprob"]) == (entry["token"], entry["logprob"])


async def test_logprobs_without_top_logprobs_list_no_alternatives(local: LocalProvider) -> None:
    completion = await local.complete(chat("Say hi.", max_tokens=4, logprobs=True))

    assert completion.logprobs is not None
    entries = completion.logprobs["content"]
    assert "".join(entry["token"] for entry in entries) == completion.text
    assert [entry["top_logprobs"] for entry in entries] == [[]] * 4
    assert completion.raw["choices"][0]["logprobs"] == completion.logprobs


async def test_without_logprobs_there_are_none(local: LocalProvider) -> None:
    events = await collect(local.stream(chat("Say hi.", max_tokens=4)))
    completion = await local.complete(chat("Say hi.", max_tokens=4, logprobs=False))

    assert all(e.logprobs is None for e in events if isinstance(e, TextDelta))
    assert completion.logprobs is None


async def test_logit_bias_steers_the_tokens(local: LocalProvider, tokenize: Tokenize) -> None:
    plain = await local.complete(chat("Say hi.", max_tokens=4, logprobs=True))
    assert plain.logprobs is not None
    first = plain.logprobs["content"][0]["token"]
    (banned,) = tokenize(first)
    (forced, *_) = tokenize("Banana")

    avoided = await local.complete(
        chat("Say hi.", max_tokens=4, logprobs=True, logit_bias={str(banned): -100})
    )
    pushed = await local.complete(
        chat("Say hi.", max_tokens=4, logprobs=True, logit_bias={str(forced): 100})
    )

    assert avoided.logprobs is not None
    assert pushed.logprobs is not None
    assert avoided.logprobs["content"][0]["token"] != first
    assert len({entry["token"] for entry in pushed.logprobs["content"]}) == 1
    assert "Banana".startswith(pushed.logprobs["content"][0]["token"])


async def test_it_refuses_a_logit_bias_outside_its_vocabulary(local: LocalProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await local.complete(chat("Say hi.", max_tokens=4, logit_bias={"100000": 5}))

    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert caught.value.param == "logit_bias"


async def test_json_mode_answers_json(local: LocalProvider) -> None:
    completion = await local.complete(
        chat(
            "Give me a JSON object with a name and an age.",
            max_tokens=60,
            response_format={"type": "json_object"},
        )
    )

    assert completion.finish_reason == "stop"
    assert isinstance(json.loads(completion.text), dict)


async def test_penalties_are_honoured(local: LocalProvider) -> None:
    # Not refused, and not ignored: penalising repetition (of ", ") changes a greedy count.
    request = "Count from 1 to 10, separated by commas."
    plain = await local.complete(chat(request, max_tokens=20))

    penalised = await local.complete(
        chat(request, max_tokens=20, presence_penalty=2.0, frequency_penalty=2.0)
    )

    assert plain.text.startswith("1, 2, 3, 4, 5, 6")
    assert penalised.text != plain.text


async def test_text_parts_and_developer_messages_read_as_text_and_system(
    local: LocalProvider,
) -> None:
    def ask(system_role: str, content: Any) -> ChatRequest:
        return ChatRequest(
            model=LOCAL_MODEL_NAME,
            messages=[
                {"role": system_role, "content": "Answer in one word."},
                {"role": "user", "content": content},
            ],
            temperature=0,
            seed=1,  # read afresh: the same prompt over the KV cache could read differently
            max_tokens=8,
        )

    as_string = await local.complete(ask("system", "What colour is the sky?"))
    as_parts = await local.complete(
        ask(
            "developer",
            [{"type": "text", "text": "What colour "}, {"type": "text", "text": "is the sky?"}],
        )
    )

    assert as_parts.text == as_string.text
    assert as_parts.usage is not None
    assert as_string.usage is not None
    assert as_parts.usage.prompt_tokens == as_string.usage.prompt_tokens


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}},
            "response_format",
        ),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"verbosity": "low"}, "verbosity"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"format": "mp3", "voice": "alloy"}}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
    ],
)
async def test_it_names_what_it_cannot_honour(
    local: LocalProvider, options: dict[str, Any], param: str
) -> None:
    request = chat("Say hi.", max_tokens=4, **options)

    assert local.unsupported(request) == param
    with pytest.raises(ProviderError) as caught:
        await collect(local.stream(request))
    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert caught.value.param == param
    assert param in caught.value.message


async def test_it_names_a_content_part_it_cannot_read(local: LocalProvider) -> None:
    request = ChatRequest(
        model=LOCAL_MODEL_NAME,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, IMAGE]},
        ],
    )

    assert local.unsupported(request) == "messages[1].content[1]"


@pytest.mark.parametrize(
    "options",
    [
        # Bookkeeping and cache hints: they change nothing in the answer.
        {"store": True, "metadata": {"team": "search"}, "user": "u-1"},
        {"safety_identifier": "hash", "prompt_cache_key": "k"},
        {"prompt_cache_options": {"mode": "implicit"}, "prompt_cache_retention": "24h"},
        # What the local model does anyway.
        {"parallel_tool_calls": False, "tool_choice": "none"},
        {"tool_choice": "auto", "modalities": ["text"]},
        {"service_tier": "auto", "reasoning_effort": "none"},
        {"service_tier": "default", "response_format": {"type": "text"}},
        # What it honours.
        {"logprobs": True, "top_logprobs": 5, "logit_bias": {"1": 1}, "seed": 3},
        {"response_format": {"type": "json_object"}, "stop": ["x"], "max_completion_tokens": 3},
    ],
)
def test_it_honours_or_safely_ignores_the_rest(
    local: LocalProvider, options: dict[str, Any]
) -> None:
    assert local.unsupported(chat("Say hi.", **options)) is None
