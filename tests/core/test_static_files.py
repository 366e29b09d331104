"""Static files, served by a Django handler of their own: ServeStatic behind the security
middleware only (config.handlers).

Through Daphne first (the server users run), then the ASGI application driven directly, which
shows what skips the page middleware and what falls through to Django's 404.
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.core.signals import request_started

from config.asgi import application

CHAT_JS = settings.BASE_DIR / "static" / "js" / "chat.js"


def get(base_url: str, path: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    address = urlsplit(base_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=20)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_daphne_serves_static_files_and_django_the_rest(live_daphne):
    status, headers, body = get(live_daphne, "/static/js/chat.js")
    missing_status, missing_headers, _ = get(live_daphne, "/static/nope.js")
    page_status, _, page = get(live_daphne, "/login/")

    assert status == 200
    assert "javascript" in headers["Content-Type"]
    assert body == CHAT_JS.read_bytes()
    assert missing_status == 404  # Django's answer: the file is not there
    assert missing_headers["Content-Type"].startswith("text/html")
    assert page_status == 200
    # The page's own stylesheets are served too.
    stylesheets = re.findall(rb'href="(/static/[^"]+\.css)"', page)
    assert stylesheets
    assert {get(live_daphne, href.decode())[0] for href in stylesheets} == {200}


# --- the ASGI application, driven directly ---------------------------------------------------


async def ask(path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request to the ASGI application; its status, headers and whole body. (Not channels'
    HttpCommunicator: it wants a ``body`` in every body message, which ASGI makes optional and
    Django's streamed responses leave out of the last one.)"""
    scope = {
        "type": "http", "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
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
    headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return start["status"], headers, body


@pytest.fixture
def django_requests() -> Iterator[list[str]]:
    """The paths of the requests that reached Django."""
    seen: list[str] = []

    def started(sender, scope=None, **kwargs) -> None:
        seen.append(scope["path"] if scope else "?")

    request_started.connect(started)
    yield seen
    request_started.disconnect(started)


async def test_a_static_file_skips_the_page_middleware():
    status, headers, body = await ask("/static/js/chat.js")
    _, page_headers, _ = await ask("/login/")

    assert status == 200
    assert body == CHAT_JS.read_bytes()
    # The page middleware (here: the CSP one) ran for the page, not for the file.
    assert "content-security-policy" in page_headers
    assert "content-security-policy" not in headers


async def test_a_missing_static_file_falls_through_to_django(django_requests):
    status, headers, _ = await ask("/static/nope.js")

    assert status == 404
    assert headers["content-type"].startswith("text/html")
    assert django_requests == ["/static/nope.js"]


async def test_an_apps_static_file_is_found():
    status, headers, _ = await ask("/static/admin/css/base.css")

    assert status == 200
    assert headers["content-type"].startswith("text/css")


async def test_head_answers_the_headers_only():
    status, headers, body = await ask("/static/js/chat.js", method="HEAD")

    assert status == 200
    assert int(headers["content-length"]) == CHAT_JS.stat().st_size
    assert body == b""


@pytest.mark.parametrize(
    "path",
    [
        "/static/../config/settings/test.py",
        "/static/../../../../etc/passwd",
        "/static/js/",
        "/static/js/chat.js/more",
    ],
)
async def test_nothing_outside_the_static_files_is_served(path):
    status, _, body = await ask(path)

    assert status == 404
    assert b"SECRET_KEY" not in body
    assert b"root:" not in body


async def test_a_static_file_is_sent_with_nosniff_like_every_other_response():
    """Static files go out through SecurityMiddleware, as every other response does: they
    say ``nosniff`` (a script or stylesheet is never to be read as another type)."""
    _, page_headers, _ = await ask("/static/nope.js")  # any answer of Django's
    _, headers, _ = await ask("/static/js/chat.js")

    assert page_headers["x-content-type-options"] == "nosniff"
    assert headers.get("x-content-type-options") == "nosniff"
