"""Tools in the chat: the server runs the calls a reply asks for and goes on with their results,
each upstream call reserved, capped and billed on its own (the fake upstream's ``@tool`` calls
the first tool with the user's text as its arguments when that text is a JSON object, and
answers a tool result with ``"Echo: " + result``)."""

import json

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient

from billing.models import RateLimit, UsageRecord
from chat.models import Conversation, Message, ToolCall
from providers.models import ConnectionModel
from tests.chat.conftest import make_key
from tests.chat.test_rest_api import conversations_url, key_client, messages_url, post_json
from tests.chat.test_socket import create

pytestmark = pytest.mark.django_db(transaction=True)

ASK = json.dumps({"expression": "6 * 7"})


def able(model: str = "fake-gpt@tool") -> None:
    ConnectionModel.objects.filter(name=model).update(supports_tools=True)


@database_sync_to_async
def tool_chat(make_conversation, user, project, model="fake-gpt@tool", tools=("calculator",)):
    conversation = make_conversation(user, project, model=model)
    able(model)
    conversation.tools = list(tools)
    conversation.save()
    return conversation


@database_sync_to_async
def ledger(conversation: Conversation) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(conversation_id=conversation.pk).order_by("id"))


@database_sync_to_async
def calls_of(message_id: int) -> list[ToolCall]:
    return list(ToolCall.objects.filter(message_id=message_id).order_by("round", "id"))


@database_sync_to_async
def reload(message_id: int) -> Message:
    return Message.objects.get(pk=message_id)


async def test_it_runs_the_call_and_answers_with_its_result_on_the_socket(
    open_socket, make_conversation, alice, project_a, fake_upstream
):
    conversation = await tool_chat(make_conversation, alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content=ASK)
    events = await socket.until("done")

    kinds = [e["type"] for e in events]
    assert kinds.index("tool.call") < kinds.index("tool.result") < kinds.index("done")
    call = next(e for e in events if e["type"] == "tool.call")["call"]
    assert (call["name"], json.loads(call["arguments"]), call["round"]) == (
        "calculator",
        {"expression": "6 * 7"},
        1,
    )
    result = next(e for e in events if e["type"] == "tool.result")["call"]
    assert result["result"].endswith("42")
    assert result["is_error"] is False
    done = events[-1]["message"]
    assert (done["state"], done["tool_rounds"]) == ("complete", 1)
    assert done["content"] == "Echo: " + result["result"]  # the model read the result
    assert [c["name"] for c in done["tool_calls"]] == ["calculator"]

    # The second call carried the first's tool call and its result, by its id.
    [second] = [
        body
        for body in fake_upstream.requests
        if any(m.get("role") == "tool" for m in body["messages"])
    ]
    assistant, tool = second["messages"][-2:]
    assert assistant["tool_calls"][0]["id"] == tool["tool_call_id"] == call["call_id"]
    assert tool == {"role": "tool", "tool_call_id": call["call_id"], "content": result["result"]}
    # One ledger row per upstream call, both tied to the reply; its tokens are their sum.
    rows = [r for r in await ledger(conversation) if r.source == "chat"]
    assert [r.status for r in rows] == ["ok", "ok"]
    assert {r.message_id for r in rows} == {done["id"]}
    reply = await reload(done["id"])
    assert reply.completion_tokens == sum(r.completion_tokens for r in rows)
    assert reply.prompt_tokens == sum(r.prompt_tokens for r in rows)
    [saved] = await calls_of(done["id"])
    assert (saved.call_id, saved.round, saved.result) == (call["call_id"], 1, result["result"])
    assert saved.duration_ms is not None


async def test_a_failing_tool_is_an_error_result_the_model_reads(
    open_socket, make_conversation, alice, project_a
):
    conversation = await tool_chat(make_conversation, alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content=json.dumps({"expression": "1 / 0"}))
    events = await socket.until("done")

    result = next(e for e in events if e["type"] == "tool.result")["call"]
    assert result["is_error"] is True
    done = events[-1]["message"]
    assert done["state"] == "complete"
    assert done["content"] == "Echo: " + result["result"]  # the model was told, and went on


async def test_a_loop_stops_at_its_bound_with_a_note(
    open_socket, make_conversation, alice, project_a, settings
):
    settings.CHAT_TOOL_MAX_ROUNDS = 2
    conversation = await tool_chat(make_conversation, alice, project_a, model="fake-gpt@toolloop")
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content=ASK)
    events = await socket.until("error")

    final = events[-1]
    assert final["code"] == "tool_limit"
    assert "2 rounds" in final["message"]
    reply = final["reply"]
    assert reply["state"] == "incomplete"
    calls = await calls_of(reply["id"])
    assert [(c.round, c.is_error) for c in calls] == [(1, False), (2, False), (3, True)]
    assert calls[-1].result.startswith("Not run")
    # Three upstream calls (two rounds of tools, then the one whose calls were not run).
    rows = [r for r in await ledger(conversation) if r.source == "chat"]
    assert len(rows) == 3
    assert all(r.message_id == reply["id"] for r in rows)


async def test_a_later_round_refused_keeps_what_came(
    open_socket, make_conversation, alice, project_a
):
    conversation = await tool_chat(make_conversation, alice, project_a)
    await database_sync_to_async(RateLimit.objects.create)(project=project_a, requests_per_minute=1)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content=ASK)
    events = await socket.until("error")

    assert events[-1]["code"] == "rate_limit_exceeded"
    reply = events[-1]["reply"]
    [call] = await calls_of(reply["id"])
    assert call.result.endswith("42")  # the round that ran is kept
    rows = [r for r in await ledger(conversation) if r.source == "chat"]
    assert len(rows) == 1  # the refused round sent nothing


async def test_a_model_without_tools_gets_none(
    open_socket, make_conversation, alice, project_a, fake_upstream
):
    conversation = await create(make_conversation, alice, project_a, model="fake-gpt")
    conversation.tools = ["calculator"]
    await database_sync_to_async(conversation.save)()
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="hello")
    events = await socket.until("done")

    assert "tools" not in fake_upstream.requests[-1]
    assert events[-1]["message"]["content"] == "Echo: hello"


# --- REST ---------------------------------------------------------------------------------------


def rest_tool_chat(project, user, organization):
    client = key_client(make_key(user, organization, project, ["chat", "read"]))
    created = post_json(client, conversations_url(project), {"model": "fake-gpt@tool"})
    assert created.status_code == 201, created.content
    able()
    Conversation.objects.filter(pk=created.json()["id"]).update(tools=["calculator"])
    return client, created.json()["id"]


def test_rest_runs_the_tools_and_returns_the_calls(make_conversation, alice, org_a, project_a):
    make_conversation(alice, project_a, model="fake-gpt@tool")  # serves the model
    client, conversation_id = rest_tool_chat(project_a, alice, org_a)

    response = post_json(client, messages_url(project_a, conversation_id), {"content": ASK})

    assert response.status_code == 201, response.content
    reply = response.json()
    [call] = reply["tool_calls"]
    assert call["name"] == "calculator"
    assert call["result"].endswith("42")
    assert reply["content"] == "Echo: " + call["result"]
    assert UsageRecord.objects.filter(message_id=reply["id"]).count() == 2


async def test_rest_stream_sends_the_calls_as_they_run(make_conversation, alice, org_a, project_a):
    await database_sync_to_async(make_conversation)(alice, project_a, model="fake-gpt@tool")
    _, conversation_id = await database_sync_to_async(rest_tool_chat)(project_a, alice, org_a)
    key = await database_sync_to_async(make_key)(alice, org_a, project_a, ["chat", "read"])

    response = await AsyncClient().post(
        messages_url(project_a, conversation_id) + "?stream=true",
        data={"content": ASK},
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )

    raw = b"".join([chunk async for chunk in response.streaming_content]).decode()
    events = [
        (block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1][6:]))
        for block in raw.strip().split("\n\n")
    ]
    kinds = [kind for kind, _ in events]
    assert kinds.index("tool_call") < kinds.index("tool_result") < kinds.index("done")
    final = events[-1][1]["message"]
    assert final["tool_calls"][0]["result"].endswith("42")
    assert final["content"] == "Echo: " + final["tool_calls"][0]["result"]


async def test_calls_past_the_per_round_limit_are_answered_unrun(
    open_socket, make_conversation, alice, project_a, settings
):
    settings.CHAT_TOOL_MAX_CALLS = 0  # every call is one too many
    conversation = await tool_chat(make_conversation, alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content=ASK)
    events = await socket.until("done")

    done = events[-1]["message"]
    [call] = done["tool_calls"]
    assert call["is_error"] is True
    assert call["result"] == "Not run: at most 0 tool calls at once."
    assert done["content"] == "Echo: " + call["result"]  # the model was told
