"""The address policy: what the server fetches for a tenant goes to public addresses only.

Production's policy (no allowed networks) is set by each test that needs it: the test profile
allows loopback, where the fake upstream and the small servers here listen. Requests are real
HTTP through the real SDK; DNS is staged by replacing our own resolver
(``providers.addresses.resolve_host``), never the SDK.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest
from django.urls import reverse

from billing.models import Budget, BudgetPeriod, Hold, ModelPrice, UsageRecord
from chat.models import Message
from providers import addresses
from providers.addresses import (
    LOOPBACK_NETWORKS,
    AddressPolicy,
    AddressRefused,
    PinnedTransport,
)
from providers.admin import ProviderConnectionForm
from providers.apps import _check_allowed_networks
from providers.llm.base import ChatRequest, ErrorCode, ProviderError
from providers.llm.openai_provider import OpenAIProvider
from providers.models import ProviderConnection
from providers.services import connection_create
from tests.chat.conftest import make_key, serve
from tests.conftest import membership
from tests.providers.test_connection_pages import form_data, url

PRODUCTION = AddressPolicy()
LOOPBACK = AddressPolicy.allowing(LOOPBACK_NETWORKS)
HELLO = [{"role": "user", "content": "hello"}]


# --- small real servers that record what reaches them ---------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Answers /v1/models (GET) and chat completions (POST) like OpenAI, or with a redirect
    when the server has ``redirect_to``; records each request's path, Host header and SNI."""

    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("Host")))
        if self.server.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps(
            {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "x"}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, redirect_to: str | None) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.redirect_to = redirect_to
        self.seen: list[tuple[str, str, str | None]] = []
        self.server_names: list[str | None] = []

    @property
    def port(self) -> int:
        return self.server_address[1]


@contextmanager
def recorder(
    redirect_to: str | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[_Server]:
    server = _Server(redirect_to)
    if tls is not None:
        tls.sni_callback = lambda sock, name, ctx: server.server_names.append(name)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def production(settings) -> None:
    settings.UPSTREAM_ALLOWED_NETWORKS = []


def stage_dns(monkeypatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """Our resolver answers ``answers[host]`` in turn (the last answer once they run out);
    returns the names asked, in order."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[addresses.Address]:
        asked.append(host)
        queue = answers[host]
        found = queue.pop(0) if len(queue) > 1 else queue[0]
        return [ipaddress.ip_address(a) for a in found]

    monkeypatch.setattr(addresses, "resolve_host", resolve)
    return asked


async def models_of(base_url: str, policy: AddressPolicy, **options) -> list[str]:
    provider = OpenAIProvider(
        base_url=base_url,
        api_key="sk-test-policy",
        timeout=5,
        max_retries=options.pop("max_retries", 0),
        address_policy=policy,
    )
    try:
        return await provider.list_models()
    finally:
        await provider.aclose()


# --- every form of a forbidden address -------------------------------------------------------

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("2130706433", "loopback"),  # decimal
    ("0x7f000001", "loopback"),  # hex
    ("0x7f.0.0.1", "loopback"),  # hex, dotted
    ("0177.0.0.1", "loopback"),  # octal
    ("127.1", "loopback"),  # short
    ("127.0.0.1.", "loopback"),  # fully qualified
    ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "loopback"),  # full-width: IDNA maps them
    ("[::1]", "loopback"),
    ("[::ffff:127.0.0.1]", "loopback"),  # IPv4-mapped
    ("[::ffff:7f00:1]", "loopback"),  # IPv4-mapped, in hex
    ("[2002:7f00:1::]", "loopback"),  # 6to4 of 127.0.0.1
    ("0.0.0.0", "unspecified"),  # noqa: S104 - a URL's host here, not a bind address
    ("0", "unspecified"),
    ("[::]", "unspecified"),
    ("10.1.2.3", "private"),
    ("172.16.5.4", "private"),
    ("192.168.0.1", "private"),
    ("[fd12:3456::1]", "private"),
    ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", "private"),  # Teredo
    ("169.254.169.254", "metadata"),
    ("0xa9fea9fe", "metadata"),  # 169.254.169.254 in hex
    ("[fd00:ec2::254]", "metadata"),
    ("100.100.100.200", "metadata"),
    ("[64:ff9b::a9fe:a9fe]", "metadata"),  # NAT64 of 169.254.169.254
    ("169.254.1.1", "link-local"),
    ("[fe80::1]", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.1.2.3", "multicast"),
    ("[ff02::1]", "multicast"),
    ("100.64.0.1", "non-public"),  # carrier-grade NAT
]
IDS = [host for host, _ in REFUSED]


@pytest.mark.parametrize(("host", "kind"), REFUSED, ids=IDS)
def test_it_refuses_every_form_of_a_forbidden_address(host, kind):
    with pytest.raises(AddressRefused) as refused:
        PRODUCTION.check_url(f"http://{host}:8080/v1")

    assert kind in refused.value.reason
    assert host.strip("[]") in refused.value.message
    assert "UPSTREAM_ALLOWED_NETWORKS" in refused.value.message


def _sendable(host: str) -> bool:
    try:
        httpx2.URL(f"http://{host}/")
    except httpx2.InvalidURL:  # 0177.0.0.1: httpx2 will not send there at all
        return False
    return True


@pytest.mark.parametrize(("host", "kind"), [r for r in REFUSED if _sendable(r[0])], ids=str)
async def test_a_request_to_any_form_is_refused_before_it_connects(host, kind):
    # The recorder listens on 127.0.0.1: where the loopback forms point.
    with recorder() as listening, pytest.raises(ProviderError) as error:
        await models_of(f"http://{host}:{listening.port}/v1", PRODUCTION, max_retries=2)

    assert error.value.code == ErrorCode.ADDRESS_REFUSED
    assert not error.value.retryable
    assert kind in error.value.message
    assert listening.seen == []


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"]
)
def test_public_addresses_pass(address):
    assert PRODUCTION.refusal(ipaddress.ip_address(address)) is None


# --- the allow-list ------------------------------------------------------------------------


def test_an_allowed_network_lets_its_addresses_through_and_no_other():
    policy = AddressPolicy.allowing(["10.0.0.0/8", "fd00::/8"])

    assert policy.refusal(ipaddress.ip_address("10.20.30.40")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:10.0.0.1")) is None  # the same address
    assert policy.refusal(ipaddress.ip_address("fd12::1")) is None
    assert policy.refusal(ipaddress.ip_address("192.168.0.1")) == "a private address"
    assert policy.refusal(ipaddress.ip_address("127.0.0.1")) == "a loopback address"


async def test_the_setting_is_the_allow_list(settings, fake_upstream):
    from providers.specs import address_policy

    settings.UPSTREAM_ALLOWED_NETWORKS = []
    with pytest.raises(ProviderError):
        await models_of(fake_upstream.base_url, address_policy())

    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    assert await models_of(fake_upstream.base_url, address_policy()) == [
        "fake-gpt",
        "fake-gpt-mini",
    ]


def test_a_malformed_network_is_a_system_check_error(settings):
    settings.UPSTREAM_ALLOWED_NETWORKS = ["10.0.0.0/8", "ten.0.0.0/8"]

    [error] = _check_allowed_networks(None)

    assert error.id == "providers.E001"
    assert "'ten.0.0.0/8' is not a network" in error.msg


# --- names -----------------------------------------------------------------------------------


def test_a_name_resolving_to_a_forbidden_address_is_refused():
    with pytest.raises(AddressRefused, match="localhost: it is or resolves to a loopback"):
        PRODUCTION.check_url("http://localhost:11434/v1")


async def test_a_name_with_one_forbidden_address_among_public_ones_is_refused(monkeypatch):
    stage_dns(monkeypatch, {"mixed.test": [["93.184.216.34", "10.0.0.7"]]})

    with pytest.raises(ProviderError) as error:
        await models_of("http://mixed.test/v1", PRODUCTION)

    assert error.value.code == ErrorCode.ADDRESS_REFUSED
    assert "mixed.test" in error.value.message
    assert "10.0.0.7" not in error.value.message  # a tenant learns no internal address


def test_a_name_that_does_not_resolve_yet_can_be_saved(monkeypatch):
    def nowhere(host: str, port: int) -> list[addresses.Address]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(addresses, "resolve_host_sync", nowhere)

    PRODUCTION.check_url("http://ollama:11434/v1")  # no error: checked at each request


async def test_a_name_that_does_not_resolve_is_unreachable_not_refused():
    with pytest.raises(ProviderError) as error:
        await models_of("http://no-such-host.invalid/v1", PRODUCTION)

    assert error.value.code == ErrorCode.UPSTREAM_UNAVAILABLE


# --- resolved once, connected to what was checked -------------------------------------------


async def test_the_request_goes_to_the_checked_address_with_the_name_as_host(monkeypatch):
    """DNS rebinding: the name resolves to an allowed address for the check, then to a
    forbidden one. The request goes to the first (the name itself resolves nowhere else, so
    nothing but the pinned address could have answered), and the next request is checked
    again, and refused."""
    asked = stage_dns(monkeypatch, {"rebind.test": [["127.0.0.1"], ["10.0.0.9"]]})
    with recorder() as upstream:
        base_url = f"http://rebind.test:{upstream.port}/v1"

        assert await models_of(base_url, LOOPBACK) == ["m"]
        with pytest.raises(ProviderError) as error:
            await models_of(base_url, LOOPBACK)

    assert upstream.seen == [("GET", "/v1/models", f"rebind.test:{upstream.port}")]
    assert asked == ["rebind.test", "rebind.test"]  # once per request
    assert error.value.code == ErrorCode.ADDRESS_REFUSED


def _certificate(name: str) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _tls_server_context(certificate: bytes, key: bytes, tmp_path) -> ssl.SSLContext:
    (tmp_path / "cert.pem").write_bytes(certificate)
    (tmp_path / "key.pem").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


@pytest.mark.parametrize("served_name", ["pinned.test", "other.test"])
async def test_tls_names_the_host_and_checks_its_certificate_not_the_address(
    monkeypatch, tmp_path, served_name
):
    certificate, key = _certificate(served_name)
    stage_dns(monkeypatch, {"pinned.test": [["127.0.0.1"]]})
    trusted = ssl.create_default_context(cadata=certificate.decode())
    tls = _tls_server_context(certificate, key, tmp_path)
    with recorder(tls=tls) as upstream:
        client = httpx2.AsyncClient(
            transport=PinnedTransport(LOOPBACK, verify=trusted), follow_redirects=False
        )
        async with client:
            if served_name == "pinned.test":
                answer = await client.get(f"https://pinned.test:{upstream.port}/v1/models")
                assert answer.status_code == 200
            else:  # a certificate for another name fails, though the address is the same
                with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await client.get(f"https://pinned.test:{upstream.port}/v1/models")

    assert upstream.server_names[:1] == ["pinned.test"]  # SNI: the name, not 127.0.0.1
    if served_name == "pinned.test":
        assert upstream.seen == [("GET", "/v1/models", f"pinned.test:{upstream.port}")]


# --- redirects ---------------------------------------------------------------------------------


async def test_a_redirect_is_not_followed():
    with recorder() as elsewhere:
        target = f"http://127.0.0.1:{elsewhere.port}/v1/models"
        with recorder(redirect_to=target) as upstream:
            with pytest.raises(ProviderError) as listing:
                await models_of(f"http://127.0.0.1:{upstream.port}/v1", LOOPBACK, max_retries=2)
            provider = OpenAIProvider(
                base_url=f"http://127.0.0.1:{upstream.port}/v1",
                api_key="sk-test-policy",
                max_retries=2,
                address_policy=LOOPBACK,
            )
            try:
                with pytest.raises(ProviderError) as chat:
                    await provider.complete(ChatRequest(model="m", messages=HELLO))
            finally:
                await provider.aclose()

    assert elsewhere.seen == []
    assert [method for method, *_ in upstream.seen] == ["GET", "POST"]  # asked once, no retry
    for error in (listing.value, chat.value):
        assert (error.code, error.status, error.retryable) == (
            ErrorCode.UPSTREAM_UNAVAILABLE,
            302,
            False,
        )
        assert f"redirect (302) to {target}, which is not followed" in error.message


# --- saving a connection, testing it, refreshing its models --------------------------------


def test_the_page_form_shows_the_refusal_on_the_base_url(client_for, alice, project_a, production):
    response = client_for(alice).post(
        url("connection_new", project_a), form_data(base_url="http://127.1:11434/v1")
    )

    assert response.status_code == 200
    [error] = response.context["form"].errors["base_url"]
    assert "does not send requests to 127.1: it is or resolves to a loopback address" in error
    assert "UPSTREAM_ALLOWED_NETWORKS" in response.content.decode()
    assert not ProviderConnection.objects.filter(project=project_a).exists()


def test_editing_to_a_forbidden_address_is_refused(
    client_for, alice, project_a, fake_upstream, production, settings
):
    settings.UPSTREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    connection = connection_create(
        actor=membership(alice, project_a.organization),
        project=project_a,
        kind="openai_compatible",
        name="Upstream",
        base_url=fake_upstream.base_url,
    )
    settings.UPSTREAM_ALLOWED_NETWORKS = []

    data = form_data(base_url="http://[::ffff:169.254.169.254]/v1", kind=None)
    response = client_for(alice).post(url("connection_edit", project_a, connection.pk), data)

    [error] = response.context["form"].errors["base_url"]
    assert "a cloud metadata address (169.254.169.254)" in error
    connection.refresh_from_db()
    assert connection.base_url == fake_upstream.base_url


def test_a_name_that_does_not_resolve_is_saved(client_for, alice, project_a, production):
    response = client_for(alice).post(
        url("connection_new", project_a), form_data(base_url="http://ollama.invalid:11434/v1")
    )

    assert response.status_code == 302
    assert ProviderConnection.objects.get(project=project_a).base_url == (
        "http://ollama.invalid:11434/v1"
    )


def test_the_service_refuses_it_whoever_calls(alice, project_a, production):
    from core.errors import ServiceError

    with pytest.raises(ServiceError) as refused:
        connection_create(
            actor=membership(alice, project_a.organization),
            project=project_a,
            kind="openai_compatible",
            name="Metadata",
            base_url="http://0xa9fea9fe/latest/meta-data/",
        )

    assert (refused.value.code, refused.value.param) == ("upstream_address_refused", "base_url")


@pytest.mark.django_db
def test_the_admin_form_refuses_it_too(production):
    form = ProviderConnectionForm(
        data={
            "kind": "openai_compatible",
            "name": "Staff",
            "base_url": "http://[::1]:8000/v1",
            "timeout": "60",
            "max_retries": "2",
        }
    )

    assert not form.is_valid()
    assert "a loopback address" in form.errors["base_url"][0]


@pytest.mark.parametrize("action", ["connection_test", "connection_refresh"])
def test_testing_and_refreshing_say_why(client_for, alice, project_a, settings, action):
    with recorder() as upstream:
        # Saved while allowed (or before the policy existed), refused since.
        connection = ProviderConnection.objects.create(
            organization=project_a.organization,
            project=project_a,
            kind=ProviderConnection.Kind.COMPATIBLE,
            name="Upstream",
            base_url=f"http://127.0.0.1:{upstream.port}/v1",
            max_retries=2,
        )
        settings.UPSTREAM_ALLOWED_NETWORKS = []

        response = client_for(alice).post(url(action, project_a, connection.pk), follow=True)

    [message] = [str(m) for m in response.context["messages"]]
    assert message.startswith("“Upstream”: The server does not send requests to 127.0.0.1")
    assert upstream.seen == []


# --- a chat call: the error on every surface, the books -------------------------------------


@pytest.fixture
def refused_world(alice, org_a, project_a, fake_upstream, settings):
    """Project A served by the fake upstream on 127.0.0.1, under production's policy, priced
    and with a budget: every call takes a hold, and must give it back."""
    serve(project_a, fake_upstream, "fake-gpt")
    ModelPrice.objects.create(
        model="fake-gpt",
        input_per_million=Decimal("1000"),
        cached_input_per_million=Decimal("500"),
        output_per_million=Decimal("2000"),
        effective_from="2024-01-01",
    )
    Budget.objects.create(
        organization=org_a, scope="project", project=project_a, limit_usd=Decimal(1000)
    )
    settings.UPSTREAM_ALLOWED_NETWORKS = []
    return make_key(alice, org_a, project_a, ["chat", "read"])


def assert_one_failed_row_and_nothing_held(fake_upstream) -> None:
    [row] = UsageRecord.objects.all()
    assert (row.status, row.prompt_tokens, row.completion_tokens, row.cost) == (
        "error",
        0,
        0,
        Decimal(0),
    )
    assert Hold.objects.count() == 0
    assert sum((p.reserved for p in BudgetPeriod.objects.all()), Decimal(0)) == 0
    assert fake_upstream.request_counts == {}


def assert_refusal(body: dict) -> None:
    error = body["error"]
    assert (error["code"], error["type"]) == ("upstream_address_refused", "permission_error")
    assert "does not send requests to 127.0.0.1" in error["message"]


@pytest.mark.django_db(transaction=True)
def test_v1_answers_the_refusal_and_bills_nothing(client, refused_world, fake_upstream):
    answer = client.post(
        "/v1/chat/completions",
        data=json.dumps({"model": "fake-gpt", "messages": HELLO}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {refused_world}"},
    )

    assert answer.status_code == 403
    assert answer["x-should-retry"] == "false"
    assert_refusal(answer.json())
    assert_one_failed_row_and_nothing_held(fake_upstream)


@pytest.mark.django_db(transaction=True)
def test_a_rest_message_answers_the_refusal_and_keeps_the_message(
    client, project_a, refused_world, fake_upstream
):
    auth = {"Authorization": f"Bearer {refused_world}"}
    conversation = client.post(
        reverse("api-conversations", kwargs={"project_id": project_a.pk}),
        data=json.dumps({"model": "fake-gpt", "title": "t"}),
        content_type="application/json",
        headers=auth,
    ).json()

    answer = client.post(
        reverse(
            "api-messages",
            kwargs={"project_id": project_a.pk, "conversation_id": conversation["id"]},
        ),
        data=json.dumps({"content": "hello"}),
        content_type="application/json",
        headers=auth,
    )

    assert answer.status_code == 403
    assert_refusal(answer.json())
    user, reply = Message.objects.filter(conversation_id=conversation["id"]).order_by("id")
    assert (user.content, reply.state, reply.error_code) == (
        "hello",
        "error",
        "upstream_address_refused",
    )
    assert_one_failed_row_and_nothing_held(fake_upstream)
