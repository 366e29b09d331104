"""Structured logs (core.logging): one request followed by its id from its HTTP line (or socket
frame) through its upstream call's line to its ledger row; refusals as one line each."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import logging.config
from collections.abc import Callable, Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from celery.signals import before_task_publish
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client
from django.urls import path, reverse
from django_structlog.celery.receivers import CeleryReceiver
from django_structlog.celery.steps import DjangoStructLogInitStep

from accounts.models import Project, User
from billing.models import Budget, UsageRecord
from chat import services
from chat.actors import Actor
from chat.models import Conversation
from config.celery import app as celery_app
from core.logging import bound_request_id, current_request_id, logging_config
from providers.llm.fake_upstream import FakeUpstream
from tests.chat.conftest import FAKE_KEY, make_key, serve
from tests.conftest import wait_for_background

HELLO = [{"role": "user", "content": "hello there gateway"}]
Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def json_log() -> Iterator[Lines]:
    """The production profile's logging (JSON lines, its filters), written to a buffer: the
    lines logged so far, parsed. The test profile's silence comes back after."""
    stream = io.StringIO()
    logging.config.dictConfig(logging_config(json_lines=True, stream=stream))

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    lines.raw = stream.getvalue  # type: ignore[attr-defined]
    yield lines
    logging.config.dictConfig(django_settings.LOGGING)


def of(lines: list[dict[str, Any]], request_id: str, event: str | None = None) -> list[dict]:
    return [
        line
        for line in lines
        if line.get("request_id") == request_id and (event is None or line["event"] == event)
    ]


def v1_post(key: str, body: dict[str, Any], **headers: str):
    return Client().post(
        "/v1/chat/completions",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        **headers,
    )


def conversation_of(user: User, project: Project, upstream: FakeUpstream) -> Conversation:
    serve(project, upstream)
    return services.conversation_create(actor=Actor(user=user), project=project, model="fake-gpt")


def assert_followed(lines: list[dict[str, Any]], request_id: str, *, source: str) -> UsageRecord:
    """The upstream call's line names the request and the ledger row, which says the same."""
    [call] = [line for line in of(lines, request_id, "upstream_call") if line["source"] == source]
    row = UsageRecord.objects.get(request_id=call["ledger_request_id"])
    assert (call["model"], call["outcome"]) == (row.model, row.status)
    assert Decimal(call["cost_usd"]) == row.cost
    assert (call["prompt_tokens"], call["completion_tokens"]) == (
        row.prompt_tokens,
        row.completion_tokens,
    )
    assert call["latency_ms"] == row.latency_ms
    assert call["level"] == "info"
    return row


# --- one request, followed ---------------------------------------------------------------------


@pytest.mark.django_db
def test_a_v1_call_is_followed_from_its_http_line_to_its_ledger_row(
    json_log, fake_upstream, fake_price, alice, org_a, project_a
):
    serve(project_a, fake_upstream)
    key = make_key(alice, org_a, project_a)

    answer = v1_post(key, {"model": "fake-gpt", "messages": HELLO})

    assert answer.status_code == 200
    request_id = answer["X-Request-ID"]
    lines = json_log()
    [http_line] = of(lines, request_id, "request")
    assert {k: http_line[k] for k in ("method", "path", "status", "level", "logger")} == {
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "level": "info",
        "logger": "core.requests",
    }
    row = assert_followed(lines, request_id, source="api")
    assert answer.json()["id"] == f"chatcmpl-{row.request_id.hex}"  # the client has it too
    # Nothing secret, nothing a person wrote.
    everything = json_log.raw()  # type: ignore[attr-defined]
    for secret in (key, FAKE_KEY, "hello there gateway", "Echo:"):
        assert secret not in everything


@pytest.mark.django_db(transaction=True)
async def test_a_streamed_v1_call_settles_in_a_task_of_its_own_with_the_same_id(
    json_log, fake_upstream, alice, org_a, project_a
):
    def served_key() -> str:
        serve(project_a, fake_upstream)
        return make_key(alice, org_a, project_a)

    key = await database_sync_to_async(served_key)()
    answer = await AsyncClient().post(
        "/v1/chat/completions",
        data=json.dumps({"model": "fake-gpt", "messages": HELLO, "stream": True}),
        content_type="application/json",
        # A load balancer's id is kept.
        headers={"Authorization": f"Bearer {key}", "X-Request-ID": "lb-7f3a9c01"},
    )
    assert answer.status_code == 200, answer.content
    body = b"".join([chunk async for chunk in answer.streaming_content])
    await wait_for_background()

    assert body.endswith(b"data: [DONE]\n\n")
    assert answer["X-Request-ID"] == "lb-7f3a9c01"
    lines = json_log()
    [http_line] = of(lines, "lb-7f3a9c01", "request")
    assert http_line["streaming"] is True
    await database_sync_to_async(assert_followed)(lines, "lb-7f3a9c01", source="api")


@pytest.mark.django_db(transaction=True)
def test_a_rest_call_is_followed_from_its_http_line_to_its_ledger_row(
    json_log, fake_upstream, alice, org_a, project_a
):
    serve(project_a, fake_upstream)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {make_key(alice, org_a, project_a, ['chat'])}")
    conversations = reverse("api-conversations", kwargs={"project_id": project_a.pk})
    conversation = client.post(
        conversations, data={"model": "fake-gpt"}, content_type="application/json"
    ).json()
    messages = reverse(
        "api-messages", kwargs={"project_id": project_a.pk, "conversation_id": conversation["id"]}
    )

    answer = client.post(messages, data={"content": "hi there"}, content_type="application/json")

    assert answer.status_code == 201
    request_id = answer["X-Request-ID"]
    lines = json_log()
    [http_line] = of(lines, request_id, "request")
    assert (http_line["method"], http_line["path"], http_line["status"]) == ("POST", messages, 201)
    row = assert_followed(lines, request_id, source="api")
    assert row.message_id == answer.json()["id"]


@pytest.mark.django_db(transaction=True)
async def test_a_socket_frame_is_followed_to_its_ledger_row(
    json_log, open_socket, fake_upstream, alice, project_a
):
    conversation = await database_sync_to_async(conversation_of)(alice, project_a, fake_upstream)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="hello there")
    await socket.until("done")
    await socket.send(type="nonsense")
    await socket.until("error")
    await wait_for_background()

    frames = [line for line in json_log() if line["event"] == "socket_frame"]
    assert [(f["type"], f["level"], f.get("code")) for f in frames] == [
        ("message", "info", None),
        ("invalid", "warning", "bad_frame"),  # a refusal: one line, with its code
    ]
    assert frames[0]["conversation_id"] == conversation.pk
    assert frames[0]["request_id"] != frames[1]["request_id"]  # each frame its own
    await database_sync_to_async(assert_followed)(
        json_log(), frames[0]["request_id"], source="chat"
    )


# --- refusals and failures ---------------------------------------------------------------------


@pytest.mark.django_db
def test_a_404_is_one_line_without_a_traceback(
    json_log, fake_upstream, client_for, alice, charlie, project_a
):
    conversation = conversation_of(alice, project_a, fake_upstream)
    url = reverse(
        "conversation_detail", args=[project_a.organization.slug, project_a.slug, conversation.pk]
    )

    # Another tenant's conversation: the view raises Http404, as for one that does not exist.
    answer = client_for(charlie).get(url)

    assert answer.status_code == 404
    lines = json_log()
    [line] = of(lines, answer["X-Request-ID"])
    assert {k: v for k, v in line.items() if k not in ("duration_ms", "timestamp")} == {
        "event": "request",
        "method": "GET",
        "path": url,
        "status": 404,
        "request_id": answer["X-Request-ID"],
        "level": "warning",
        "logger": "core.requests",
    }
    assert not [line for line in lines if "exception" in line]
    assert not [line for line in lines if line["logger"] == "django.request"]


@pytest.mark.django_db
def test_a_429_is_one_line_with_its_code(
    json_log, fake_upstream, fake_price, alice, org_a, project_a
):
    serve(project_a, fake_upstream)
    key = make_key(alice, org_a, project_a)
    Budget.objects.create(
        organization=org_a, project=project_a, scope="project", limit_usd=Decimal("0.000001")
    )

    answer = v1_post(key, {"model": "fake-gpt", "messages": HELLO})

    assert answer.status_code == 429
    lines = json_log()
    [line] = of(lines, answer["X-Request-ID"])
    assert (line["status"], line["code"], line["level"]) == (429, "budget_exceeded", "warning")
    assert not [line for line in lines if "exception" in line]


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom: a bug of ours")


urlpatterns = [path("boom", boom)]


@pytest.mark.django_db
def test_a_real_500_keeps_its_traceback(json_log, settings):
    settings.ROOT_URLCONF = __name__

    answer = Client(raise_request_exception=False).get("/boom")

    assert answer.status_code == 500
    lines = of(json_log(), answer["X-Request-ID"])
    [failure] = [line for line in lines if line["logger"] == "django.request"]
    assert failure["level"] == "error"
    assert "Traceback" in failure["exception"]
    assert "RuntimeError: boom: a bug of ours" in failure["exception"]
    [request_line] = [line for line in lines if line["event"] == "request"]
    assert (request_line["status"], request_line["level"]) == (500, "error")


@pytest.mark.django_db
def test_a_designed_5xx_is_one_line_too(json_log, settings, closed_port):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{closed_port}/0"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}

    answer = Client().get("/readyz")

    assert answer.status_code == 503
    lines = of(json_log(), answer["X-Request-ID"])
    # Why it is not ready, and the request; not Django's "Service Unavailable" besides.
    assert [(line["event"], line["level"]) for line in lines] == [
        ("not_ready", "warning"),
        ("request", "error"),
    ]
    assert list(lines[0]["failed"]) == ["broker"]


@pytest.mark.django_db
def test_the_token_of_an_emailed_link_is_never_logged(json_log):
    token = "inv-5f0c1a9e2b7d4c3e9a1f0d2e3c4b5a69"

    answer = Client().get(reverse("invitation_accept", args=[token]))

    [line] = of(json_log(), answer["X-Request-ID"])
    assert line["path"] == "/invitations/<str:token>/"
    assert token not in json_log.raw()  # type: ignore[attr-defined]


# --- the request id ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("5f0c1a9e-2b7d-4c3e-9a1f-0d2e3c4b5a69", True),
        ("Root=1-67891233-abcdef012345678912345678", True),
        ("has a space", False),
        ('quote"d', False),
        ("x" * 129, False),
    ],
)
def test_an_incoming_request_id_is_kept_only_when_it_is_harmless(incoming, kept):
    answer = Client().get("/healthz", HTTP_X_REQUEST_ID=incoming)

    assert (answer["X-Request-ID"] == incoming) is kept
    if not kept:
        assert len(answer["X-Request-ID"]) == 32


def test_the_id_is_bound_only_for_its_request():
    Client().get("/healthz")

    assert current_request_id() is None


def test_a_task_carries_the_id_of_whoever_enqueued_it():
    published: dict[str, Any] = {}

    def keep(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
        published.update((headers or {}).get("__django_structlog__", {}))

    before_task_publish.connect(keep, weak=False)
    eager, celery_app.conf.task_always_eager = celery_app.conf.task_always_eager, False
    try:
        with bound_request_id("req-from-the-page"):
            celery_app.send_task("core.tasks.purge_idempotency_records")  # to the memory broker
    finally:
        celery_app.conf.task_always_eager = eager
        before_task_publish.disconnect(keep)

    assert published["request_id"] == "req-from-the-page"
    # The worker binds it while the task runs (django-structlog's boot step).
    assert DjangoStructLogInitStep in celery_app.steps["worker"]
    task = SimpleNamespace(name="t", request=SimpleNamespace(__django_structlog__=published))

    def run_in_worker() -> str | None:
        CeleryReceiver().receiver_task_prerun("task-1", task)
        return current_request_id()

    assert contextvars.copy_context().run(run_in_worker) == "req-from-the-page"


def test_the_console_lines_of_the_embedded_profile_are_for_people():
    stream = io.StringIO()
    logging.config.dictConfig(logging_config(json_lines=False, stream=stream))
    try:
        with bound_request_id("abc123"):
            logging.getLogger("probe").warning("hello %s", "there")
    finally:
        logging.config.dictConfig(django_settings.LOGGING)

    line = stream.getvalue()
    assert "hello there" in line
    assert "request_id=abc123" in line
    assert not line.startswith("{")
