"""/v1/files: JSONL uploads for batches, checked line by line; read, listed, downloaded and
deleted by the key's project only (another project's id is a 404 in OpenAI's words)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient, Client

from accounts.models import ApiKey, Project
from gateway import batches, files
from gateway.models import Batch, File
from tests.chat.conftest import make_key, serve

pytestmark = pytest.mark.django_db

URL = "/v1/files"


@pytest.fixture(autouse=True)
def media(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def request_line(custom_id: str, content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "fake-gpt", "messages": [{"role": "user", "content": content}]},
        **extra,
    }


def jsonl(*lines: Any) -> bytes:
    return "".join(
        (line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines
    ).encode()


def upload(key: str, data: bytes, *, purpose: str = "batch", name: str = "requests.jsonl") -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return Client().post(
        URL,
        {"file": SimpleUploadedFile(name, data, "application/jsonl"), "purpose": purpose},
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def get(key: str, path: str, **query: Any) -> Any:
    return Client().get(path, query, HTTP_AUTHORIZATION=f"Bearer {key}")


def delete(key: str, path: str) -> Any:
    return Client().delete(path, HTTP_AUTHORIZATION=f"Bearer {key}")


def stored_file(project: Project, data: bytes, *, key: ApiKey | None = None) -> File:
    """A batch input file kept as an upload would be (no HTTP)."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    checked = files.check_upload(SimpleUploadedFile("in.jsonl", data), "batch")
    return files.file_save(
        files.file_store(project=project, key=key, upload=checked, purpose="batch")
    )


@pytest.fixture
def key(alice, org_a, project_a) -> str:
    return make_key(alice, org_a, project_a, ["chat", "read"])


def test_it_keeps_an_upload_and_answers_openais_file_object(key, project_a, org_a, media):
    data = jsonl(request_line("a"), "", request_line("b"))

    response = upload(key, data, name="my requests.jsonl")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "id", "object", "bytes", "created_at", "filename", "purpose", "status", "expires_at"
    }  # fmt: skip
    assert body["id"].startswith("file-")
    assert (body["object"], body["bytes"], body["purpose"]) == ("file", len(data), "batch")
    assert (body["filename"], body["status"], body["expires_at"]) == (
        "my requests.jsonl",
        "processed",
        None,
    )
    stored = File.objects.for_project(project_a).get(pk=body["id"])
    # Under the tenant's path in the default storage, the bytes as sent.
    assert stored.file.name == f"files/o{org_a.pk}/p{project_a.pk}/{body['id']}.jsonl"
    assert (media / stored.file.name).read_bytes() == data
    assert stored.api_key == ApiKey.objects.get(project=project_a)

    assert get(key, f"{URL}/{body['id']}").json() == body


@pytest.mark.django_db(transaction=True)  # the view reads on threads of its own
async def test_it_serves_the_bytes(key, project_a):
    data = jsonl(request_line("a"), request_line("b", "ünïcode"))
    stored = await database_sync_to_async(stored_file)(project_a, data)

    response = await AsyncClient().get(
        f"{URL}/{stored.id}/content", headers={"Authorization": f"Bearer {key}"}
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Length"] == str(len(data))
    assert b"".join([chunk async for chunk in response.streaming_content]) == data


def test_it_refuses_other_purposes_in_openais_words(key):
    response = upload(key, jsonl(request_line("a")), purpose="fine-tune")

    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "'fine-tune' is not one of ['batch'] - 'purpose'",
        "type": "invalid_request_error",
        "param": "purpose",
        "code": None,
    }
    assert not File.objects.exists()


@pytest.mark.parametrize(
    ("lines", "number", "code", "words"),
    [
        ([request_line("a"), request_line("b"), "{not json"], 3, "invalid_json_line", "not valid"),
        ([request_line("a"), "", "[1, 2]"], 3, "invalid_json_line", "JSON object"),
        ([request_line("a"), request_line("a")], 2, "duplicate_custom_id", "used on line 1"),
        ([{**request_line("a"), "custom_id": 7}], 1, "invalid_custom_id", "custom_id"),
        ([request_line("a", method="GET")], 1, "invalid_method", "POST"),
        ([request_line("a"), request_line("b", url="/v1/images")], 2, "invalid_url", "/v1/images"),
        ([request_line("a", body=["x"])], 1, "invalid_body", "'body'"),
        ([request_line("a", extra=1)], 1, "invalid_request_line", "'extra'"),
    ],
)
def test_a_bad_file_is_refused_naming_its_first_bad_line(key, lines, number, code, words):
    response = upload(key, jsonl(*lines))

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith(f"Line {number} of the file: ")
    assert words in error["message"]
    assert (error["code"], error["param"], error["type"]) == (
        code,
        "file",
        "invalid_request_error",
    )
    assert not File.objects.exists()


def test_it_refuses_an_empty_file_a_large_one_and_too_many_lines(key, settings):
    assert upload(key, b"\n\n").json()["error"]["code"] == "empty_file"

    settings.GATEWAY_FILE_MAX_BYTES = 100
    too_big = upload(key, jsonl(request_line("a", "x" * 200)))
    assert too_big.status_code == 400
    assert too_big.json()["error"]["code"] == "file_too_large"

    settings.GATEWAY_FILE_MAX_BYTES = 10_000
    settings.GATEWAY_BATCH_MAX_LINES = 2
    too_long = upload(key, jsonl(request_line("a"), request_line("b"), request_line("c")))
    assert too_long.status_code == 400
    assert too_long.json()["error"]["message"].startswith("Line 3 of the file: ")
    assert upload(key, jsonl(request_line("a"), request_line("b"))).status_code == 200
    assert File.objects.count() == 1


def test_it_lists_newest_first_by_purpose_with_a_cursor(key, project_a):
    made = [stored_file(project_a, jsonl(request_line(str(n)))) for n in range(3)]
    newest_first = [f.id for f in sorted(made, key=lambda f: (f.created_at, f.id), reverse=True)]

    everything = get(key, URL).json()
    assert [f["id"] for f in everything["data"]] == newest_first
    assert (everything["object"], everything["has_more"]) == ("list", False)
    assert (everything["first_id"], everything["last_id"]) == (newest_first[0], newest_first[-1])

    first = get(key, URL, limit=2).json()
    assert [f["id"] for f in first["data"]] == newest_first[:2]
    assert first["has_more"] is True
    rest = get(key, URL, limit=2, after=first["last_id"]).json()
    assert [f["id"] for f in rest["data"]] == newest_first[2:]
    assert rest["has_more"] is False

    oldest_first = get(key, URL, order="asc").json()
    assert [f["id"] for f in oldest_first["data"]] == newest_first[::-1]
    assert get(key, URL, purpose="batch_output").json()["data"] == []
    assert get(key, URL, limit=0).json()["error"]["param"] == "limit"
    assert get(key, URL, order="sideways").json()["error"]["param"] == "order"


def test_it_deletes_a_file_and_its_bytes(key, project_a, media, django_capture_on_commit_callbacks):
    stored = stored_file(project_a, jsonl(request_line("a")))
    path = media / stored.file.name
    assert path.exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = delete(key, f"{URL}/{stored.id}")

    assert response.status_code == 200
    assert response.json() == {"id": stored.id, "object": "file", "deleted": True}
    assert not File.objects.exists()
    assert not path.exists()
    assert delete(key, f"{URL}/{stored.id}").status_code == 404


def test_a_running_batchs_input_cannot_be_deleted(key, project_a, fake_upstream):
    serve(project_a, fake_upstream)
    api_key = ApiKey.objects.get(project=project_a)
    stored = stored_file(project_a, jsonl(request_line("a")), key=api_key)
    body = {"input_file_id": stored.id, "endpoint": "/v1/chat/completions"}
    batch = batches.batch_create(
        key=api_key, body=json.dumps({**body, "completion_window": "24h"}).encode()
    )

    response = delete(key, f"{URL}/{stored.id}")

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "file_in_use"
    assert batch.id in error["message"]
    assert File.objects.filter(pk=stored.id).exists()
    assert Batch.objects.get().status == Batch.Status.VALIDATING


def test_an_ended_batchs_input_may_be_deleted_and_the_batch_keeps_its_id(
    key, project_a, fake_upstream, fake_price, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    serve(project_a, fake_upstream)
    api_key = ApiKey.objects.select_related("project").get(project=project_a)
    stored = stored_file(project_a, jsonl(request_line("a")), key=api_key)
    body = {"input_file_id": stored.id, "endpoint": "/v1/chat/completions"}
    batch = batches.batch_create(
        key=api_key, body=json.dumps({**body, "completion_window": "24h"}).encode()
    )
    batches.batch_run(batch_id=batch.id)

    response = delete(key, f"{URL}/{stored.id}")

    assert response.status_code == 200
    assert not File.objects.filter(pk=stored.id).exists()
    ended = get(key, f"/v1/batches/{batch.id}").json()
    assert (ended["status"], ended["input_file_id"]) == ("completed", stored.id)
    # Its results are still there to download.
    assert get(key, f"{URL}/{ended['output_file_id']}/content").status_code == 200


def test_a_key_without_the_chat_scope_reads_but_cannot_upload(alice, org_a, project_a):
    reader = make_key(alice, org_a, project_a, ["read"])
    stored = stored_file(project_a, jsonl(request_line("a")))

    assert get(reader, f"{URL}/{stored.id}").status_code == 200
    refused = upload(reader, jsonl(request_line("b")))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    assert delete(reader, f"{URL}/{stored.id}").status_code == 403


def test_another_projects_key_gets_404_on_every_file_route(project_a, charlie, org_b, project_b):
    stored = stored_file(project_a, jsonl(request_line("a")))
    outsider = make_key(charlie, org_b, project_b, ["chat", "read"])

    answers = [
        get(outsider, f"{URL}/{stored.id}"),
        get(outsider, f"{URL}/{stored.id}/content"),
        delete(outsider, f"{URL}/{stored.id}"),
    ]

    assert [a.status_code for a in answers] == [404, 404, 404]
    assert answers[0].json()["error"] == {
        "message": f"No such File object: {stored.id}",
        "type": "invalid_request_error",
        "param": "id",
        "code": None,
    }
    assert get(outsider, URL).json()["data"] == []
    assert get(outsider, URL, after=stored.id).status_code == 404
    assert File.objects.filter(pk=stored.id).exists()


def test_no_key_gets_the_401(project_a):
    stored = stored_file(project_a, jsonl(request_line("a")))

    answers = [
        Client().get(URL),
        Client().post(URL, {"purpose": "batch"}),
        Client().get(f"{URL}/{stored.id}"),
        Client().get(f"{URL}/{stored.id}/content"),
        Client().delete(f"{URL}/{stored.id}"),
    ]

    assert {a.status_code for a in answers} == {401}
    assert {a.json()["error"]["code"] for a in answers} == {"invalid_api_key"}
