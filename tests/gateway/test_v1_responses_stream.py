"""/v1/responses with ``stream: true``: OpenAI's typed events, in order and numbered, which the
official SDK's ``responses.stream()`` helper reads unchanged; failures end every stream; each
call is settled once, whether it ends, fails or its client goes away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import schemathesis
from channels.db import database_sync_to_async
from django.core.asgi import get_asgi_application
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from billing.models import UsageRecord
from gateway.models import StoredResponse
from providers.llm.fake_upstream import argument_fragments
from providers.llm.tokens import count_text_tokens
from tests.chat.conftest import make_key, serve
from tests.conftest import wait_for_background

pytestmark = pytest.mark.django_db(transaction=True)  # the stream settles from its own task

URL = "/v1/responses"
WEATHER = {
    "type": "function",
    "name": "weather",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
}
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
TEXT_END = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


@pytest.fixture
def sdk(live_daphne, fake_upstream, fake_price, alice, org_a, project_a) -> Iterator[openai.OpenAI]:
    serve(project_a, fake_upstream, "fake-gpt", "fake-gpt@tool")
    with openai.OpenAI(
        base_url=f"{live_daphne}/v1",
        api_key=make_key(alice, org_a, project_a),
        max_retries=0,
        timeout=30,
    ) as client:
        yield client


def test_the_sdk_streams_a_response_and_reads_it_back(sdk, fake_upstream):
    with sdk.responses.stream(
        model="fake-gpt", input="stream me a reply please", instructions="Be kind."
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()

    kinds = [event.type for event in events]
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert kinds == [
        *TEXT_EVENTS,
        *["response.output_text.delta"] * len(deltas),
        *TEXT_END,
        "response.completed",
    ]
    assert len(deltas) == 6  # one per word, as the fake streams them
    assert "".join(deltas) == final.output_text == "Echo: stream me a reply please"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert len({event.response.id for event in events if hasattr(event, "response")}) == 1
    assert final.status == "completed"
    assert final.instructions == "Be kind."
    assert final.usage.output_tokens == 6
    item_ids = {event.item_id for event in events if hasattr(event, "item_id")}
    assert item_ids == {final.output[0].id}

    retrieved = sdk.responses.retrieve(final.id)
    assert retrieved.output_text == final.output_text
    assert retrieved.usage.input_tokens == final.usage.input_tokens
    assert retrieved.output[0].id == final.output[0].id
    record = UsageRecord.objects.get()
    assert (record.status, record.source, record.estimated) == ("ok", "api", False)
    assert (record.prompt_tokens, record.completion_tokens) == (final.usage.input_tokens, 6)
    assert fake_upstream.request_counts["fake-gpt"] == 1


def test_a_streamed_function_call_and_its_result(sdk, fake_upstream):
    events = list(
        sdk.responses.create(
            model="fake-gpt@tool", input="weather in Jeju", tools=[WEATHER], stream=True
        )
    )

    kinds = [event.type for event in events]
    fragments = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * len(fragments),
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    arguments = json.dumps({"query": "weather in Jeju"})
    assert fragments == argument_fragments(arguments)
    added, done = events[2].item, events[-2].item
    assert (added.type, added.name, added.arguments, added.status) == (
        "function_call",
        "weather",
        "",
        "in_progress",
    )
    assert (done.arguments, done.status, done.call_id) == (arguments, "completed", added.call_id)
    final = events[-1].response
    assert final.output[0].arguments == arguments

    answered = sdk.responses.create(
        model="fake-gpt@tool",
        previous_response_id=final.id,
        input=[{"type": "function_call_output", "call_id": done.call_id, "output": "windy"}],
        tools=[WEATHER],
    )
    assert answered.output_text == "Echo: windy"
    assert UsageRecord.objects.filter(status="ok").count() == 2


def test_a_stream_cut_at_max_output_tokens_ends_incomplete(sdk):
    events = list(
        sdk.responses.create(
            model="fake-gpt", input="one two three four five", max_output_tokens=2, stream=True
        )
    )

    assert events[-1].type == "response.incomplete"
    final = events[-1].response
    assert final.status == "incomplete"
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text == "Echo: one "
    assert final.output[0].status == "incomplete"
    assert StoredResponse.objects.get().status == "incomplete"


def test_every_responses_operation_answers_as_the_schema_says(live_daphne, sdk):
    """Generated cases rarely make a valid create (the schema test of every operation meets
    mostly 400s and 404s): here each answer of each operation, streamed and not, for certain."""
    loaded = schemathesis.openapi.from_url(f"{live_daphne}/api/schema/")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]

    def call(label: str, **case: Any) -> Any:
        response = (
            loaded.find_operation_by_label(label)
            .Case(**case)
            .call_and_validate(
                base_url=live_daphne,
                headers={"Authorization": f"Bearer {sdk.api_key}"},
                checks=checks,
                timeout=30,
            )
        )
        assert response.status_code == 200
        return response

    for body in (
        {"model": "fake-gpt", "input": "hi there", "stream": True},
        {"model": "fake-gpt@tool", "input": "hi", "tools": [WEATHER], "stream": True},
        {"model": "fake-gpt", "input": "hi there", "max_output_tokens": 1, "stream": True},
        {"model": "fake-gpt", "input": "hi there", "metadata": {"a": "b"}},
    ):
        answer = call("POST /v1/responses", body=body, media_type="application/json")
    created = answer.json()["id"]
    where = {"response_id": created}
    call("GET /v1/responses/{response_id}", path_parameters=where)
    call(
        "GET /v1/responses/{response_id}/input_items",
        path_parameters=where,
        query={"limit": 1, "order": "asc"},
    )
    call("DELETE /v1/responses/{response_id}", path_parameters=where)


# --- through the ASGI app: failures, and a client going away ----------------------------------


async def asgi_post(
    body: dict[str, Any], key: str, *, hang_up_after: int | None = None
) -> tuple[int, list[bytes]]:
    """POST to the ASGI app as a server would; with ``hang_up_after``, disconnect once that
    many body chunks arrived. Returns (status, body chunks)."""
    app = get_asgi_application()
    payload = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": URL,
        "raw_path": URL.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {key}".encode()),
        ],
    }
    gone = asyncio.Event()
    requested = False
    status: list[int] = []
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message.get("body"):
            chunks.append(message["body"])
            if hang_up_after is not None and len(chunks) >= hang_up_after:
                gone.set()
        if message["type"] == "http.response.body" and not message.get("more_body"):
            gone.set()

    async with asyncio.timeout(20):
        await app(scope, receive, send)
    return status[0], chunks


def parse_events(chunks: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each server-sent event."""
    events = []
    for block in b"".join(chunks).decode().split("\n\n"):
        if block:
            name, data = block.split("\n", 1)
            events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


async def served_key(project, upstream, org, user, *models: str) -> str:
    from billing.models import ModelPrice

    await ModelPrice.objects.acreate(
        model="fake-gpt*",
        input_per_million=1000,
        cached_input_per_million=500,
        output_per_million=2000,
        effective_from="2024-01-01",
    )
    await database_sync_to_async(serve)(project, upstream, *models)
    return await database_sync_to_async(make_key)(user, org, project)


async def test_an_upstream_dropping_mid_stream_ends_with_error_and_failed_events(
    alice, org_a, project_a, fake_upstream
):
    model = "fake-gpt@drop2"
    key = await served_key(project_a, fake_upstream, org_a, alice, model)

    status, chunks = await asgi_post({"model": model, "input": "hello there", "stream": True}, key)

    events = parse_events(chunks)
    assert status == 200
    assert [name for name, _ in events] == [
        *TEXT_EVENTS,
        "response.output_text.delta",
        "response.output_text.delta",
        "error",
        "response.failed",
    ]
    assert [data["type"] for name, data in events] == [name for name, _ in events]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    error = events[-2][1]
    assert error["code"] == "upstream_error"
    assert "broke off" in error["message"]
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "server_error"
    assert failed["output"][0]["content"][0]["text"] == "Echo: hello "
    record = await UsageRecord.objects.aget()
    assert (record.status, record.estimated) == ("error", True)
    assert record.completion_tokens == count_text_tokens("Echo: hello ")  # the two sent
    stored = await StoredResponse.objects.aget()
    assert (stored.id, stored.status, stored.output_text) == (
        failed["id"],
        "failed",
        "Echo: hello ",
    )


async def test_an_upstream_refusing_at_once_answers_an_http_error(
    alice, org_a, project_a, fake_upstream
):
    model = "fake-gpt@500"
    key = await served_key(project_a, fake_upstream, org_a, alice, model)

    status, chunks = await asgi_post({"model": model, "input": "hello", "stream": True}, key)

    assert status == 502
    assert json.loads(b"".join(chunks))["error"]["code"] == "upstream_error"
    record = await UsageRecord.objects.aget()
    assert record.status == "error"
    assert not await StoredResponse.objects.aexists()  # the client never had an id


async def test_a_client_hanging_up_mid_stream_is_billed_once_and_kept_as_cancelled(
    alice, org_a, project_a, fake_upstream
):
    # 10 of the 40 words, then nothing until the call is closed: the reply cannot end before
    # the client has gone, however slowly this machine runs.
    model = "fake-gpt@slow100@words40@stall10"
    key = await served_key(project_a, fake_upstream, org_a, alice, model)

    # created, in_progress, item added, part added, 3 deltas: then the client is gone
    status, chunks = await asgi_post(
        {"model": model, "input": "hello", "stream": True}, key, hang_up_after=7
    )

    assert status == 200
    assert b"response.completed" not in b"".join(chunks)
    await wait_for_background()  # the upstream side has ended: nothing settles a second time
    record = await UsageRecord.objects.aget()
    assert (record.status, record.source, record.estimated) == ("incomplete", "api", True)
    assert 3 <= record.completion_tokens < 40
    stored = await StoredResponse.objects.aget()
    assert stored.status == "cancelled"
    assert stored.output_text.startswith("lorem ipsum dolor")
    assert stored.output[0]["status"] == "incomplete"
