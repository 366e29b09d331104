"""The three people every tenancy test uses.

alice owns org A, bob is a plain member of org A, charlie owns org B and must see nothing of A.
"""

import asyncio
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import connection
from django.test import Client

from accounts.models import Membership, Organization, Project, Role, User
from billing.models import ModelPrice
from core import config_cache
from core.detached import wait_for_detached
from providers.llm.fake_upstream import FakeUpstream
from tests.factories import MembershipFactory, OrganizationFactory, ProjectFactory, UserFactory

# --- running in parallel (pytest-xdist, ``make test``: ``-n 2 --dist loadgroup``) ------------

# The local model's own tests: llama.cpp keeps every core busy while it writes, so two of them
# at once (one per worker) would each take twice as long. They share one worker, one after
# the other, and go first: that worker starts on them at once, as the other starts on the rest.
LOCAL_MODEL_MODULES = (
    "tests/providers/llm/test_local_provider.py",
    "tests/providers/llm/test_embed.py",
)


def _flushes_the_database(item: pytest.Item) -> bool:
    """A transactional test empties every table when it ends (the rows migrations seed too):
    pytest-django runs them after the others, and that order must hold on every worker."""
    marker = item.get_closest_marker("django_db")
    fixtures = getattr(item, "fixturenames", ())
    return bool(
        (marker and (marker.kwargs.get("transaction") or marker.kwargs.get("reset_sequences")))
        or "transactional_db" in fixtures
        or "live_server" in fixtures
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    local = [
        item
        for item in items
        if item.nodeid.startswith(tuple(f"{module}::" for module in LOCAL_MODEL_MODULES))
    ]
    if config.pluginmanager.hasplugin("xdist"):
        for item in local:
            item.add_marker(pytest.mark.xdist_group("local-model"))
    if not any(_flushes_the_database(item) for item in local):
        others = [item for item in items if item not in set(local)]
        items[:] = local + others


@pytest.fixture(autouse=True)
def _fresh_config_cache() -> None:
    """Each test starts with nothing kept in memory from another test's rows (which a rolled
    back transaction removed without a signal, and whose ids the next test reuses), and no
    rate-limit counts left in the cache by an earlier test of a project with the same id."""
    config_cache.clear()
    cache.clear()


@pytest.fixture
def fake_price(db) -> ModelPrice:
    """fake-gpt* at $1,000 / $2,000 per 1M tokens: a token costs $0.001 in, $0.002 out."""
    return ModelPrice.objects.create(
        model="fake-gpt*",
        input_per_million=Decimal("1000"),
        cached_input_per_million=Decimal("500"),
        output_per_million=Decimal("2000"),
        effective_from="2024-01-01",
    )


@pytest.fixture
def org_a(db) -> Organization:
    return OrganizationFactory(name="Org A", slug="org-a")


@pytest.fixture
def org_b(db) -> Organization:
    return OrganizationFactory(name="Org B", slug="org-b")


@pytest.fixture
def project_a(org_a) -> Project:
    return ProjectFactory(organization=org_a, name="Project A", slug="project-a")


@pytest.fixture
def project_b(org_b) -> Project:
    return ProjectFactory(organization=org_b, name="Project B", slug="project-b")


@pytest.fixture
def alice(org_a) -> User:
    user = UserFactory(email="alice@example.com", name="Alice")
    MembershipFactory(user=user, organization=org_a, role=Role.OWNER)
    return user


@pytest.fixture
def bob(org_a) -> User:
    user = UserFactory(email="bob@example.com", name="Bob")
    MembershipFactory(user=user, organization=org_a, role=Role.MEMBER)
    return user


@pytest.fixture
def charlie(org_b) -> User:
    user = UserFactory(email="charlie@example.com", name="Charlie")
    MembershipFactory(user=user, organization=org_b, role=Role.OWNER)
    return user


def membership(user: User, organization: Organization) -> Membership:
    return Membership.objects.get(user=user, organization=organization)


@pytest.fixture
def client_for():
    """A logged-in test client for a user: ``client_for(alice).get(...)``."""

    def make(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def fake_upstream(fake_upstream_server: FakeUpstream) -> FakeUpstream:
    """The fake OpenAI upstream, its request counts zeroed."""
    fake_upstream_server.reset()
    return fake_upstream_server


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses every connection: bound (so no other process, no other
    test worker, can take it meanwhile) but not listening."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


async def wait_for_background(within: float = 30) -> None:
    """Wait, at most ``within`` seconds, until every detached task of this process (a reply,
    the upstream side of a stream, a settle) has finished."""
    async with asyncio.timeout(within):
        await wait_for_detached()


# --- sockets, opened as a browser opens them: session cookie, Origin, the real ASGI app -----

ORIGIN = "http://testserver"


def session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    name = django_settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}"


class Socket:
    """A WebsocketCommunicator with helpers to read the protocol's events."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator

    async def send(self, **frame: Any) -> None:
        await self.communicator.send_json_to(frame)

    # The bounds are generous: on a loaded machine an event may take seconds; a test that
    # waits for one that never comes still fails, after ``within``.
    async def receive(self, within: float = 30) -> dict[str, Any]:
        return await self.communicator.receive_json_from(within)

    async def until(self, *kinds: str, within: float = 30) -> list[dict[str, Any]]:
        """Every event up to and including the first of one of ``kinds``."""
        events = []
        while True:
            events.append(await self.receive(within))
            if events[-1]["type"] in kinds:
                return events

    async def nothing_more(self) -> bool:
        """Nothing else comes: every detached task (a reply's, its settle) has ended, and
        nothing they sent is waiting for this socket."""
        await wait_for_background()
        return await self.communicator.receive_nothing(timeout=0.2)

    async def close(self) -> None:
        await self.communicator.disconnect()


OpenSocket = Callable[..., Awaitable[tuple[bool, Socket]]]


@pytest.fixture
async def open_socket() -> AsyncIterator[OpenSocket]:
    sockets: list[Socket] = []

    async def open_(
        user: User | None, conversation_id: int, *, origin: str = ORIGIN
    ) -> tuple[bool, Socket]:
        headers = [(b"origin", origin.encode())]
        if user is not None:
            cookie = await database_sync_to_async(session_cookie)(user)
            headers.append((b"cookie", cookie.encode()))
        from config.asgi import application

        communicator = WebsocketCommunicator(
            application, f"/ws/conversations/{conversation_id}/", headers=headers
        )
        connected, _ = await communicator.connect()
        socket = Socket(communicator)
        if connected:
            sockets.append(socket)
        return connected, socket

    yield open_
    for opened in sockets:
        await opened.close()
    await wait_for_background()


# --- a live server: Daphne serving the real ASGI app, for real HTTP clients ----------------

# The server process: the test settings, pointed at this run's test database file, serving on
# the listening socket it inherits (its file descriptor).
DAPHNE = """
import sys
import django
from django.conf import settings
settings.DATABASES["default"]["NAME"] = sys.argv[1]
django.setup()
from daphne.cli import CommandLineInterface
CommandLineInterface().run(["--fd", sys.argv[2], "config.asgi:application"])
"""


def _answers_http(port: int) -> bool:
    """Whether a server on ``port`` answers an HTTP request (any status will do)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("HEAD", "/")
        connection.getresponse().read()
        return True
    except OSError:  # refused, reset, or no answer yet
        return False
    finally:
        connection.close()


@pytest.fixture
def live_daphne(transactional_db) -> Iterator[str]:
    """The base URL of Daphne serving the real ASGI app in a subprocess, started with the test
    settings and this run's test database file: with ``transaction=True`` both processes see
    the same committed rows. Not a fork (daphne's ``DaphneProcess``): a fork late in the run
    inherits thread-pool executors whose threads it does not have, and hangs.

    The port is taken here and handed over as a listening socket: no other process (another
    test worker's server) can take it between choosing it and serving on it. Its log goes to
    a file, which never fills up and blocks the server as a pipe nobody reads would."""
    # The gateway's database work on one long-lived thread, as on the embedded profile
    # (core.db): the server has its own connections, which see the committed rows.
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": django_settings.SETTINGS_MODULE,
        "DB_THREADS": "1",
        # The server's cache is its own (local memory): it could not hear of the test's
        # changes, so it keeps nothing in memory between calls (core.config_cache).
        "CONFIG_CACHE_SECONDS": "0",
    }
    with (
        socket.socket() as listener,
        tempfile.TemporaryFile() as log,
    ):
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [
                sys.executable,
                "-c",
                DAPHNE,
                str(connection.settings_dict["NAME"]),
                str(listener.fileno()),
            ],
            env=env,
            cwd=django_settings.BASE_DIR,
            stdout=subprocess.DEVNULL,
            stderr=log,
            pass_fds=[listener.fileno()],
        )
        try:
            # Until it answers: the socket listens already, so a connection alone proves
            # nothing. Bounded, and over at once if the server exits.
            deadline = time.monotonic() + 60
            while not _answers_http(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"Daphne did not start: {log.read()!r}")
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
