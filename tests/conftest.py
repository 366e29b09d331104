"""The three people every tenancy test uses.

alice owns org A, bob is a plain member of org A, charlie owns org B and must see nothing of A.
"""

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client

from accounts.models import Membership, Organization, Project, Role, User
from core.detached import wait_for_detached
from providers.llm.fake_upstream import FakeUpstream
from tests.factories import MembershipFactory, OrganizationFactory, ProjectFactory, UserFactory


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

    async def receive(self, within: float = 10) -> dict[str, Any]:
        return await self.communicator.receive_json_from(within)

    async def until(self, *kinds: str, within: float = 10) -> list[dict[str, Any]]:
        """Every event up to and including the first of one of ``kinds``."""
        events = []
        while True:
            events.append(await self.receive(within))
            if events[-1]["type"] in kinds:
                return events

    async def nothing_more(self) -> bool:
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
    async with asyncio.timeout(30):
        await wait_for_detached()


# --- a live server: Daphne serving the real ASGI app, for real HTTP clients ----------------

# The server process: the test settings, pointed at this run's test database file.
DAPHNE = """
import sys
import django
from django.conf import settings
settings.DATABASES["default"]["NAME"] = sys.argv[1]
django.setup()
from daphne.cli import CommandLineInterface
CommandLineInterface().run(["-b", "127.0.0.1", "-p", sys.argv[2], "config.asgi:application"])
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def live_daphne(transactional_db) -> Iterator[str]:
    """The base URL of Daphne serving the real ASGI app in a subprocess, started with the test
    settings and this run's test database file: with ``transaction=True`` both processes see
    the same committed rows. Not a fork (daphne's ``DaphneProcess``): a fork late in the run
    inherits thread-pool executors whose threads it does not have, and hangs."""
    port = _free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": django_settings.SETTINGS_MODULE}
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-c", DAPHNE, str(connection.settings_dict["NAME"]), str(port)],
        env=env,
        cwd=django_settings.BASE_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Daphne did not start: {process.stderr.read()!r}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        process.stderr.close()
