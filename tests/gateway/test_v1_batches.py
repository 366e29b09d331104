"""/v1/batches: the official SDK uploads a file and runs a batch through the fake upstream;
each line is billed once at the batch price, even when a worker dies mid-batch and the run
starts again; a cancel keeps what was done; another project's key sees nothing."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import ApiKey
from billing.models import Budget, ModelPrice, RateLimit, UsageRecord
from billing.pricing import cost_of
from gateway import batches, tasks
from gateway.batches import LineRun, Progress
from gateway.models import Batch, File
from tests.chat.conftest import make_key, serve
from tests.gateway.test_v1_files import jsonl, request_line, stored_file

URL = "/v1/batches"
CHAT = "/v1/chat/completions"


def batch_price(row: UsageRecord, price: ModelPrice) -> Decimal:
    """A row's cost at the batch price: with no batch rates in the price row, half the usual."""
    tokens = {
        "prompt_tokens": row.prompt_tokens,
        "cached_tokens": row.cached_tokens,
        "completion_tokens": row.completion_tokens,
    }
    assert price.batch_input_per_million is None
    assert price.batch_output_per_million is None
    at_batch_price = cost_of(price, **tokens, batch=True)
    assert at_batch_price == cost_of(price, **tokens) / 2
    return at_batch_price


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


# --- the acceptance test: the official SDK, unchanged, against a live server ----------------


@pytest.mark.django_db(transaction=True)  # the live server shares the database
def test_the_sdk_runs_a_batch_and_downloads_its_results(
    live_daphne, fake_upstream, fake_price, alice, org_a, project_a
):
    serve(project_a, fake_upstream)
    key = make_key(alice, org_a, project_a, ["chat", "read"])
    requests = [
        request_line("first", "hello there"),
        request_line("second", "how are you"),
        {**request_line("not-allowed"), "body": {**request_line("x")["body"], "model": "gpt-nope"}},
        request_line("third", "good bye"),
    ]
    with openai.OpenAI(
        base_url=f"{live_daphne}/v1", api_key=key, max_retries=0, timeout=30
    ) as client:
        uploaded = client.files.create(file=("in.jsonl", jsonl(*requests)), purpose="batch")
        assert (uploaded.purpose, uploaded.status) == ("batch", "processed")

        created = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"job": "nightly"},
        )
        assert created.id.startswith("batch_")
        assert (created.endpoint, created.input_file_id) == (CHAT, uploaded.id)
        assert created.request_counts.total == 4
        assert created.metadata == {"job": "nightly"}

        # The test profile runs Celery tasks at once: the batch ran on commit.
        batch = client.batches.retrieve(created.id)
        assert batch.status == "completed"
        assert (batch.request_counts.total, batch.request_counts.completed) == (4, 3)
        assert batch.request_counts.failed == 1
        assert batch.in_progress_at
        assert batch.finalizing_at
        assert batch.completed_at
        assert [b.id for b in client.batches.list()] == [batch.id]

        output = lines_of(client.files.content(batch.output_file_id).read())
        errors = lines_of(client.files.content(batch.error_file_id).read())
        output_file = client.files.retrieve(batch.output_file_id)

    assert output_file.purpose == "batch_output"
    assert [line["custom_id"] for line in output] == ["first", "second", "third"]
    answers = [line["response"]["body"]["choices"][0]["message"]["content"] for line in output]
    assert answers == ["Echo: hello there", "Echo: how are you", "Echo: good bye"]
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert all(line["error"] is None and line["id"].startswith("batch_req_") for line in output)
    [error] = errors
    assert error["custom_id"] == "not-allowed"
    assert error["response"]["status_code"] == 404
    assert error["response"]["body"]["error"]["code"] == "model_not_found"
    assert error["error"]["code"] == "model_not_found"

    # One ledger row per line that reached the upstream, as a batch line, at the batch price.
    rows = list(UsageRecord.objects.order_by("id"))
    assert len(rows) == 3 == fake_upstream.request_counts["fake-gpt"]
    assert {(r.source, r.status, r.model, r.project_id) for r in rows} == {
        ("batch", "ok", "fake-gpt", project_a.pk)
    }
    assert {r.api_key_id for r in rows} == {ApiKey.objects.get(project=project_a).pk}
    # Each answer names its row (the response's request id), and says the usage it charged.
    assert [line["response"]["request_id"] for line in output] == [r.request_id.hex for r in rows]
    assert [line["response"]["body"]["usage"]["completion_tokens"] for line in output] == [
        r.completion_tokens for r in rows
    ]
    assert all(r.cost == batch_price(r, fake_price) > 0 for r in rows)
    assert Batch.objects.get().cost == sum(r.cost for r in rows)


# --- in-process: the checks at creation, and the run itself ----------------------------------

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(request, tmp_path) -> Path | None:
    if "live_daphne" in request.fixturenames:
        return None  # the server keeps its files where the test settings say
    settings = request.getfixturevalue("settings")
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def key(alice, org_a, project_a, fake_upstream, fake_price) -> str:
    serve(project_a, fake_upstream)  # fake-gpt, priced (an unpriced model is refused)
    return make_key(alice, org_a, project_a, ["chat", "read"])


@pytest.fixture
def api_key(key, project_a) -> ApiKey:
    return ApiKey.objects.select_related("project").get(project=project_a)


def post(key: str, path: str, body: Any = None) -> Any:
    return Client().post(
        path,
        data=json.dumps(body) if body is not None else "",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def get(key: str, path: str, **query: Any) -> Any:
    return Client().get(path, query, HTTP_AUTHORIZATION=f"Bearer {key}")


def make_batch(api_key: ApiKey, *requests: dict[str, Any]) -> Batch:
    """A batch created as POST /v1/batches creates it; not run (no commit in these tests)."""
    stored = stored_file(api_key.project, jsonl(*requests), key=api_key)
    body = {"input_file_id": stored.id, "endpoint": CHAT, "completion_window": "24h"}
    return batches.batch_create(key=api_key, body=json.dumps(body).encode())


def contents(file: File | None) -> list[dict[str, Any]]:
    if file is None:
        return []
    with file.file.open("rb") as handle:
        return lines_of(handle.read())


def numbered(count: int) -> list[dict[str, Any]]:
    return [request_line(f"r{n}", f"line number {n}") for n in range(count)]


def test_it_creates_a_batch_as_openai_answers_it(key, project_a):
    stored = stored_file(project_a, jsonl(*numbered(3)))
    body = {"input_file_id": stored.id, "endpoint": CHAT, "completion_window": "24h"}

    response = post(key, URL, body)

    assert response.status_code == 200
    batch = response.json()
    assert set(batch) == {
        "id", "object", "endpoint", "errors", "input_file_id", "completion_window", "status",
        "output_file_id", "error_file_id", "created_at", "in_progress_at", "expires_at",
        "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
        "cancelled_at", "request_counts", "metadata", "model", "usage",
    }  # fmt: skip
    assert (batch["object"], batch["status"], batch["endpoint"]) == ("batch", "validating", CHAT)
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert batch["expires_at"] - batch["created_at"] == 24 * 3600
    assert batch["errors"] is batch["output_file_id"] is batch["metadata"] is None
    assert batch["model"] == "fake-gpt"
    assert batch["usage"]["total_tokens"] == 0
    assert get(key, f"{URL}/{batch['id']}").json() == batch


@pytest.mark.parametrize(
    ("change", "status", "param", "words"),
    [
        ({"endpoint": "/v1/embeddings"}, 400, "input_file_id", "Line 1 of the input file calls"),
        ({"endpoint": "/v1/moderations"}, 400, "endpoint", "Supported values"),
        ({"completion_window": "48h"}, 400, "completion_window", "'24h'"),
        ({"input_file_id": "file-missing"}, 404, "input_file_id", "No such File object"),
        ({"metadata": {"k": 1}}, 400, "metadata.k", "string"),
        ({"priority": "high"}, 400, "priority", "Unrecognized request argument"),
    ],
)
def test_it_checks_a_batch_before_keeping_it(key, project_a, change, status, param, words):
    stored = stored_file(project_a, jsonl(*numbered(2)))
    body = {"input_file_id": stored.id, "endpoint": CHAT, "completion_window": "24h", **change}

    response = post(key, URL, body)

    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]
    assert not Batch.objects.exists()


def test_only_a_file_uploaded_for_a_batch_makes_one(key, api_key, project_a):
    batch = make_batch(api_key, *numbered(1))
    batches.batch_run(batch_id=batch.id)
    batch.refresh_from_db()

    body = {"input_file_id": batch.output_file_id, "endpoint": CHAT, "completion_window": "24h"}
    response = post(key, URL, body)

    assert response.status_code == 400
    assert "not 'batch'" in response.json()["error"]["message"]


def test_a_batch_runs_each_line_once_in_order(
    api_key, fake_upstream, fake_price, media, django_capture_on_commit_callbacks
):
    batch = make_batch(api_key, *numbered(5))
    work = media / batches.work_name(batch)

    with django_capture_on_commit_callbacks(execute=True):
        assert batches.batch_run(batch_id=batch.id) is Progress.DONE

    batch.refresh_from_db()
    assert (batch.status, batch.next_line, batch.completed, batch.failed) == ("completed", 5, 5, 0)
    output = contents(batch.output_file)
    assert [line["custom_id"] for line in output] == [f"r{n}" for n in range(5)]
    assert batch.error_file is None
    rows = UsageRecord.objects.all()
    assert rows.count() == 5 == fake_upstream.request_counts["fake-gpt"]
    assert batch.cost == sum(r.cost for r in rows) > 0
    assert (batch.input_tokens, batch.output_tokens) == (
        sum(r.prompt_tokens for r in rows),
        sum(r.completion_tokens for r in rows),
    )
    assert (batch.output_file.purpose, batch.output_file.bytes) == (
        "batch_output",
        batch.output_file.file.size,
    )
    assert not work.exists()  # where the answers gathered: gone once the results are written
    assert batches.batch_run(batch_id=batch.id) is Progress.DONE  # again: nothing happens
    assert UsageRecord.objects.count() == 5


class WorkerDied(BaseException):
    """A worker killed mid-line: nothing after this point of the line runs."""


def test_a_worker_that_dies_mid_batch_neither_skips_nor_repeats_a_line(
    api_key, fake_upstream, fake_price, monkeypatch
):
    batch = make_batch(api_key, *numbered(5))
    real = batches.chat_line_run
    calls: list[str] = []

    def dies_on_the_third_line(**kwargs: Any) -> LineRun:
        run = real(**kwargs)
        calls.append(kwargs["body"]["messages"][0]["content"])
        if len(calls) < 3:
            return run

        def settle_then_die() -> UsageRecord:
            # The ledger row is written... and the process dies before the line is recorded.
            assert run.settle is not None
            run.settle()
            raise WorkerDied

        return LineRun(run.status_code, run.body, run.request_id, settle_then_die)

    monkeypatch.setattr(batches, "chat_line_run", dies_on_the_third_line)
    with pytest.raises(WorkerDied):
        batches.batch_run(batch_id=batch.id)

    batch.refresh_from_db()
    assert (batch.status, batch.next_line, batch.completed) == ("in_progress", 2, 2)
    assert UsageRecord.objects.count() == 2  # the dying line's row went with its transaction
    assert fake_upstream.request_counts["fake-gpt"] == 3

    monkeypatch.setattr(batches, "chat_line_run", real)  # a new worker
    assert batches.batch_run(batch_id=batch.id) is Progress.DONE

    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == ("completed", 5, 0)
    output = contents(batch.output_file)
    assert [line["custom_id"] for line in output] == [f"r{n}" for n in range(5)]
    rows = list(UsageRecord.objects.order_by("id"))
    assert len(rows) == 5  # one per line: the third line's answer is that of its second call
    assert [line["response"]["request_id"] for line in output] == [r.request_id.hex for r in rows]
    assert fake_upstream.request_counts["fake-gpt"] == 6  # the dead call, made again
    assert batch.cost == sum(r.cost for r in rows)


def test_a_worker_that_dies_during_the_call_runs_the_line_again(
    api_key, fake_upstream, fake_price, monkeypatch
):
    batch = make_batch(api_key, *numbered(3))
    real = batches.chat_line_run

    def dies_after_one(**kwargs: Any) -> LineRun:
        if kwargs["body"]["messages"][0]["content"] == "line number 1":
            real(**kwargs)  # the upstream answers; the worker dies before it returns
            raise WorkerDied
        return real(**kwargs)

    monkeypatch.setattr(batches, "chat_line_run", dies_after_one)
    with pytest.raises(WorkerDied):
        batches.batch_run(batch_id=batch.id)
    monkeypatch.setattr(batches, "chat_line_run", real)
    batches.batch_run(batch_id=batch.id)

    batch.refresh_from_db()
    assert (batch.status, batch.completed) == ("completed", 3)
    assert [line["custom_id"] for line in contents(batch.output_file)] == ["r0", "r1", "r2"]
    assert UsageRecord.objects.count() == 3


def test_a_second_run_that_finds_the_line_recorded_keeps_the_first(
    api_key, fake_upstream, fake_price, monkeypatch
):
    """Two runs at once (a lease that lapsed): the one that records second rolls back."""
    batch = make_batch(api_key, *numbered(2))
    real = batches.chat_line_run
    overtaken: list[LineRun] = []

    def meanwhile_another_run_records_it(**kwargs: Any) -> LineRun:
        run = real(**kwargs)
        if not overtaken:
            overtaken.append(run)
            Batch.objects.filter(pk=batch.pk).update(next_line=1, completed=1)
        return run

    monkeypatch.setattr(batches, "chat_line_run", meanwhile_another_run_records_it)
    assert batches.batch_run(batch_id=batch.id) is Progress.DONE

    batch.refresh_from_db()
    assert (batch.next_line, batch.completed) == (1, 1)
    assert not UsageRecord.objects.filter(request_id=overtaken[0].request_id).exists()


def test_a_slice_ends_and_the_next_goes_on(api_key, fake_upstream):
    batch = make_batch(api_key, *numbered(3))

    assert batches.batch_run(batch_id=batch.id, lines=2) is Progress.MORE
    batch.refresh_from_db()
    assert (batch.status, batch.next_line) == ("in_progress", 2)
    assert batches.batch_run(batch_id=batch.id, lines=2) is Progress.DONE
    batch.refresh_from_db()
    assert (batch.status, batch.completed) == ("completed", 3)


def test_a_run_already_holding_the_batch_keeps_others_out(api_key, fake_upstream):
    batch = make_batch(api_key, *numbered(1))

    with batches._lease(batch.id) as taken:
        assert taken
        assert batches.batch_run(batch_id=batch.id) is Progress.BUSY
        assert batch.id not in batches.batches_to_resume()
    assert batches.batch_run(batch_id=batch.id) is Progress.DONE


def test_cancel_stops_before_the_next_line_and_keeps_what_was_done(key, api_key, fake_upstream):
    batch = make_batch(api_key, *numbered(4))
    batches.batch_run(batch_id=batch.id, lines=2)

    cancelling = post(key, f"{URL}/{batch.id}/cancel")

    assert cancelling.status_code == 200
    assert cancelling.json()["status"] == "cancelling"
    assert cancelling.json()["cancelling_at"] is not None
    assert batches.batch_run(batch_id=batch.id) is Progress.DONE
    cancelled = get(key, f"{URL}/{batch.id}").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelled_at"] is not None
    assert cancelled["request_counts"] == {"total": 4, "completed": 2, "failed": 0}
    batch.refresh_from_db()
    assert [line["custom_id"] for line in contents(batch.output_file)] == ["r0", "r1"]
    assert fake_upstream.request_counts["fake-gpt"] == 2
    assert post(key, f"{URL}/{batch.id}/cancel").json()["status"] == "cancelled"


def test_a_finished_batch_cannot_be_cancelled(key, api_key, fake_upstream):
    batch = make_batch(api_key, *numbered(1))
    batches.batch_run(batch_id=batch.id)

    response = post(key, f"{URL}/{batch.id}/cancel")

    assert response.status_code == 409
    assert "'completed'" in response.json()["error"]["message"]


def test_a_budget_refusal_is_an_error_line_and_the_batch_goes_on(
    api_key, fake_upstream, org_a, project_a
):
    ModelPrice.objects.create(
        model="fake-gpt",
        input_per_million=Decimal("10"),
        cached_input_per_million=Decimal("5"),
        output_per_million=Decimal("30"),
        effective_from=timezone.now().date() - timedelta(1),
    )
    Budget.objects.create(
        organization=org_a, project=project_a, scope="project", limit_usd=Decimal("0.01")
    )
    small = {**request_line("small"), "body": {**request_line("x")["body"], "max_tokens": 5}}
    # $0.01 holds about 600 reply tokens at the batch price ($15 per 1M): not 1,000.
    huge = {**request_line("huge"), "body": {**request_line("y")["body"], "max_tokens": 1000}}
    batch = make_batch(api_key, huge, small)

    batches.batch_run(batch_id=batch.id)

    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == ("completed", 1, 1)
    [refused] = contents(batch.error_file)
    assert refused["custom_id"] == "huge"
    assert refused["response"]["status_code"] == 429
    assert refused["error"]["code"] == "budget_exceeded"
    assert refused["response"]["body"]["error"]["type"] == "insufficient_quota"
    assert [line["custom_id"] for line in contents(batch.output_file)] == ["small"]
    assert UsageRecord.objects.count() == 1 == fake_upstream.request_counts["fake-gpt"]


def test_our_rate_limit_pauses_the_batch_until_the_sweep(api_key, fake_upstream, project_a):
    RateLimit.objects.create(project=project_a, requests_per_minute=1)
    batch = make_batch(api_key, *numbered(3))

    assert batches.batch_run(batch_id=batch.id) is Progress.PAUSED

    batch.refresh_from_db()
    assert (batch.status, batch.next_line, batch.failed) == ("in_progress", 1, 0)
    assert fake_upstream.request_counts["fake-gpt"] == 1
    assert batches.batches_to_resume() == [batch.id]


def test_the_sweep_runs_a_batch_no_worker_runs(api_key, fake_upstream):
    batch = make_batch(api_key, *numbered(2))

    assert tasks.sweep_batches() == 1  # eager in tests: the run happens here

    batch.refresh_from_db()
    assert (batch.status, batch.completed) == ("completed", 2)
    assert batches.batches_to_resume() == []


def test_past_its_window_a_batch_expires_with_the_rest_in_its_error_file(api_key, fake_upstream):
    batch = make_batch(api_key, *numbered(3))
    batches.batch_run(batch_id=batch.id, lines=1)
    Batch.objects.filter(pk=batch.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    batches.batch_run(batch_id=batch.id)

    batch.refresh_from_db()
    assert (batch.status, batch.completed) == ("expired", 1)
    assert batch.expired_at is not None
    assert [line["custom_id"] for line in contents(batch.output_file)] == ["r0"]
    expired = contents(batch.error_file)
    assert [line["custom_id"] for line in expired] == ["r1", "r2"]
    assert {line["error"]["code"] for line in expired} == {"batch_expired"}
    assert {line["response"] is None for line in expired} == {True}
    assert fake_upstream.request_counts["fake-gpt"] == 1


def test_a_revoked_key_fails_the_batch(api_key, fake_upstream):
    batch = make_batch(api_key, *numbered(2))
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())

    batches.batch_run(batch_id=batch.id)

    batch.refresh_from_db()
    assert batch.status == "failed"
    assert batch.errors[0]["code"] == "invalid_api_key"
    assert not fake_upstream.request_counts


def test_streaming_lines_are_refused_one_by_one(api_key, fake_upstream):
    streaming = {**request_line("s"), "body": {**request_line("s")["body"], "stream": True}}
    batch = make_batch(api_key, streaming, request_line("plain"))

    batches.batch_run(batch_id=batch.id)

    batch.refresh_from_db()
    [refused] = contents(batch.error_file)
    assert (refused["custom_id"], refused["response"]["status_code"]) == ("s", 400)
    assert refused["response"]["body"]["error"]["param"] == "stream"
    assert [line["custom_id"] for line in contents(batch.output_file)] == ["plain"]


def test_it_lists_batches_newest_first(key, api_key):
    made = [make_batch(api_key, *numbered(1)) for _ in range(3)]
    newest_first = [b.id for b in sorted(made, key=lambda b: (b.created_at, b.id), reverse=True)]

    first = get(key, URL, limit=2).json()
    rest = get(key, URL, limit=2, after=first["last_id"]).json()

    assert [b["id"] for b in first["data"]] == newest_first[:2]
    assert (first["has_more"], rest["has_more"]) == (True, False)
    assert [b["id"] for b in rest["data"]] == newest_first[2:]
    assert get(key, URL, limit=101).json()["error"]["param"] == "limit"


def test_another_projects_key_gets_404_on_every_batch_route(
    api_key, fake_upstream, charlie, org_b, project_b
):
    batch = make_batch(api_key, *numbered(2))
    outsider = make_key(charlie, org_b, project_b, ["chat", "read"])

    answers = [
        get(outsider, f"{URL}/{batch.id}"),
        post(outsider, f"{URL}/{batch.id}/cancel"),
        post(
            outsider,
            URL,
            {"input_file_id": batch.input_file_id, "endpoint": CHAT, "completion_window": "24h"},
        ),
        get(outsider, URL, after=batch.id),
    ]

    assert [a.status_code for a in answers] == [404, 404, 404, 404]
    assert answers[0].json()["error"]["message"] == f"No batch found with id '{batch.id}'."
    assert get(outsider, URL).json()["data"] == []
    batch.refresh_from_db()
    assert batch.status == "validating"
    assert Batch.objects.count() == 1


def test_chat_line_answers_as_the_endpoint_does(api_key, fake_upstream, fake_price):
    status, body = batches.chat_line(key=api_key, body=request_line("x", "one two")["body"])

    assert status == 200
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Echo: one two"
    row = UsageRecord.objects.get()
    assert (row.source, row.request_id.hex) == ("batch", body["id"].removeprefix("chatcmpl-"))

    status, body = batches.chat_line(key=api_key, body={"model": "fake-gpt@500", "messages": []})
    assert status == 400  # refused before any call: messages may not be empty
    assert UsageRecord.objects.count() == 1


def test_the_task_queues_the_next_slice(api_key, fake_upstream, monkeypatch):
    batch = make_batch(api_key, *numbered(3))
    slices: list[int] = []
    real = batches.batch_run

    def one_line_at_a_time(**kwargs: Any) -> Progress:
        slices.append(Batch.objects.get(pk=batch.pk).next_line)
        return real(**kwargs, lines=1)

    monkeypatch.setattr(batches, "batch_run", one_line_at_a_time)
    tasks.run_batch(batch.id)  # eager: each next slice runs as it is queued

    assert slices == [0, 1, 2]
    assert Batch.objects.get(pk=batch.pk).status == "completed"
