"""Tool calls through the gateway: the official SDK, a live Daphne, the fake upstream's ``@tool``.

What a client of ``/v1/chat/completions`` must see is what OpenAI would send it: the call's
id and name first, its arguments in fragments, ``finish_reason "tool_calls"`` — and the
ledger gets exactly one row per call, estimated from the call's text when no usage came.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from billing.models import UsageRecord
from providers.llm.fake_upstream import argument_fragments, tool_call
from providers.llm.tokens import count_text_tokens
from tests.chat.conftest import make_key, serve

pytestmark = pytest.mark.django_db(transaction=True)  # the live server shares the database

# Daphne serving the app, as the gateway's acceptance test starts it (a fixture).

MESSAGES = [{"role": "user", "content": "weather in Seoul tomorrow"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    },
    {"type": "function", "function": {"name": "never_called", "parameters": {}}},
]
# What the fake upstream calls: the first tool, the last user message as its query.
CALL = tool_call(MESSAGES, TOOLS)


@pytest.fixture
def sdk(live_daphne, fake_upstream, alice, org_a, project_a) -> Iterator[openai.OpenAI]:
    """The official client with a project key whose project may use the ``@tool`` models."""
    serve(project_a, fake_upstream, "fake-gpt@tool", "fake-gpt@tool@nousage", "fake-gpt@tool@drop2")
    key = make_key(alice, org_a, project_a)
    with openai.OpenAI(
        base_url=f"{live_daphne}/v1", api_key=key, max_retries=0, timeout=20
    ) as client:
        yield client


def assemble(chunks: list[Any]) -> dict[int, dict[str, str]]:
    """The tool calls of a stream, put together the way SDK users do: by index."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    return calls


def test_the_sdk_streams_a_tool_call(sdk, fake_upstream):
    chunks = list(
        sdk.chat.completions.create(
            model="fake-gpt@tool",
            messages=MESSAGES,
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    calls = assemble(chunks)
    assert list(calls) == [0]
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["name"] == "search"
    assert calls[0]["arguments"] == CALL["arguments"]
    assert json.loads(calls[0]["arguments"]) == {"query": "weather in Seoul tomorrow"}
    # As OpenAI streams it: the role, id and name open the reply, then argument fragments.
    opening = chunks[0].choices[0].delta
    assert (opening.role, opening.content) == ("assistant", None)
    assert opening.tool_calls[0].function.name == "search"
    with_arguments = [
        c for c in chunks if c.choices and c.choices[0].delta.tool_calls and c is not chunks[0]
    ]
    assert len(with_arguments) == len(argument_fragments(CALL["arguments"])) > 2
    assert all(c.choices[0].delta.content is None for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls"
    assert not any(finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == len(with_arguments)
    assert len({c.id for c in chunks}) == 1

    record = UsageRecord.objects.get()
    assert (record.status, record.estimated, record.model) == ("ok", False, "fake-gpt@tool")
    assert (record.prompt_tokens, record.completion_tokens) == (
        chunks[-1].usage.prompt_tokens,
        chunks[-1].usage.completion_tokens,
    )
    assert fake_upstream.request_counts["fake-gpt@tool"] == 1


def test_the_sdk_gets_the_same_tool_call_without_streaming(sdk):
    completion = sdk.chat.completions.create(model="fake-gpt@tool", messages=MESSAGES, tools=TOOLS)

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_")
    assert (call.type, call.function.name) == ("function", "search")
    assert call.function.arguments == CALL["arguments"]
    record = UsageRecord.objects.get()
    assert (record.status, record.completion_tokens) == ("ok", completion.usage.completion_tokens)


def test_the_tool_result_goes_back_and_the_reply_is_text(sdk):
    stream = sdk.chat.completions.create(
        model="fake-gpt@tool", messages=MESSAGES, tools=TOOLS, stream=True
    )
    call = assemble(list(stream))[0]
    followup = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21°C."},
    ]

    chunks = list(
        sdk.chat.completions.create(
            model="fake-gpt@tool", messages=followup, tools=TOOLS, stream=True
        )
    )

    # The fake answers the tool's result: it went upstream in the second round.
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: Sunny, 21°C."
    assert not assemble(chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert UsageRecord.objects.count() == 2


def test_two_rounds_without_streaming_each_billed_once(sdk, fake_upstream):
    first = sdk.chat.completions.create(model="fake-gpt@tool", messages=MESSAGES, tools=TOOLS)
    (call,) = first.choices[0].message.tool_calls

    second = sdk.chat.completions.create(
        model="fake-gpt@tool",
        messages=[
            *MESSAGES,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21°C."},
        ],
        tools=TOOLS,
    )

    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Echo: Sunny, 21°C."
    assert second.choices[0].message.tool_calls is None
    # The second call carried the first's call and its result, by its id.
    sent = fake_upstream.requests[-1]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == sent[-1]["tool_call_id"] == call.id
    rows = UsageRecord.objects.order_by("id")
    assert [(r.status, r.completion_tokens) for r in rows] == [
        ("ok", first.usage.completion_tokens),
        ("ok", second.usage.completion_tokens),
    ]


@pytest.mark.parametrize("stream", [True, False])
def test_without_upstream_usage_the_call_is_estimated_from_its_name_and_arguments(sdk, stream):
    answer = sdk.chat.completions.create(
        model="fake-gpt@tool@nousage", messages=MESSAGES, tools=TOOLS, stream=stream
    )
    if stream:
        assert assemble(list(answer))[0]["arguments"] == CALL["arguments"]

    record = UsageRecord.objects.get()
    assert (record.status, record.estimated) == ("ok", True)
    assert record.completion_tokens == count_text_tokens(CALL["name"] + CALL["arguments"])


def test_a_tool_call_cut_off_upstream_is_billed_for_what_came(sdk):
    stream = sdk.chat.completions.create(
        model="fake-gpt@tool@drop2", messages=MESSAGES, tools=TOOLS, stream=True
    )
    chunks: list[Any] = []

    with pytest.raises(openai.APIError, match="dropped the connection"):
        chunks.extend(stream)

    sent = "".join(argument_fragments(CALL["arguments"])[:2])
    assert assemble(chunks)[0]["arguments"] == sent
    record = UsageRecord.objects.get()
    assert (record.status, record.estimated) == ("error", True)
    assert record.completion_tokens == count_text_tokens(CALL["name"] + sent)


def test_tool_choice_reaches_the_upstream(sdk):
    completion = sdk.chat.completions.create(
        model="fake-gpt@tool", messages=MESSAGES, tools=TOOLS, tool_choice="none"
    )

    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].message.content.startswith("Echo: ")


def test_more_than_one_choice_is_refused_clearly(sdk):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="fake-gpt", messages=MESSAGES, n=2)

    assert refused.value.body["param"] == "n"
    assert not UsageRecord.objects.exists()
