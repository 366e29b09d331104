"""A batch whose every line lives on one connection with ``supports_batches`` is handed to that
upstream's own Batch API (the fake upstream's): held whole at the batch price before it is
sent, polled by the sweep, and its results collected into one ledger row per line, exactly
once even when a worker dies midway, with the hold always given back."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone

from accounts.models import ApiKey, Project
from billing import metering
from billing.models import Budget, BudgetPeriod, Hold, ModelPrice, RateLimit, UsageRecord
from billing.pricing import cost_of, worst_case
from billing.services import CallContext, holds_expire, quota_settle_held
from gateway import batches, tasks, upstream_batches
from gateway.batches import Progress
from gateway.models import Batch, File
from gateway.upstream_batches import COLLECT_GRACE, hold_id, line_request_id
from providers.crypto import encrypt
from providers.llm.base import ChatRequest
from providers.llm.fake_upstream import DUPLICATE_REPLY, FakeUpstream
from providers.llm.tokens import count_text_tokens
from providers.models import ProviderConnection
from providers.services import connection_model_add
from tests.chat.conftest import fake_connection, make_key
from tests.gateway.test_v1_files import jsonl, stored_file

URL = "/v1/batches"
CHAT = "/v1/chat/completions"


class WorkerDied(BaseException):
    """A worker killed at this point: nothing after it runs."""


def line(custom_id: str, content: str = "hello", model: str = "fake-gpt", **body: Any) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": [{"role": "user", "content": content}], **body},
    }


def serve_batches(project: Project, upstream: FakeUpstream, *models: str) -> ProviderConnection:
    """The project's connection to the fake upstream, its Batch API on, serving ``models``."""
    connection = fake_connection(project, upstream, supports_batches=True)
    for model in models or ("fake-gpt",):
        connection_model_add(actor=None, connection=connection, name=model)
    return connection


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in data.splitlines() if raw.strip()]


def contents(file: File | None) -> list[dict[str, Any]]:
    if file is None:
        return []
    with file.file.open("rb") as handle:
        return lines_of(handle.read())


def at_batch_price(row: UsageRecord, price: ModelPrice) -> Decimal:
    tokens = {
        "prompt_tokens": row.prompt_tokens,
        "cached_tokens": row.cached_tokens,
        "completion_tokens": row.completion_tokens,
    }
    cost = cost_of(price, **tokens, batch=True)
    assert cost == cost_of(price, **tokens) / 2  # the fake price has no batch rates: half
    return cost


def no_hold_left(batch: Batch) -> bool:
    return not Hold.objects.filter(request_id=hold_id(batch.id)).exists() and all(
        period.reserved == 0 for period in BudgetPeriod.objects.all()
    )


# --- the acceptance test: the official SDK against a live server --------------------------------


@pytest.mark.django_db(transaction=True)  # the live server shares the database
def test_the_sdk_gets_a_batch_the_upstream_ran(
    live_daphne, fake_upstream, fake_price, alice, org_a, project_a
):
    serve_batches(project_a, fake_upstream)
    key = make_key(alice, org_a, project_a, ["chat", "read"])
    requests = [line("first", "hello there"), line("second", "how are you")]
    with openai.OpenAI(
        base_url=f"{live_daphne}/v1", api_key=key, max_retries=0, timeout=30
    ) as client:
        uploaded = client.files.create(file=("in.jsonl", jsonl(*requests)), purpose="batch")
        created = client.batches.create(
            input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
        )
        # Handed off on commit, submitted and polled at once: the fake ends a batch at its
        # first poll.
        batch = client.batches.retrieve(created.id)
        assert batch.status == "completed"
        assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 0)
        assert batch.in_progress_at
        assert batch.completed_at
        output = lines_of(client.files.content(batch.output_file_id).read())
        assert batch.error_file_id is None

    [sent] = fake_upstream.uploads  # the upstream got the batch, not the lines one by one
    assert [item["custom_id"] for item in lines_of(sent["data"])] == ["0", "1"]
    [upstream] = fake_upstream.batches
    assert (upstream["status"], upstream["metadata"]) == (
        "completed",
        {"gateway_batch_id": created.id},
    )
    assert [item["custom_id"] for item in output] == ["first", "second"]
    answers = [item["response"]["body"]["choices"][0]["message"]["content"] for item in output]
    assert answers == ["Echo: hello there", "Echo: how are you"]
    assert all(item["id"].startswith("batch_req_") for item in output)
    rows = list(UsageRecord.objects.order_by("id"))
    assert len(rows) == 2
    assert [item["response"]["request_id"] for item in output] == [r.request_id.hex for r in rows]
    assert {(r.source, r.status, r.model) for r in rows} == {("batch", "ok", "fake-gpt")}
    assert all(r.cost == at_batch_price(r, fake_price) > 0 for r in rows)
    stored = Batch.objects.get()
    assert stored.cost == sum(r.cost for r in rows)
    assert stored.upstream_id == upstream["id"]
    assert no_hold_left(stored)


# --- in-process ------------------------------------------------------------------------------

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(request, tmp_path) -> Path | None:
    if "live_daphne" in request.fixturenames:
        return None  # the server keeps its files where the test settings say
    settings = request.getfixturevalue("settings")
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def key(alice, org_a, project_a, fake_price) -> str:
    return make_key(alice, org_a, project_a, ["chat", "read"])


@pytest.fixture
def api_key(key, project_a) -> ApiKey:
    return ApiKey.objects.select_related("project").get(project=project_a)


@pytest.fixture
def budget(org_a, project_a) -> Budget:
    """A budget, so the holds show on its period."""
    return Budget.objects.create(
        organization=org_a, project=project_a, scope="project", limit_usd=Decimal("100")
    )


def make_batch(api_key: ApiKey, *requests: dict[str, Any]) -> Batch:
    """A batch as POST /v1/batches makes it; not run yet (nothing commits in these tests)."""
    stored = stored_file(api_key.project, jsonl(*requests), key=api_key)
    body = {"input_file_id": stored.id, "endpoint": CHAT, "completion_window": "24h"}
    return batches.batch_create(key=api_key, body=json.dumps(body).encode())


def run(batch: Batch) -> Progress:
    return batches.batch_run(batch_id=batch.id)


def period() -> BudgetPeriod:
    return BudgetPeriod.objects.get()


def test_it_holds_the_whole_batch_then_bills_each_line_once(
    api_key, budget, fake_upstream, fake_price
):
    model = "fake-gpt@batchwait"  # the upstream keeps it in progress until told
    serve_batches(api_key.project, fake_upstream, model)
    batch = make_batch(
        api_key, *(line(name, f"say {name}", model, max_tokens=50) for name in "abc")
    )

    assert run(batch) is Progress.PAUSED  # handed off: the sweep polls it

    batch.refresh_from_db()
    [upstream] = fake_upstream.batches
    assert (batch.status, batch.upstream_id, batch.upstream_status) == (
        "in_progress",
        upstream["id"],
        "in_progress",
    )
    [sent] = fake_upstream.uploads
    assert [item["custom_id"] for item in lines_of(sent["data"])] == ["0", "1", "2"]
    assert {item["body"]["model"] for item in lines_of(sent["data"])} == {model}
    assert {item["body"]["max_tokens"] for item in lines_of(sent["data"])} == {50}
    assert not fake_upstream.request_counts  # no line was called one by one

    # One hold for the whole batch: every line's worst case at the batch price, until the
    # batch's window ends (and the time given to collect it).
    hold = Hold.objects.get(request_id=hold_id(batch.id))
    held = sum(
        worst_case(
            fake_price,
            prompt_tokens=metering.held_prompt_tokens(
                metering.estimate_prompt_tokens(
                    ChatRequest(model=model, messages=[{"role": "user", "content": f"say {n}"}])
                )
            ),
            max_tokens=50,
            batch=True,
        )
        for n in "abc"
    )
    assert hold.amount == held == period().reserved
    assert hold.expires_at == batch.expires_at + COLLECT_GRACE + timedelta(
        seconds=django_settings.BILLING_HOLD_SECONDS
    )
    assert holds_expire(timezone.now() + timedelta(hours=23)) == 0  # not before its window
    assert Hold.objects.filter(request_id=hold_id(batch.id)).exists()

    assert tasks.sweep_batches() == 1  # still running upstream
    assert Batch.objects.get(pk=batch.pk).status == "in_progress"
    fake_upstream.release_batches()
    assert tasks.sweep_batches() == 1  # eager: this poll collects it

    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == ("completed", 3, 0)
    assert batch.completed_at
    assert batch.finalizing_at
    rows = list(UsageRecord.objects.order_by("id"))
    assert [r.request_id for r in rows] == [line_request_id(batch.id, i) for i in range(3)]
    assert {(r.source, r.status, r.model, r.estimated) for r in rows} == {
        ("batch", "ok", model, False)
    }
    assert {r.api_key_id for r in rows} == {api_key.pk}
    assert all(r.cost == at_batch_price(r, fake_price) > 0 for r in rows)
    assert batch.cost == sum(r.cost for r in rows) == period().spent
    assert no_hold_left(batch)
    assert fake_upstream.request_counts[model] == 3  # the upstream answered each line once

    output = contents(batch.output_file)
    assert [item["custom_id"] for item in output] == ["a", "b", "c"]
    assert [item["response"]["request_id"] for item in output] == [r.request_id.hex for r in rows]
    bodies = [item["response"]["body"] for item in output]
    assert [b["choices"][0]["message"]["content"] for b in bodies] == [
        "Echo: say a",
        "Echo: say b",
        "Echo: say c",
    ]
    assert [b["id"] for b in bodies] == [f"chatcmpl-{r.request_id.hex}" for r in rows]
    assert [b["usage"]["completion_tokens"] for b in bodies] == [r.completion_tokens for r in rows]
    assert batch.error_file is None

    assert tasks.sweep_batches() == 0  # ended: nothing more to do, nothing billed again
    assert UsageRecord.objects.count() == 3


def test_a_line_without_usage_is_estimated_and_a_failed_line_costs_nothing(
    api_key, budget, fake_upstream, fake_price
):
    serve_batches(api_key.project, fake_upstream, "fake-gpt", "fake-gpt@500", "fake-gpt@nousage")
    batch = make_batch(
        api_key,
        line("ok", "one two"),
        line("broken", "three", "fake-gpt@500"),
        line("unmetered", "four five six", "fake-gpt@nousage"),
    )

    assert run(batch) is Progress.DONE  # the fake ends it at the poll after the submission

    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == ("completed", 2, 1)
    [failed] = contents(batch.error_file)
    assert failed["custom_id"] == "broken"
    assert failed["error"]["code"] == "upstream_error"
    assert failed["response"]["body"]["error"]["code"] == "upstream_error"
    assert failed["response"]["status_code"] >= 500
    ok, unmetered = contents(batch.output_file)
    assert [ok["custom_id"], unmetered["custom_id"]] == ["ok", "unmetered"]
    rows = {r.model: r for r in UsageRecord.objects.all()}
    assert len(rows) == 3  # one per line the upstream answered
    assert (rows["fake-gpt@500"].status, rows["fake-gpt@500"].cost) == ("error", 0)
    estimated = rows["fake-gpt@nousage"]
    assert estimated.estimated
    assert estimated.cost == at_batch_price(estimated, fake_price) > 0
    assert estimated.completion_tokens == count_text_tokens("Echo: four five six")
    assert unmetered["response"]["body"]["usage"]["completion_tokens"] == (
        estimated.completion_tokens
    )
    assert not rows["fake-gpt"].estimated
    assert batch.cost == sum(r.cost for r in rows.values())
    assert no_hold_left(batch)


def test_cancel_cancels_it_upstream_and_gives_the_hold_back(
    key, api_key, budget, fake_upstream, django_capture_on_commit_callbacks
):
    serve_batches(api_key.project, fake_upstream, "fake-gpt@batchwait")
    batch = make_batch(api_key, line("a", model="fake-gpt@batchwait", max_tokens=20))
    run(batch)
    assert period().reserved > 0

    with django_capture_on_commit_callbacks(execute=True):  # the run the cancel queues
        response = Client().post(f"{URL}/{batch.id}/cancel", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert (response.status_code, response.json()["status"]) == (200, "cancelling")
    [upstream] = fake_upstream.batches
    assert upstream["status"] == "cancelled"
    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == ("cancelled", 0, 0)
    assert batch.cancelled_at is not None
    assert batch.output_file is batch.error_file is None
    assert not UsageRecord.objects.exists()
    assert no_hold_left(batch)


def test_an_upstream_that_fails_the_batch_fails_ours(key, api_key, budget, fake_upstream):
    serve_batches(api_key.project, fake_upstream, "fake-gpt", "fake-gpt@batchfail")
    batch = make_batch(api_key, line("a", max_tokens=20), line("b", model="fake-gpt@batchfail"))

    assert run(batch) is Progress.DONE

    batch.refresh_from_db()
    assert batch.status == "failed"
    assert batch.failed_at is not None
    [error] = batch.errors
    assert error["code"] == "invalid_request"
    assert "@batchfail" in error["message"]
    assert error["line"] == 1  # the upstream's line 1 is the first line of our file
    assert not UsageRecord.objects.exists()
    assert no_hold_left(batch)
    response = Client().get(f"{URL}/{batch.id}", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.json()["status"] == "failed"
    assert response.json()["errors"]["data"][0]["code"] == "invalid_request"


def test_a_garbled_output_file_keeps_what_can_be_read(api_key, budget, fake_upstream, fake_price):
    model = "fake-gpt@batchgarbage"
    serve_batches(api_key.project, fake_upstream, model)
    batch = make_batch(
        api_key, *(line(name, f"say {name}", model, max_tokens=20) for name in "abc")
    )

    assert run(batch) is Progress.DONE

    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == ("completed", 2, 1)
    output = contents(batch.output_file)
    assert [item["custom_id"] for item in output] == ["a", "b"]
    # The first answer for a line stands; a second one for the same line is ignored.
    first = output[0]["response"]["body"]["choices"][0]["message"]["content"]
    assert first == "Echo: say a" != DUPLICATE_REPLY
    [missing] = contents(batch.error_file)  # the last line of the file was cut in half
    assert (missing["custom_id"], missing["response"]) == ("c", None)
    assert missing["error"]["code"] == "batch_result_missing"
    rows = list(UsageRecord.objects.all())
    assert len(rows) == 2
    assert batch.cost == sum(r.cost for r in rows) == period().spent
    assert all(r.cost == at_batch_price(r, fake_price) for r in rows)
    assert no_hold_left(batch)


def test_a_result_file_that_cannot_be_read_leaves_error_lines(api_key, budget, fake_upstream):
    serve_batches(api_key.project, fake_upstream, "fake-gpt@batchlost")
    batch = make_batch(api_key, line("a", model="fake-gpt@batchlost", max_tokens=20))

    assert run(batch) is Progress.DONE

    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == ("completed", 0, 1)
    [error] = batch.errors
    assert error["code"] == "upstream_results_unreadable"
    [lost] = contents(batch.error_file)
    assert (lost["custom_id"], lost["error"]["code"]) == ("a", "batch_result_missing")
    assert batch.output_file is None
    assert not UsageRecord.objects.exists()
    assert no_hold_left(batch)


def test_an_upstream_batch_that_expired_expires_ours(api_key, budget, fake_upstream):
    model = "fake-gpt@batchexpire"  # the fake answers the first line only
    serve_batches(api_key.project, fake_upstream, model)
    batch = make_batch(api_key, *(line(name, model=model, max_tokens=20) for name in "abc"))

    run(batch)

    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == ("expired", 1, 2)
    assert batch.expired_at is not None
    assert [item["custom_id"] for item in contents(batch.output_file)] == ["a"]
    expired = contents(batch.error_file)
    assert [item["custom_id"] for item in expired] == ["b", "c"]
    assert {item["error"]["code"] for item in expired} == {"batch_expired"}
    assert {item["response"] is None for item in expired} == {True}
    assert UsageRecord.objects.count() == 1
    assert no_hold_left(batch)


def test_when_our_window_ends_first_it_is_cancelled_upstream_and_expires(
    api_key, budget, fake_upstream
):
    serve_batches(api_key.project, fake_upstream, "fake-gpt@batchwait")
    batch = make_batch(api_key, *(line(n, model="fake-gpt@batchwait", max_tokens=9) for n in "ab"))
    run(batch)
    Batch.objects.filter(pk=batch.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert run(batch) is Progress.DONE

    [upstream] = fake_upstream.batches
    assert upstream["status"] == "cancelled"
    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == ("expired", 0, 2)
    assert {item["error"]["code"] for item in contents(batch.error_file)} == {"batch_expired"}
    assert no_hold_left(batch)


def test_an_upstream_out_of_reach_is_waited_for_then_given_up(
    api_key, budget, fake_upstream, closed_port
):
    connection = serve_batches(api_key.project, fake_upstream, "fake-gpt@batchwait")
    batch = make_batch(api_key, line("a", model="fake-gpt@batchwait", max_tokens=9))
    run(batch)
    ProviderConnection.objects.filter(pk=connection.pk).update(
        base_url=f"http://127.0.0.1:{closed_port}/v1"
    )

    assert run(batch) is Progress.PAUSED  # a moment's failure: asked again at the next sweep
    assert Hold.objects.filter(request_id=hold_id(batch.id)).exists()

    gone = timezone.now() - COLLECT_GRACE - timedelta(seconds=1)
    Batch.objects.filter(pk=batch.pk).update(expires_at=gone)
    assert run(batch) is Progress.DONE

    batch.refresh_from_db()
    assert (batch.status, batch.completed) == ("expired", 0)
    assert [item["custom_id"] for item in contents(batch.error_file)] == ["a"]
    assert not UsageRecord.objects.exists()
    assert no_hold_left(batch)


# --- exactly once across a crash -------------------------------------------------------------


def test_a_worker_that_dies_while_collecting_bills_no_line_twice(
    api_key, budget, fake_upstream, fake_price, monkeypatch
):
    model = "fake-gpt@batchwait"
    serve_batches(api_key.project, fake_upstream, model)
    batch = make_batch(
        api_key, *(line(name, f"say {name}", model, max_tokens=30) for name in "abcd")
    )
    run(batch)
    held = period().reserved
    fake_upstream.release_batches()
    real = upstream_batches._settle_line
    settled: list[str] = []

    def dies_after_the_second_row(**kwargs: Any) -> UsageRecord:
        row = real(**kwargs)
        settled.append(row.request_id.hex)
        if len(settled) == 2:
            raise WorkerDied  # the row was written... and its transaction never commits
        return row

    monkeypatch.setattr(upstream_batches, "_settle_line", dies_after_the_second_row)
    with pytest.raises(WorkerDied):
        run(batch)

    batch.refresh_from_db()
    assert (batch.status, batch.next_line, batch.completed) == ("finalizing", 1, 1)
    [first] = UsageRecord.objects.all()  # the second row went with its transaction
    assert batch.cost == first.cost
    assert period().reserved == held - first.cost  # paid out of the hold, once
    assert period().spent == first.cost

    monkeypatch.setattr(upstream_batches, "_settle_line", real)  # a new worker
    assert run(batch) is Progress.DONE

    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == ("completed", 4, 0)
    rows = list(UsageRecord.objects.order_by("id"))
    assert [r.request_id for r in rows] == [line_request_id(batch.id, i) for i in range(4)]
    assert [item["custom_id"] for item in contents(batch.output_file)] == list("abcd")
    assert [item["response"]["request_id"] for item in contents(batch.output_file)] == [
        r.request_id.hex for r in rows
    ]
    assert batch.cost == sum(r.cost for r in rows) == period().spent
    assert no_hold_left(batch)
    # The upstream ran the batch once: read again, not asked again.
    assert (len(fake_upstream.batches), len(fake_upstream.uploads)) == (1, 1)
    assert fake_upstream.request_counts[model] == 4

    # A line settled a second time (a worker that died after its commit) changes nothing.
    again = quota_settle_held(
        hold_id=hold_id(batch.id),
        request_id=rows[0].request_id,
        context=CallContext(
            organization_id=api_key.project.organization_id,
            project_id=api_key.project_id,
            user_id=None,
            model=model,
            source="batch",
            batch=True,
        ),
        price_id=fake_price.pk,
        status="ok",
        prompt_tokens=999,
        completion_tokens=999,
    )
    assert again.pk == rows[0].pk
    assert UsageRecord.objects.count() == 4
    assert period().spent == batch.cost


@pytest.mark.parametrize("dies_in", ["release", "finalize"])
def test_a_worker_that_dies_after_the_last_line_ends_the_batch_once(
    api_key, budget, fake_upstream, monkeypatch, dies_in
):
    serve_batches(api_key.project, fake_upstream)
    batch = make_batch(api_key, line("a", max_tokens=9), line("b", max_tokens=9))
    real_release, real_finalize = upstream_batches.quota_release, batches._finalize

    def release_then_die(**kwargs: Any) -> Any:
        real_release(**kwargs)
        raise WorkerDied

    def die(*args: Any, **kwargs: Any) -> None:
        raise WorkerDied

    if dies_in == "release":
        monkeypatch.setattr(upstream_batches, "quota_release", release_then_die)
    else:
        monkeypatch.setattr(batches, "_finalize", die)
    with pytest.raises(WorkerDied):
        run(batch)
    batch.refresh_from_db()
    assert (batch.status, batch.next_line) == ("finalizing", 2)  # every line recorded
    assert no_hold_left(batch)  # released before the batch ends: a final batch holds nothing

    monkeypatch.setattr(upstream_batches, "quota_release", real_release)
    monkeypatch.setattr(batches, "_finalize", real_finalize)
    assert run(batch) is Progress.DONE

    batch.refresh_from_db()
    assert (batch.status, batch.completed) == ("completed", 2)
    assert [item["custom_id"] for item in contents(batch.output_file)] == ["a", "b"]
    rows = list(UsageRecord.objects.all())
    assert len(rows) == 2
    assert batch.cost == sum(r.cost for r in rows) == period().spent
    assert len(fake_upstream.batches) == 1


def test_a_worker_that_dies_after_submitting_does_not_submit_again(
    api_key, budget, fake_upstream, monkeypatch
):
    serve_batches(api_key.project, fake_upstream)
    batch = make_batch(api_key, line("a", max_tokens=9), line("b", max_tokens=9))
    real = upstream_batches._upstream
    calls: list[int] = []

    def dies_once_it_is_submitted(spec: Any, work: Any) -> Any:
        answer = real(spec, work)
        calls.append(1)
        if len(calls) == 1:
            raise WorkerDied  # before the upstream's batch id is saved
        return answer

    monkeypatch.setattr(upstream_batches, "_upstream", dies_once_it_is_submitted)
    with pytest.raises(WorkerDied):
        run(batch)

    batch.refresh_from_db()
    assert batch.handed_off_at is not None
    assert batch.upstream_id == ""
    assert Hold.objects.filter(request_id=hold_id(batch.id)).exists()
    assert run(batch) is Progress.DONE  # finds its batch upstream by its tag

    batch.refresh_from_db()
    [upstream] = fake_upstream.batches
    assert (batch.status, batch.upstream_id, batch.completed) == ("completed", upstream["id"], 2)
    assert len(fake_upstream.uploads) == 1
    assert UsageRecord.objects.count() == 2
    assert no_hold_left(batch)


def test_a_worker_that_dies_before_submitting_keeps_one_hold(
    api_key, budget, fake_upstream, monkeypatch
):
    serve_batches(api_key.project, fake_upstream)
    batch = make_batch(api_key, line("a", max_tokens=9))
    real = upstream_batches._submit

    def dies(*args: Any, **kwargs: Any) -> Any:
        raise WorkerDied

    monkeypatch.setattr(upstream_batches, "_submit", dies)
    with pytest.raises(WorkerDied):
        run(batch)
    assert Hold.objects.filter(request_id=hold_id(batch.id)).count() == 1
    assert not fake_upstream.uploads

    monkeypatch.setattr(upstream_batches, "_submit", real)
    assert run(batch) is Progress.DONE

    batch.refresh_from_db()
    assert (batch.status, batch.completed) == ("completed", 1)
    assert len(fake_upstream.uploads) == 1
    assert no_hold_left(batch)


# --- what runs here instead ------------------------------------------------------------------


def test_a_batch_its_budget_cannot_hold_whole_runs_here_line_by_line(
    api_key, fake_upstream, org_a, project_a
):
    serve_batches(project_a, fake_upstream)
    # Each line alone fits; the worst case of all three at once does not.
    Budget.objects.create(
        organization=org_a, project=project_a, scope="project", limit_usd=Decimal("0.04")
    )
    batch = make_batch(api_key, *(line(name, max_tokens=5) for name in "abc"))

    run(batch)

    batch.refresh_from_db()
    assert not fake_upstream.uploads
    assert batch.handed_off_at is None
    assert batch.upstream_id == ""
    assert batch.status == "completed"
    assert fake_upstream.request_counts["fake-gpt"] >= 1  # its lines, called one by one
    assert UsageRecord.objects.count() == fake_upstream.request_counts["fake-gpt"]
    assert period().reserved == 0


def test_a_rate_limit_that_cannot_take_the_whole_batch_runs_it_here(
    api_key, fake_upstream, project_a
):
    serve_batches(project_a, fake_upstream)
    RateLimit.objects.create(project=project_a, tokens_per_minute=80)
    batch = make_batch(api_key, *(line(name, max_tokens=9) for name in "abc"))

    run(batch)

    assert not fake_upstream.uploads
    assert fake_upstream.request_counts["fake-gpt"] >= 1


def test_a_line_on_another_connection_keeps_the_batch_here(api_key, fake_upstream, project_a):
    serve_batches(project_a, fake_upstream)
    batch = make_batch(api_key, line("a"), line("nope", model="gpt-nope"))

    run(batch)

    batch.refresh_from_db()
    assert not fake_upstream.uploads
    assert (batch.status, batch.completed, batch.failed) == ("completed", 1, 1)
    [refused] = contents(batch.error_file)
    assert refused["error"]["code"] == "model_not_found"


def test_a_connection_without_the_batch_api_keeps_it_here(api_key, fake_upstream, project_a):
    connection = fake_connection(project_a, fake_upstream)  # supports_batches off
    connection_model_add(actor=None, connection=connection, name="fake-gpt")
    batch = make_batch(api_key, line("a"))

    run(batch)

    assert not fake_upstream.uploads
    assert Batch.objects.get(pk=batch.pk).status == "completed"
    assert fake_upstream.request_counts["fake-gpt"] == 1


def test_an_upstream_that_refuses_the_batch_has_it_run_here(
    api_key, budget, fake_upstream, project_a
):
    connection = serve_batches(project_a, fake_upstream)
    ProviderConnection.objects.filter(pk=connection.pk).update(api_key_encrypted=encrypt("sk-bad"))
    batch = make_batch(api_key, line("a", max_tokens=9))

    assert run(batch) is Progress.MORE  # the hold given back; the local runner takes it
    assert no_hold_left(batch)
    assert run(batch) is Progress.DONE

    batch.refresh_from_db()
    assert (batch.handed_off_at, batch.upstream_id, batch.status) == (None, "", "completed")
    [refused] = contents(batch.error_file)  # the key is refused line by line too
    assert refused["error"]["code"] == "upstream_auth_failed"
    assert not fake_upstream.uploads


# --- tenancy ---------------------------------------------------------------------------------


def test_another_organizations_key_gets_404_on_a_handed_off_batch(
    key, api_key, fake_upstream, charlie, org_b, project_b
):
    serve_batches(api_key.project, fake_upstream)
    batch = make_batch(api_key, line("a", max_tokens=9))
    run(batch)
    batch.refresh_from_db()
    assert batch.status == "completed"
    assert batch.upstream_id
    outsider = make_key(charlie, org_b, project_b, ["chat", "read"])

    def get(path: str, who: str) -> Any:
        return Client().get(path, HTTP_AUTHORIZATION=f"Bearer {who}")

    answers = [
        get(f"{URL}/{batch.id}", outsider),
        Client().post(f"{URL}/{batch.id}/cancel", HTTP_AUTHORIZATION=f"Bearer {outsider}"),
        get(f"/v1/files/{batch.output_file_id}", outsider),
        get(f"/v1/files/{batch.output_file_id}/content", outsider),
    ]

    assert [a.status_code for a in answers] == [404, 404, 404, 404]
    assert get(f"{URL}/{batch.id}", key).status_code == 200
    assert get(URL, outsider).json()["data"] == []
