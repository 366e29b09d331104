"""The batches of a project, on a page its members see: progress, counts, cost and the result
files; an outsider gets 404 on every one of these pages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.urls import reverse

from accounts.models import ApiKey
from core.money import usd
from gateway import batches
from gateway.models import Batch
from tests.chat.conftest import make_key, serve
from tests.gateway.test_v1_batches import make_batch, numbered
from tests.gateway.test_v1_files import jsonl, request_line, stored_file

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def api_key(alice, org_a, project_a, fake_upstream, fake_price) -> ApiKey:
    serve(project_a, fake_upstream)
    make_key(alice, org_a, project_a, ["chat"])
    return ApiKey.objects.select_related("project").get(project=project_a)


@pytest.fixture
def half_done(api_key) -> Batch:
    """Two of four lines run: the second an error (a model the project does not have)."""
    other = {**request_line("bad"), "body": {**request_line("x")["body"], "model": "gpt-nope"}}
    batch = make_batch(api_key, request_line("good"), other, *numbered(2))
    batches.batch_run(batch_id=batch.id, lines=2)
    batch.refresh_from_db()
    return batch


@pytest.fixture
def finished(api_key) -> Batch:
    batch = make_batch(api_key, *numbered(2))
    batches.batch_run(batch_id=batch.id)
    batch.refresh_from_db()
    return batch


def urls(batch: Batch, file_id: str | None = None) -> list[str]:
    project = batch.project
    base = {"org_slug": project.organization.slug, "project_slug": project.slug}
    found = [
        reverse("batches", kwargs=base),
        reverse("batch_detail", kwargs={**base, "batch_id": batch.id}),
    ]
    if file_id:
        found.append(
            reverse("batch_file", kwargs={**base, "batch_id": batch.id, "file_id": file_id})
        )
    return found


def test_a_member_sees_progress_counts_and_cost(client_for, bob, half_done, finished):
    list_url, detail_url = urls(half_done)

    page = client_for(bob).get(list_url)

    assert page.status_code == 200
    html = page.content.decode()
    # Newest first.
    assert html.index(finished.id) < html.index(half_done.id)
    assert half_done.cost > 0
    assert usd(half_done.cost) in html
    assert 'aria-valuenow="50"' in html
    assert 'width="50%"' in html
    assert 'aria-valuenow="100"' in html  # the finished one
    assert "in_progress" in html
    assert "completed" in html

    detail = client_for(bob).get(detail_url).content.decode()
    assert "2 of 4 requests run (50%): 1 answered, 1 failed." in detail
    assert usd(half_done.cost) in detail
    assert f'title="{half_done.cost:f}"' in detail  # the exact amount
    assert "The answers and errors are written when the batch ends." in detail


def test_the_result_files_download_from_the_batch_page(client_for, bob, finished):
    _, detail_url = urls(finished)
    [*_, file_url] = urls(finished, finished.output_file_id)

    detail = client_for(bob).get(detail_url).content.decode()
    assert file_url in detail
    assert urls(finished, finished.input_file_id)[-1] in detail

    response = client_for(bob).get(file_url)
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment")
    content = b"".join(response.streaming_content)
    assert [line["custom_id"] for line in _lines(content)] == ["r0", "r1"]
    assert client_for(bob).post(file_url).status_code == 405


def _lines(content: bytes) -> list[dict]:
    return [json.loads(line) for line in content.splitlines() if line.strip()]


def test_only_the_batchs_own_files_download_there(client_for, bob, finished, half_done, project_a):
    unrelated = stored_file(project_a, jsonl(request_line("a")))

    for file_id in (unrelated.id, half_done.input_file_id, "file-nope"):
        [*_, url] = urls(finished, file_id)
        assert client_for(bob).get(url).status_code == 404


def test_charlie_gets_404_on_every_batch_page(client_for, charlie, finished):
    for url in urls(finished, finished.output_file_id):
        assert client_for(charlie).get(url).status_code == 404
        assert client_for(charlie).post(url).status_code == 404


def test_a_visitor_is_sent_to_log_in(client, finished):
    for url in urls(finished, finished.output_file_id):
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith(reverse("login"))


def test_a_project_without_batches_says_how_to_make_one(client_for, alice, project_a):
    page = client_for(alice).get(
        reverse("batches", kwargs={"org_slug": "org-a", "project_slug": project_a.slug})
    )

    assert page.status_code == 200
    assert "No batches yet" in page.content.decode()
