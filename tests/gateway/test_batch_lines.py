"""Batches over each endpoint run their lines through the same checks as ``/v1``: a project
that moderates its input has every line checked (a flagged line is an error line, nothing sent
to the chat model), and a ``/v1/responses`` line is billed and stored only when the batch
records it, so its ledger row and its cost in the batch are written exactly once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from accounts.models import ApiKey
from billing.models import Hold, UsageRecord
from chat import moderation
from chat.models import ChatSettings, ModerationFlag
from gateway import batches, responses
from gateway.batches import LineRun, Progress
from gateway.models import Batch, File, StoredResponse
from tests.chat.conftest import make_key, serve
from tests.gateway.test_v1_files import jsonl, request_line, stored_file

pytestmark = pytest.mark.django_db

RESPONSES = "/v1/responses"
CHAT = "/v1/chat/completions"


@pytest.fixture(autouse=True)
def media(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def api_key(alice, org_a, project_a, fake_upstream, fake_price) -> ApiKey:
    serve(project_a, fake_upstream)
    make_key(alice, org_a, project_a, ["chat", "read"])
    return ApiKey.objects.select_related("project").get(project=project_a)


def response_line(custom_id: str, text: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": RESPONSES,
        "body": {"model": "fake-gpt", "input": text},
    }


def make_batch(api_key: ApiKey, endpoint: str, *requests: dict[str, Any]) -> Batch:
    stored = stored_file(api_key.project, jsonl(*requests), key=api_key)
    body = {"input_file_id": stored.id, "endpoint": endpoint, "completion_window": "24h"}
    return batches.batch_create(key=api_key, body=json.dumps(body).encode())


def contents(file: File | None) -> list[dict[str, Any]]:
    if file is None:
        return []
    with file.file.open("rb") as handle:
        return [json.loads(line) for line in handle.read().splitlines() if line.strip()]


def moderate(project, patterns: str) -> None:
    ChatSettings.objects.update_or_create(
        project=project, defaults={"moderation_enabled": True, "moderation_patterns": patterns}
    )
    moderation.forget_config()


def test_it_runs_a_batch_over_responses_billing_and_storing_each_line_once(api_key, fake_upstream):
    batch = make_batch(api_key, RESPONSES, response_line("a", "first"), response_line("b", "2nd"))

    assert batches.batch_run(batch_id=batch.id) is Progress.DONE

    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == ("completed", 2, 0)
    output = contents(batch.output_file)
    assert [line["custom_id"] for line in output] == ["a", "b"]
    bodies = [line["response"]["body"] for line in output]
    assert [body["object"] for body in bodies] == ["response", "response"]
    assert [body["output"][0]["content"][0]["text"] for body in bodies] == [
        "Echo: first",
        "Echo: 2nd",
    ]
    rows = list(UsageRecord.objects.order_by("id"))
    assert [row.source for row in rows] == ["batch", "batch"]
    assert [line["response"]["request_id"] for line in output] == [r.request_id.hex for r in rows]
    assert batch.cost == sum(row.cost for row in rows) > 0
    assert set(StoredResponse.objects.values_list("id", flat=True)) == {b["id"] for b in bodies}
    assert not Hold.objects.exists()


class WorkerDied(BaseException):
    """A worker killed mid-line: nothing after this point of the line runs."""


def test_a_responses_line_whose_worker_dies_before_it_is_recorded_is_billed_once(
    api_key, fake_upstream, monkeypatch
):
    batch = make_batch(api_key, RESPONSES, response_line("a", "one"), response_line("b", "two"))
    real = responses.responses_line_run
    calls: list[str] = []

    def dies_on_the_second_line(**kwargs: Any) -> LineRun:
        run = real(**kwargs)
        calls.append(kwargs["body"]["input"])
        if len(calls) != 2:
            return run

        def settle_then_die() -> UsageRecord:
            assert run.settle is not None
            run.settle()  # the row and the stored response are written...
            raise WorkerDied  # ...and the process dies before the line is recorded

        return LineRun(run.status_code, run.body, run.request_id, settle_then_die)

    monkeypatch.setattr(responses, "responses_line_run", dies_on_the_second_line)
    with pytest.raises(WorkerDied):
        batches.batch_run(batch_id=batch.id)

    batch.refresh_from_db()
    assert (batch.next_line, UsageRecord.objects.count()) == (1, 1)
    # The dying line's response went with its transaction: it cannot be chained from.
    assert StoredResponse.objects.count() == 1

    monkeypatch.setattr(responses, "responses_line_run", real)
    assert batches.batch_run(batch_id=batch.id) is Progress.DONE

    batch.refresh_from_db()
    output = contents(batch.output_file)
    rows = list(UsageRecord.objects.order_by("id"))
    assert (batch.status, len(rows)) == ("completed", 2)
    assert [line["response"]["request_id"] for line in output] == [r.request_id.hex for r in rows]
    assert batch.cost == sum(row.cost for row in rows)
    kept = {line["response"]["body"]["id"] for line in output}
    assert set(StoredResponse.objects.values_list("id", flat=True)) == kept


# The check runs on an event loop of its own, its flag written from another thread, as in a
# worker: the test's data must be committed for that thread to see it.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("endpoint", "make_line"),
    [
        (CHAT, lambda custom_id, text: request_line(custom_id, text)),
        (RESPONSES, response_line),
    ],
)
def test_a_moderated_project_has_every_batch_line_checked(
    api_key, project_a, fake_upstream, endpoint, make_line
):
    moderate(project_a, patterns="spam: \\bbuy now\\b")
    batch = make_batch(
        api_key, endpoint, make_line("clean", "hello there"), make_line("bad", "BUY NOW cheap")
    )

    assert batches.batch_run(batch_id=batch.id) is Progress.DONE

    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == ("completed", 1, 1)
    assert [line["custom_id"] for line in contents(batch.output_file)] == ["clean"]
    [refused] = contents(batch.error_file)
    assert refused["custom_id"] == "bad"
    assert refused["error"]["code"] == "content_flagged"
    assert refused["response"]["status_code"] == 400
    assert "flagged for spam" in refused["response"]["body"]["error"]["message"]
    # Nothing of the flagged line reached the chat model, and only the clean line is billed.
    assert sum(fake_upstream.request_counts.values()) == 1
    assert UsageRecord.objects.count() == 1
    flag = ModerationFlag.objects.get()
    assert (flag.project, flag.api_key_id, flag.checked_by) == (project_a, api_key.pk, "patterns")
