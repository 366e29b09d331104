"""Real processes for the scale-out and crash tests: Daphne and Celery started the way
production starts them, under ``config.settings.test_processes``, on this test run's PostgreSQL
database (pytest-django's, with ``transaction=True`` so every process sees committed rows) and
the Redis that ``make test`` starts (scripts/redis.sh): channel layer, cache and broker.

Each process leads a process group of its own, so that a kill takes a Celery worker's pool with
it, as when a machine or a container dies. Logs go to files (a pipe nobody reads fills up and
blocks the process). The ``processes`` fixture stops every process it started, then prints their
logs, which pytest shows only when the test failed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import redis
from celery import Celery
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from django.db import connection
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import _answers_http

T = TypeVar("T")

SETTINGS = "config.settings.test_processes"
START_WITHIN = 90  # seconds for a process to be ready (Django and Celery boot on a busy machine)
STOP_WITHIN = 10  # seconds a process has to exit on SIGTERM before it is killed
_runs = itertools.count()


def wait_until(
    check: Callable[[], T], *, within: float, what: str, log_of: Process | None = None
) -> T:
    """Poll ``check`` until it returns something true; fail after ``within`` seconds (with the
    log of ``log_of`` as it is then)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}\n{log_of.log() if log_of else ''}")
        time.sleep(0.05)


async def eventually(check: Callable[[], T], *, within: float = 60, what: str) -> T:
    """``wait_until`` from async code: ``check`` runs on a thread (it may read the database)."""
    deadline = time.monotonic() + within
    while True:
        value = await database_sync_to_async(check)()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.1)


class Process:
    def __init__(self, name: str, popen: subprocess.Popen, log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _signal_group(self, signum: int) -> None:
        with suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(self.popen.pid, signum)

    def kill(self) -> None:
        """SIGKILL to the process and everything it started: no cleanup, no goodbye."""
        self._signal_group(signal.SIGKILL)
        self.popen.wait(STOP_WITHIN)

    def stop(self) -> None:
        if self.alive():
            self._signal_group(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(STOP_WITHIN)
        self.kill()  # whatever the group still holds (a pool's process)

    def children(self) -> list[int]:
        """The processes this one started (a Celery worker's pool), from any of its threads."""
        return sorted(
            int(pid)
            for path in Path(f"/proc/{self.pid}/task").glob("*/children")
            for pid in path.read_text().split()
        )


class Web(Process):
    """Daphne serving ``config.asgi:application`` on 127.0.0.1:``port``."""

    def __init__(self, name: str, popen: subprocess.Popen, log_path: Path, port: int) -> None:
        super().__init__(name, popen, log_path)
        self.port = port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def socket_url(self, conversation_id: int) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/conversations/{conversation_id}/"


class Processes:
    """Starts processes that share the test's database and Redis, and stops all of them."""

    def __init__(self, *, redis_url: str, prefix: str, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.log_dir = log_dir
        self.started: list[Process] = []
        db = connection.settings_dict
        database_url = (
            f"postgres://{quote(db['USER'])}:{quote(db['PASSWORD'])}@{db['HOST']}:{db['PORT']}"
            f"/{db['NAME']}"
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_"))},
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            # The sessions the test makes are signed with its key; it encrypted the provider
            # connections' keys with its own Fernet keys.
            "SECRET_KEY": django_settings.SECRET_KEY,
            "FIELD_ENCRYPTION_KEYS": ",".join(django_settings.FIELD_ENCRYPTION_KEYS),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "EMAIL_URL": "consolemail://",
            "TEST_PROCESSES_PREFIX": prefix,
            "PYTHONUNBUFFERED": "1",
        }
        self.app = Celery("test-sender", broker=redis_url, set_as_current=False)
        self.app.conf.task_serializer = "json"

    def _start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> tuple[subprocess.Popen, Path]:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                argv,
                env={**self.env, **(env or {})},
                cwd=django_settings.BASE_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=pass_fds,
                start_new_session=True,  # a process group of its own (see ``kill``)
            )
        return popen, log_path

    def web(self, name: str) -> Web:
        """Daphne on a port of its own, once it answers HTTP. The port is taken here and handed
        over as a listening socket: nothing else can take it in between."""
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            port = listener.getsockname()[1]
            popen, log_path = self._start(
                name,
                [sys.executable, "-m", "daphne", "--fd", str(listener.fileno()),
                 "config.asgi:application"],
                pass_fds=(listener.fileno(),),
            )  # fmt: skip
        web = Web(name, popen, log_path, port)
        self.started.append(web)
        wait_until(
            lambda: not web.alive() or _answers_http(port),
            within=START_WITHIN,
            what=f"{name} answers on port {port}",
            log_of=web,
        )
        if not web.alive():
            raise AssertionError(f"{name} exited:\n{web.log()}")
        return web

    def worker(
        self,
        name: str,
        *,
        concurrency: int = 1,
        beat: bool = False,
        env: dict[str, str] | None = None,
    ) -> Process:
        """A Celery worker (the prefork pool, as in production) consuming this run's queue,
        once it says it is ready; with ``beat``, the beat scheduler inside it."""
        argv = [
            sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=info",
            f"--hostname={name}@%h", f"--concurrency={concurrency}",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        if beat:
            argv += ["--beat", f"--schedule={self.log_dir / f'{name}-beat-schedule'}"]
        popen, log_path = self._start(name, argv, env=env)
        worker = Process(name, popen, log_path)
        self.started.append(worker)
        wait_until(
            lambda: not worker.alive() or " ready." in worker.log(),
            within=START_WITHIN,
            what=f"{name} is ready",
            log_of=worker,
        )
        if not worker.alive():
            raise AssertionError(f"{name} exited:\n{worker.log()}")
        return worker

    def send_task(self, name: str, *args: Any, task_id: str | None = None) -> str:
        """Queue a task for this run's workers, as ``.delay()`` in one of the processes does."""
        return self.app.send_task(name, args=list(args), queue=self.prefix, task_id=task_id).id

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()
        self.app.close()

    def logs(self) -> str:
        return "\n".join(
            f"===== {process.name} (pid {process.pid}, exit {process.popen.returncode}) =====\n"
            f"{process.log()}"
            for process in self.started
        )

    def forget(self) -> None:
        """Remove this run's keys from Redis: its queue, its unacknowledged tasks, its cache."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            for key in client.scan_iter(f"*{self.prefix}*"):
                client.delete(key)
            for tag, payload in client.hscan_iter("unacked"):
                if self.prefix in payload.decode(errors="replace"):
                    client.hdel("unacked", tag)
                    client.zrem("unacked_index", tag)
        finally:
            client.close()


@pytest.fixture
def processes(transactional_db, tmp_path: Path) -> Iterator[Processes]:
    if connection.vendor != "postgresql":
        pytest.fail("these tests run on PostgreSQL: `make test` runs them (scripts/postgres.sh)")
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        pytest.fail("REDIS_URL is not set: `make test` starts Redis with scripts/redis.sh")
    # This run's names in the shared Redis (see config.settings.test_processes).
    started = Processes(
        redis_url=redis_url, prefix=f"gwtest.{os.getpid()}.{next(_runs)}", log_dir=tmp_path
    )
    started.forget()  # an earlier run with this process id
    try:
        yield started
    finally:
        started.stop_all()
        print(started.logs())  # pytest shows a test's output only when it failed
        started.forget()


class Tab:
    """A browser tab's socket: the real WebSocket protocol to a Daphne process."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket

    async def send(self, **frame: Any) -> None:
        await self.websocket.send(json.dumps(frame))

    async def receive(self, within: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(within):
            return json.loads(await self.websocket.recv())

    async def until(self, *kinds: str, within: float = 30) -> list[dict[str, Any]]:
        """Every event up to and including the first of one of ``kinds``."""
        events = []
        while True:
            events.append(await self.receive(within))
            if events[-1]["type"] in kinds:
                return events


@asynccontextmanager
async def open_tab(web: Web, conversation_id: int, *, cookie: str) -> AsyncIterator[Tab]:
    """The conversation's socket on ``web``, opened as a browser opens it: the session cookie
    and the page's Origin (no proxy from the environment)."""
    async with connect(
        web.socket_url(conversation_id),
        origin=web.origin,  # type: ignore[arg-type]
        additional_headers={"Cookie": cookie},
        proxy=None,
        open_timeout=30,
    ) as websocket:
        yield Tab(websocket)
