"""/healthz and /readyz (core.health), through the real ASGI application: served outside the
page machinery, so that a load balancer reaching a process by its address gets an answer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator

from config.asgi import application
from config.settings.base import REDIS_CHANNEL_LAYER


async def ask(
    path: str, *, host: str = "testserver", headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET to the ASGI application: its status, headers and whole body."""
    scope = {
        "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", host.encode()), *(headers or [])],
        "client": ("10.0.0.9", 1234), "server": ("10.0.0.7", 8000),
    }  # fmt: skip
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=20)
    body, more = b"", True
    while more:
        message = await communicator.receive_output(timeout=20)
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await communicator.wait(timeout=20)
    names = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return start["status"], names, body


def redis_down(settings: Any, port: int) -> None:
    """The cache, the channel layer and the broker on a Redis that refuses connections."""
    url = f"redis://127.0.0.1:{port}/0"
    settings.CACHES = {"default": {"BACKEND": "core.cache.SharedRedisCache", "LOCATION": url}}
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": REDIS_CHANNEL_LAYER, "CONFIG": {"hosts": [url]}}
    }
    settings.CELERY_BROKER_URL = url
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}


# No database marker: the database is out of reach, as is everything else.
async def test_it_says_alive_touching_nothing(settings, closed_port):
    redis_down(settings, closed_port)

    status, headers, body = await ask("/healthz")

    assert status == 200
    assert json.loads(body) == {"status": "ok"}
    assert headers["content-type"] == "application/json"
    assert "no-cache" in headers["cache-control"]


async def test_it_answers_a_load_balancer_that_knows_only_the_address():
    # A Host that ALLOWED_HOSTS does not list: the pages' chain refuses it (400).
    status, headers, _ = await ask("/healthz", host="10.0.0.7:8000")
    page_status, _, _ = await ask("/login/", host="10.0.0.7:8000")

    assert (status, page_status) == (200, 400)
    # None of the page machinery ran: no session, language, CSP; the request's id came back.
    assert "set-cookie" not in headers
    assert "content-language" not in headers
    assert "content-security-policy" not in headers
    assert len(headers["x-request-id"]) == 32


@pytest.mark.django_db(transaction=True)
async def test_it_is_ready_on_the_test_profile():
    status, headers, body = await ask("/readyz", headers=[(b"accept", b"text/html")])

    answer = json.loads(body)
    assert status == 200
    assert headers["content-type"] == "application/json"  # JSON whatever the client accepts
    assert answer["status"] == "ok"
    assert {name: check["status"] for name, check in answer["checks"].items()} == {
        "database": "ok",
        "cache": "ok",
        "channel_layer": "ok",
        "broker": "ok",
    }


@pytest.mark.django_db(transaction=True)
async def test_it_names_what_failed_when_redis_is_down(settings, closed_port):
    redis_down(settings, closed_port)

    status, _, body = await ask("/readyz", host="10.0.0.7:8000")

    answer = json.loads(body)
    assert status == 503
    assert answer["status"] == "unavailable"
    checks = answer["checks"]
    assert {name: check["status"] for name, check in checks.items()} == {
        "database": "ok",
        "cache": "fail",
        "channel_layer": "fail",
        "broker": "fail",
    }
    assert checks["channel_layer"]["error"] == (
        "Unavailable: The channel layer did not answer (ConnectionError)."
    )
    assert checks["broker"]["error"].startswith("Unavailable: The broker did not answer")
    assert "Connection Error" in checks["cache"]["error"]
    # Why, without where: no address is told to whoever asks.
    assert str(closed_port) not in body.decode()


@pytest.mark.django_db(transaction=True)
async def test_a_broker_on_missing_folders_is_not_ready(settings, tmp_path):
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(tmp_path / "out"),
        "data_folder_out": str(tmp_path / "out"),
    }
    missing_status, _, missing = await ask("/readyz")
    (tmp_path / "out").mkdir()
    present_status, _, _ = await ask("/readyz")

    assert missing_status == 503
    assert json.loads(missing)["checks"]["broker"]["error"] == (
        "Unavailable: The broker's data_folder_in is missing or not writable."
    )
    assert present_status == 200
