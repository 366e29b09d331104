"""The fake upstream's Batch API (files and batches), driven by the official SDK, and the
providers' side of it: OpenAIProvider's batch methods against the fake, the local model's
refusal, and how a failed request of a batch maps to our error kinds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from providers.llm.base import ErrorCode, ProviderError, batch_provider
from providers.llm.fake_upstream import (
    DUPLICATE_REPLY,
    GARBAGE_LINE,
    LOST_FILE_ID,
    UNKNOWN_CUSTOM_ID,
    FakeUpstream,
    Faults,
    parse_model,
)
from providers.llm.local_provider import LocalProvider
from providers.llm.openai_provider import batch_line_error, upstream_batch
from tests.providers.llm.conftest import API_KEY, MakeProvider

CHAT = "/v1/chat/completions"


def request(custom_id: str, content: str = "hi there", model: str = "fake-gpt") -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": [{"role": "user", "content": content}]},
    }


def jsonl(*lines: dict) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in data.splitlines() if raw.strip()]


@pytest.fixture
def client(fake_upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_upstream.base_url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def submit(client: openai.OpenAI, *lines: dict) -> Any:
    uploaded = client.files.create(file=("in.jsonl", jsonl(*lines)), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"ours": "batch_1"},
    )


def test_it_answers_a_batch_at_its_first_poll_as_openai_does(client, fake_upstream):
    data = jsonl(request("a", "one two"), request("b", model="fake-gpt@500"))
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    assert (uploaded.purpose, uploaded.bytes, uploaded.status) == ("batch", len(data), "processed")
    [kept] = fake_upstream.uploads
    assert (kept["id"], kept["data"], kept["filename"]) == (uploaded.id, data, "in.jsonl")
    assert client.files.content(uploaded.id).read() == data

    created = client.batches.create(
        input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h", metadata={"k": "v"}
    )
    assert (created.status, created.request_counts.total) == ("validating", 2)
    assert not fake_upstream.request_counts  # nothing answered before it is polled

    batch = client.batches.retrieve(created.id)

    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    assert batch.in_progress_at
    assert batch.completed_at
    assert batch.metadata == {"k": "v"}
    [answered] = lines_of(client.files.content(batch.output_file_id).read())
    assert answered["custom_id"] == "a"
    assert answered["response"]["status_code"] == 200
    body = answered["response"]["body"]
    assert body["choices"][0]["message"]["content"] == "Echo: one two"
    assert body["usage"]["completion_tokens"] == 3  # as chat completions counts it
    [failed] = lines_of(client.files.content(batch.error_file_id).read())
    assert (failed["custom_id"], failed["response"]["status_code"]) == ("b", 500)
    assert fake_upstream.request_counts == {"fake-gpt": 1, "fake-gpt@500": 1}
    assert [b.id for b in client.batches.list()] == [batch.id]
    assert fake_upstream.batches[0]["status"] == "completed"


def test_batchwait_keeps_it_in_progress_until_released(client, fake_upstream):
    created = submit(client, request("a", model="fake-gpt@batchwait"))

    assert client.batches.retrieve(created.id).status == "in_progress"
    assert client.batches.retrieve(created.id).status == "in_progress"
    assert not fake_upstream.request_counts
    assert fake_upstream.release_batches() == 1
    assert client.batches.retrieve(created.id).status == "completed"


def test_a_cancel_ends_it_at_the_next_poll_and_an_ended_one_cannot_be(client):
    waiting = submit(client, request("a", model="fake-gpt@batchwait"))

    assert client.batches.cancel(waiting.id).status == "cancelling"
    cancelled = client.batches.retrieve(waiting.id)
    assert (cancelled.status, cancelled.output_file_id) == ("cancelled", None)
    assert cancelled.cancelled_at is not None
    assert client.batches.cancel(waiting.id).status == "cancelled"

    done = client.batches.retrieve(submit(client, request("b")).id)
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(done.id)


def test_batchfail_fails_it_with_openais_errors(client):
    batch = client.batches.retrieve(submit(client, request("a", model="fake-gpt@batchfail")).id)

    assert batch.status == "failed"
    assert batch.failed_at is not None
    [error] = batch.errors.data
    assert (error.code, error.line) == ("invalid_request", 1)
    assert batch.output_file_id is batch.error_file_id is None


def test_batchexpire_answers_the_first_request_only(client):
    marked = "fake-gpt@batchexpire"
    batch = client.batches.retrieve(
        submit(client, request("a", model=marked), request("b", model=marked)).id
    )

    assert batch.status == "expired"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    [expired] = lines_of(client.files.content(batch.error_file_id).read())
    assert (expired["custom_id"], expired["response"]) == ("b", None)
    assert expired["error"]["code"] == "batch_expired"


def test_batchgarbage_sends_an_output_file_no_one_should_trust(client):
    marked = "fake-gpt@batchgarbage"
    batch = client.batches.retrieve(
        submit(client, request("a", model=marked), request("b", model=marked)).id
    )

    raw = client.files.content(batch.output_file_id).read().split(b"\n")
    assert json.loads(raw[0])["custom_id"] == "a"
    assert raw[1] == GARBAGE_LINE
    assert json.loads(raw[2])["custom_id"] == UNKNOWN_CUSTOM_ID
    again = json.loads(raw[3])
    assert again["custom_id"] == "a"
    assert again["response"]["body"]["choices"][0]["message"]["content"] == DUPLICATE_REPLY
    assert raw[4].startswith(b'{"id": ')  # the last line, cut in half: not JSON
    with pytest.raises(ValueError, match=r"Unterminated|Expecting"):
        json.loads(raw[4])
    assert len(raw) == 5  # no newline after the cut


def test_batchlost_names_an_output_file_that_is_not_there(client):
    batch = client.batches.retrieve(submit(client, request("a", model="fake-gpt@batchlost")).id)

    assert batch.output_file_id == LOST_FILE_ID
    with pytest.raises(openai.NotFoundError):
        client.files.content(batch.output_file_id)


def test_batch_markers_change_nothing_of_a_chat_answer(client):
    answer = client.chat.completions.create(
        model="fake-gpt@batchwait@batchgarbage",
        messages=[{"role": "user", "content": "hi there"}],
    )

    assert answer.choices[0].message.content == "Echo: hi there"
    assert parse_model("fake-gpt@batchwait@batchfail@batchlost") == (
        "fake-gpt",
        Faults(batch_wait=True, batch_fail=True, batch_lost=True),
    )


def test_files_and_batches_need_a_key_and_answer_404_for_what_is_not_there(client):
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-missing")
    with (
        openai.OpenAI(base_url=client.base_url, api_key="sk-bad", max_retries=0) as refused,
        pytest.raises(openai.AuthenticationError),
    ):
        refused.batches.list()


# --- OpenAIProvider's Batch API ----------------------------------------------------------------


async def test_the_provider_runs_a_batch_through_the_official_sdk(
    make_provider: MakeProvider, fake_upstream
):
    provider = make_provider()
    api = batch_provider(provider)
    data = jsonl(request("0", "one two"))

    file_id = await api.upload_batch_file(data=data, filename="b.jsonl")
    created = await api.create_batch(
        input_file_id=file_id, endpoint=CHAT, metadata={"gateway_batch_id": "batch_x"}
    )
    assert (created.status, created.input_file_id, created.total) == ("validating", file_id, 1)
    [listed] = await api.list_batches()
    assert (listed.id, listed.metadata) == (created.id, {"gateway_batch_id": "batch_x"})
    ended = await api.retrieve_batch(created.id)
    assert ended.ended
    assert (ended.status, ended.completed, ended.failed) == ("completed", 1, 0)
    [answered] = lines_of(await api.file_content(ended.output_file_id or ""))
    assert answered["response"]["body"]["choices"][0]["message"]["content"] == "Echo: one two"
    assert fake_upstream.uploads[0]["data"] == data

    waiting = await api.create_batch(
        input_file_id=await api.upload_batch_file(
            data=jsonl(request("0", model="fake-gpt@batchwait")), filename="w.jsonl"
        ),
        endpoint=CHAT,
    )
    assert (await api.cancel_batch(waiting.id)).status == "cancelling"


async def test_the_provider_maps_batch_api_failures_to_our_kinds(make_provider: MakeProvider):
    api = batch_provider(make_provider())

    with pytest.raises(ProviderError) as missing:
        await api.retrieve_batch("batch_missing")
    assert (missing.value.code, missing.value.retryable, missing.value.status) == (
        ErrorCode.BAD_REQUEST,
        False,
        404,
    )
    with pytest.raises(ProviderError) as gone:
        await api.file_content(LOST_FILE_ID)
    assert gone.value.code == ErrorCode.BAD_REQUEST

    refused = batch_provider(make_provider(api_key="sk-bad"))
    with pytest.raises(ProviderError) as auth:
        await refused.upload_batch_file(data=jsonl(request("0")), filename="b.jsonl")
    assert auth.value.code == ErrorCode.AUTH
    assert API_KEY not in auth.value.message


async def test_an_unreachable_upstream_is_worth_asking_again(closed_port):
    from providers.llm.openai_provider import OpenAIProvider
    from tests.providers.llm.conftest import LOOPBACK

    provider = OpenAIProvider(
        base_url=f"http://127.0.0.1:{closed_port}/v1",
        api_key=API_KEY,
        timeout=2,
        max_retries=0,
        address_policy=LOOPBACK,
    )
    try:
        with pytest.raises(ProviderError) as unreachable:
            await batch_provider(provider).retrieve_batch("batch_x")
    finally:
        await provider.aclose()
    assert (unreachable.value.code, unreachable.value.retryable) == (
        ErrorCode.UPSTREAM_UNAVAILABLE,
        True,
    )


async def test_the_local_model_has_no_batch_api():
    local = LocalProvider()  # cheap: nothing loads until a generation asks

    assert local.supports_batches is False
    with pytest.raises(ProviderError) as refused:
        batch_provider(local)
    assert refused.value.code == ErrorCode.BAD_REQUEST
    with pytest.raises(ProviderError, match="no Batch API") as direct:
        await local.create_batch(input_file_id="file-x", endpoint=CHAT)
    assert direct.value.retryable is False


def test_a_batch_answer_that_is_not_a_batch_is_refused():
    with pytest.raises(ValueError, match="not a batch"):
        upstream_batch({"object": "batch"})
    odd = upstream_batch(
        {
            "id": "batch_1",
            "status": "completed",
            "request_counts": {"total": "3", "completed": -1, "failed": True},
            "errors": {"data": ["not an object", {"code": "x"}]},
            "metadata": {"k": 1, "ok": "yes"},
        }
    )
    assert (odd.total, odd.completed, odd.failed) == (0, 0, 0)
    assert (odd.errors, odd.metadata) == ([{"code": "x"}], {"ok": "yes"})


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        (401, {"error": {"message": "Incorrect API key sk-test-5f3a9c0e1b7d"}}, "auth", False),
        (429, {"error": {"code": "insufficient_quota"}}, "quota_exhausted", False),
        (429, {"error": {"code": "rate_limit_exceeded"}}, "rate_limited", True),
        (404, {"error": {"code": "model_not_found"}}, "model_not_found", False),
        (400, {"error": {"code": "context_length_exceeded"}}, "context_too_long", False),
        (500, {"error": {"type": "server_error"}}, "upstream_unavailable", True),
        (400, {"error": {"message": "bad value"}}, "bad_request", False),
        (422, "not an object", "bad_request", False),
    ],
)
def test_a_failed_request_of_a_batch_maps_as_a_failed_call(status, body, code, retryable):
    error = batch_line_error(status, body, secret=API_KEY)

    assert (error.code.value, error.retryable, error.status) == (code, retryable, status)
    assert API_KEY not in error.message


def test_the_upstreams_own_words_are_passed_on_without_the_key():
    error = batch_line_error(
        400, {"error": {"message": f"no such thing for key {API_KEY}"}}, secret=API_KEY
    )

    assert "no such thing for key ***" in error.message
