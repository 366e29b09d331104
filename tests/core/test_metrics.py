"""/metrics (core.metrics, billing.metrics): who may scrape, and what a scrape says after calls
through the fake upstream."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async
from django.test import Client
from django.utils import timezone
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from billing.models import Budget, BudgetPeriod, Hold, RateLimit, UsageRecord
from config.asgi import application
from core.metrics import MeteredLocMemCache, scrape_registry
from tests.chat.conftest import make_key, serve
from tests.conftest import session_cookie
from tests.factories import UserFactory

TOKEN = "scrape-" + "k" * 40
HELLO = [{"role": "user", "content": "hello there gateway"}]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(**headers: str):
    return Client().get("/metrics", **headers)


# --- who may scrape (the real ASGI application: /metrics has a handler of its own) -------------


async def asgi_get(path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    scope = {
        "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver"), *headers], "client": ("10.0.0.9", 1234),
        "server": ("10.0.0.7", 8000),
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
    return start["status"], body


def as_user(user) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", session_cookie(user).encode())]


def bearer(token: str, scheme: str = "Bearer") -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"{scheme} {token}".encode())]


@pytest.mark.django_db(transaction=True)
async def test_strangers_get_the_404_of_a_path_that_is_not_there(settings, alice):
    settings.METRICS_TOKEN = TOKEN

    def people() -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
        unverified = UserFactory(is_staff=True)
        TOTPDevice.objects.create(user=unverified, name="app", confirmed=True)
        return as_user(alice), as_user(unverified)

    owner, staff_owing_a_code = await database_sync_to_async(people)()

    answers = [
        await asgi_get("/metrics", []),
        await asgi_get("/metrics", bearer(TOKEN + "x")),
        await asgi_get("/metrics", bearer(TOKEN, "Basic")),
        await asgi_get("/metrics", owner),  # an owner, not staff
        await asgi_get("/metrics", staff_owing_a_code),  # its second factor not given
    ]
    nowhere = await asgi_get("/metrics-nowhere", [])

    assert [status for status, _ in answers] == [404] * 5
    assert {body for _, body in answers} == {nowhere[1]}


@pytest.mark.django_db(transaction=True)
async def test_without_a_token_set_no_bearer_scrapes(settings):
    settings.METRICS_TOKEN = ""

    assert (await asgi_get("/metrics", bearer("")))[0] == 404


@pytest.mark.django_db(transaction=True)
async def test_the_token_and_a_staff_session_scrape(settings):
    settings.METRICS_TOKEN = TOKEN

    def staff_members() -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
        verified = UserFactory(is_staff=True)
        device = TOTPDevice.objects.create(user=verified, name="app", confirmed=True)
        client = Client()
        client.force_login(verified)
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = device.persistent_id
        session.save()
        cookie = f"{settings.SESSION_COOKIE_NAME}={session.session_key}"
        return as_user(UserFactory(is_staff=True)), [(b"cookie", cookie.encode())]

    staff, staff_verified = await database_sync_to_async(staff_members)()

    by_token = await asgi_get("/metrics", bearer(TOKEN))
    by_staff = await asgi_get("/metrics", staff)
    by_verified_staff = await asgi_get("/metrics", staff_verified)

    assert [a[0] for a in (by_token, by_staff, by_verified_staff)] == [200, 200, 200]
    text = by_token[1].decode()
    assert value(parse(text), "process_cpu_seconds_total") > 0  # the process collector
    assert "# HELP gateway_upstream_calls_total" in text


def test_the_answer_is_prometheus_text_never_cached(settings, db):
    settings.METRICS_TOKEN = TOKEN

    answer = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert answer.status_code == 200
    assert answer["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "no-cache" in answer["Cache-Control"]


# --- what a scrape says ------------------------------------------------------------------------


@pytest.fixture
def daphne_with_a_token(monkeypatch, request) -> str:
    """A live Daphne (tests.conftest) whose METRICS_TOKEN is ours: the environment is set
    before the server starts."""
    monkeypatch.setenv("METRICS_TOKEN", TOKEN)
    return request.getfixturevalue("live_daphne")


def ask(base_url: str, method: str, path: str, body: object = None, **headers: str):
    address = urlsplit(base_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_scrape_after_calls_through_the_fake_upstream(
    daphne_with_a_token, fake_upstream, fake_price, alice, org_a, project_a
):
    serve(project_a, fake_upstream, "fake-gpt", "fake-gpt@500")
    key = make_key(alice, org_a, project_a)
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(model: str, **extra: object) -> int:
        body = {"model": model, "messages": HELLO, **extra}
        status, _ = ask(daphne_with_a_token, "POST", "/v1/chat/completions", body, **auth)
        return status

    assert call("fake-gpt") == 200
    assert call("fake-gpt") == 200
    assert call("fake-gpt", stream=True) == 200
    assert call("fake-gpt@500") == 502
    budget = Budget.objects.create(
        organization=org_a, project=project_a, scope="project", limit_usd=Decimal("0.000001")
    )
    assert call("fake-gpt") == 429  # the budget
    budget.delete()
    RateLimit.objects.create(project=project_a, requests_per_minute=1)
    assert call("fake-gpt") == 200  # the minute's one
    assert call("fake-gpt") == 429  # the rate limit

    stranger, _ = ask(daphne_with_a_token, "GET", "/metrics")
    status, text = ask(
        daphne_with_a_token, "GET", "/metrics", Authorization=f"Bearer {TOKEN}", Host="10.1.2.3"
    )

    assert (stranger, status) == (404, 200)
    samples = parse(text.decode())
    calls = "gateway_upstream_calls_total"
    assert value(samples, calls, model="fake-gpt", source="api", outcome="ok") == 4
    assert (
        value(samples, calls, model="fake-gpt@500", source="api", outcome="upstream_unavailable")
        == 1
    )
    rows = UsageRecord.objects.filter(model="fake-gpt")
    for kind, field in (("prompt", "prompt_tokens"), ("completion", "completion_tokens")):
        expected = sum(getattr(row, field) for row in rows)
        assert value(samples, "gateway_tokens_total", model="fake-gpt", kind=kind) == expected
    assert value(samples, "gateway_cost_usd_total", model="fake-gpt") == pytest.approx(
        float(sum(row.cost for row in rows))
    )
    assert value(samples, "gateway_upstream_latency_seconds_count", model="fake-gpt") == 4
    assert value(samples, "gateway_time_to_first_token_seconds_count", model="fake-gpt") == 1
    assert value(samples, "gateway_active_streams", source="api") == 0  # the stream ended
    assert (
        sum(v for (name, _), v in samples.items() if name == "gateway_budget_refusals_total") == 1
    )
    assert value(samples, "gateway_rate_limit_refusals_total", source="api") == 1
    assert value(samples, "gateway_outstanding_holds") == 0  # every call settled
    # Every request, by surface, method and status (the stranger's scrape included).
    requests = "gateway_http_requests_total"
    for status, count in (("200", 4), ("502", 1), ("429", 2)):
        assert value(samples, requests, surface="v1", method="POST", status=status) == count
    assert value(samples, requests, surface="ops", method="GET", status="404") == 1
    assert value(samples, "gateway_http_request_duration_seconds_count", surface="v1") == 7


@pytest.mark.django_db
def test_a_budget_refusal_is_counted_by_the_scope_that_refused(
    fake_upstream, fake_price, alice, org_a, project_a
):
    serve(project_a, fake_upstream)
    key = make_key(alice, org_a, project_a)
    Budget.objects.create(
        organization=org_a, project=project_a, scope="project", limit_usd=Decimal("0.000001")
    )
    # The refusal names the scope of the budget that refused (QuotaExceeded.scope).
    name, labels = "gateway_budget_refusals_total", {"scope": "project"}
    before = REGISTRY.get_sample_value(name, labels) or 0

    answer = Client().post(
        "/v1/chat/completions",
        data=json.dumps({"model": "fake-gpt", "messages": HELLO}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )

    assert answer.status_code == 429
    assert REGISTRY.get_sample_value(name, labels) == before + 1


@pytest.mark.django_db
def test_outstanding_holds_are_read_from_the_database(settings, org_a, project_a):
    settings.METRICS_TOKEN = TOKEN
    now = timezone.now()
    periods = [
        BudgetPeriod.objects.create(
            budget=Budget.objects.create(
                organization=org_a, scope=scope, project=project, limit_usd=Decimal(10)
            ),
            start=now.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
        )
        for scope, project in (("organization", None), ("project", project_a))
    ]  # fmt: skip
    live, dead = uuid.uuid4(), uuid.uuid4()
    for period in periods:  # a call holds the same amount on each budget that applies
        Hold.objects.create(
            period=period, request_id=live, amount=Decimal("0.25"),
            expires_at=now + timedelta(minutes=5),
        )  # fmt: skip
    Hold.objects.create(
        period=periods[0], request_id=dead, amount=Decimal("0.5"),
        expires_at=now - timedelta(minutes=5),
    )  # fmt: skip

    samples = parse(scrape(HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode())

    assert value(samples, "gateway_outstanding_holds") == 2
    assert value(samples, "gateway_outstanding_holds_usd") == 0.75
    assert value(samples, "gateway_outstanding_holds_expired") == 1


# --- several processes -------------------------------------------------------------------------

COUNT_ONE_CALL = """
import django
django.setup()
import core.metrics  # noqa: F401 - what a web process has: a live gauge ends with the process
from billing import metrics
metrics.UPSTREAM_CALLS.labels("fake-gpt", "api", "ok").inc()
metrics.ACTIVE_STREAMS.labels("api").inc()
"""


def test_processes_sharing_a_multiprocess_directory_are_scraped_together(
    settings, tmp_path, monkeypatch
):
    settings.METRICS_COLLECTORS = []
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    for _ in range(2):  # two processes, one after the other (each exits when done)
        subprocess.run(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", COUNT_ONE_CALL],
            env=env,
            cwd=settings.BASE_DIR,
            check=True,
            timeout=120,
        )
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    samples = parse(generate_latest(scrape_registry()).decode())

    calls = "gateway_upstream_calls_total"
    assert value(samples, calls, model="fake-gpt", source="api", outcome="ok") == 2
    # The streams each process counted ended with it.
    assert value(samples, "gateway_active_streams", source="api") == 0


# --- the cache's reads -------------------------------------------------------------------------


def test_cache_reads_are_counted_and_falsy_values_kept():
    names = [
        "django_cache_get_total",
        "django_cache_get_hits_total",
        "django_cache_get_misses_total",
    ]

    def counts() -> list[float]:
        return [REGISTRY.get_sample_value(n, {"backend": "locmem"}) or 0 for n in names]

    cache = MeteredLocMemCache("metrics-test", {})
    before = counts()
    cache.set("zero", 0)

    assert cache.get("zero", 7) == 0  # a cached 0 is a hit, not the default
    assert cache.get("nothing", 7) == 7
    assert [after - b for after, b in zip(counts(), before, strict=True)] == [2, 1, 1]
