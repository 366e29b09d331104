"""The gateway side by side with LiteLLM, in front of the same fake OpenAI upstream.

From the project root (nothing else needs to run; everything is started and stopped here):

    .venv/bin/python benchmarks/gateway.py                        # embedded profile, 3 rounds
    .venv/bin/python benchmarks/gateway.py --quick                # 1 round, fewer requests
    .venv/bin/python benchmarks/gateway.py --profile production   # PostgreSQL + Redis
    .venv/bin/python benchmarks/gateway.py --profile both --rounds 5

What runs, each in its own process:

- the fake upstream, `manage.py run_fake_upstream --port 0`;
- our app, `daphne config.asgi:application`, on a throwaway database: for ``embedded`` a SQLite
  file in a temporary folder (``SQLITE_PATH``), for ``production`` a fresh PostgreSQL database
  ``bench_<pid>`` on the server `scripts/postgres.sh` serves, and an empty Redis database on the
  one `scripts/redis.sh` serves (both dropped or flushed at the end). Migrated, then seeded
  (`benchmarks/_gw_django.py`): an organization, its project, a connection to the fake
  upstream with the models allowed, prices, a project API key, budgets of the organization, the
  project, the key and the member (large limits: every call holds and settles on each), and
  project and key rate limits of 1,000,000 requests a minute (checked on every call, never
  refusing), and conversations for the REST and socket scenarios;
- LiteLLM's proxy (`LITELLM_VERSION`, in its own virtualenv under var/bench/litellm-venv,
  never in the app's requirements), one worker, no database, a master key, the same models;
- the load generator (`benchmarks/_gw_load.py`), a process per scenario run.

Scenarios, each measured against the fake upstream directly too, so that "+p50" is the latency
a gateway adds (its p50 minus the direct p50 of the same round):

  a. /v1/chat/completions, no streaming, 1 client;
  b. the same, 32 clients;
  c. /v1/chat/completions streaming 50 chunks 20 ms apart, 32 clients;
  d. ours only: the REST API's message stream (``?stream=true``), 32 clients;
  e. ours only: the chat socket, 1 conversation alone (a few, one after the other), then 100
     and 500 conversations answering at once.

Each round runs every scenario on the fake upstream, then LiteLLM and ours (who goes first
alternates by round); only one target is under load at a time. The tables give medians over
rounds: requests (or streams) per second, latency p50/p99, time to first token, the server's
CPU per request (its process tree's user + system time from /proc, measured requests only),
its RSS before and after, and failures. At the end the ledger is checked against what the load
generator counted. A script that prints figures, not a test: nothing is asserted.
"""

# ruff: noqa: S603, S607 - an orchestrator of processes: every command is built here, not read in

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LITELLM_VERSION = "1.108.7"
LITELLM_VENV = ROOT / "var" / "bench" / "litellm-venv"
PYTHON = ROOT / ".venv" / "bin" / "python"
DAPHNE = ROOT / ".venv" / "bin" / "daphne"

PLAIN_MODEL = "fake-gpt"
WORDS = 50
STREAM_MODEL = f"fake-gpt@words{WORDS}@slow20"
PROMPT = "Hello from the gateway benchmark"
UPSTREAM_KEY = "sk-fake-benchmark"
BENCH_EMAIL = "gateway-bench@example.com"
BENCH_PASSWORD = secrets.token_urlsafe(16)
RESULT = "RESULT "


# --- processes and clean-up ----------------------------------------------------------------------


class Cleanup:
    """Everything started or created here, undone in reverse order at exit, also on Ctrl-C."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, action: Callable[[], None]) -> None:
        self.actions.append((what, action))

    def run(self) -> None:
        while self.actions:
            what, action = self.actions.pop()
            try:
                action()
            except Exception as exc:
                print(f"  clean-up of {what} failed: {exc}", file=sys.stderr)


CLEANUP = Cleanup()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """TERM the process's own group (started with a session of its own), then KILL it."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def start(name: str, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    CLEANUP.add(name, lambda: stop_process(process))
    return process


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def fail(message: str, log: Path | None = None) -> None:
    if log is not None:
        message += f"\n--- last lines of {log.name} ---\n{tail(log)}"
    raise SystemExit(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, *, seconds: float) -> None:
    """Until ``url`` answers anything over HTTP (a 401 is fine: the server is up)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            fail(f"{url}: the server exited ({process.returncode})", log)
        try:
            with urllib.request.urlopen(url, timeout=5):  # noqa: S310 - our own loopback URL
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.3)
    fail(f"{url} did not answer within {seconds:.0f} s", log)


def run_checked(
    command: list[str], env: dict[str, str], log: Path, what: str, timeout: float = 900
) -> str:
    """Run to the end; its output goes to ``log`` too. Returns stdout."""
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        fail(f"{what} failed ({done.returncode})", log)
    return done.stdout


def result_of(output: str) -> Any:
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    raise SystemExit("no RESULT line in the output")


def base_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "DATABASE_", "REDIS_", "SQLITE_", "CELERY_"))
    }
    env.pop("DEBUG", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- the fake upstream and LiteLLM ---------------------------------------------------------------


@dataclass
class Server:
    name: str
    base: str  # http://127.0.0.1:port, no path
    auth: str
    process: subprocess.Popen[bytes]
    log: Path


def start_upstream(tmp: Path) -> tuple[Server, str]:
    log = tmp / "upstream.log"
    env = base_env() | {"SQLITE_PATH": str(tmp / "unused.sqlite3")}
    command = [str(PYTHON), "manage.py", "run_fake_upstream", "--port", "0"]
    process = start("the fake upstream", command, env, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"Fake upstream at (\S+)", log.read_text(errors="replace"))
        if match:
            base_url = match.group(1)  # http://127.0.0.1:port/v1
            parts = urlsplit(base_url)
            root = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
            return Server("direct", root, f"Bearer {UPSTREAM_KEY}", process, log), base_url
        if process.poll() is not None:
            break
        time.sleep(0.2)
    fail("the fake upstream did not start", log)
    raise AssertionError  # unreachable: fail() exits


def litellm_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None


def ensure_litellm(tmp: Path) -> None:
    if litellm_version() == LITELLM_VERSION:
        return
    log = tmp / "litellm-install.log"
    print(f"Installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} …", flush=True)
    if not (LITELLM_VENV / "bin" / "python").exists():
        python311 = shutil.which("python3.11") or sys.executable
        run_checked([python311, "-m", "venv", str(LITELLM_VENV)], base_env(), log, "venv")
    pip = str(LITELLM_VENV / "bin" / "pip")
    run_checked(
        [pip, "install", "--quiet", f"litellm[proxy]=={LITELLM_VERSION}"],
        base_env(),
        log,
        "pip install litellm",
        timeout=1800,
    )


def start_litellm(tmp: Path, upstream_base_url: str) -> tuple[Server, str]:
    ensure_litellm(tmp)
    master_key = f"sk-bench-{secrets.token_hex(12)}"
    # Prices as ours has them (0.15 / 0.60 USD per 1M tokens): LiteLLM computes each call's
    # cost too, instead of failing to find these made-up models in its cost map.
    entries = [
        f"""  - model_name: "{name}"
    litellm_params:
      model: "openai/{name}"
      api_base: "{upstream_base_url}"
      api_key: "{UPSTREAM_KEY}"
    model_info:
      input_cost_per_token: 0.00000015
      output_cost_per_token: 0.0000006
"""
        for name in (PLAIN_MODEL, STREAM_MODEL)
    ]
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n" + "".join(entries) + f'general_settings:\n  master_key: "{master_key}"\n'
    )
    port = free_port()
    log = tmp / "litellm.log"
    # The local copy of its model cost map: fetching it needs a network this machine lacks.
    env = base_env() | {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    command = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    process = start("LiteLLM", command, env, log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            fail("LiteLLM exited", log)
        try:
            with urllib.request.urlopen(f"{base}/health/liveliness", timeout=5):  # noqa: S310
                break
        except OSError:
            time.sleep(0.5)
    else:
        fail("LiteLLM did not start", log)
    callbacks = "?"
    with contextlib.suppress(OSError, ValueError):
        request = urllib.request.Request(  # noqa: S310
            f"{base}/active/callbacks", headers={"Authorization": f"Bearer {master_key}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            active = json.loads(response.read())
        names = re.findall(r"\.(\w+) object", " ".join(active.get("litellm.callbacks", [])))
        callbacks = ", ".join(names) or "none"
    return Server("LiteLLM", base, f"Bearer {master_key}", process, log), callbacks


# --- our app -----------------------------------------------------------------------------------


class Sampler:
    """Peak PostgreSQL connections to our database and Redis clients (the whole server), read
    every 0.2 s while a run lasts: where connections run out, this says how many there were."""

    def __init__(self, postgres_url: str, database: str, redis_url: str) -> None:
        self.postgres_url, self.database, self.redis_url = postgres_url, database, redis_url
        self.peak = {"pg": 0, "redis": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self.peak = {"pg": 0, "redis": 0}
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        import psycopg
        import redis

        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        with (
            contextlib.suppress(Exception),
            psycopg.connect(self.postgres_url, autocommit=True) as pg,
        ):
            client = redis.Redis.from_url(self.redis_url)
            while not self._stop.wait(0.2):
                row = pg.execute(query, (self.database,)).fetchone()
                self.peak["pg"] = max(self.peak["pg"], row[0] if row else 0)
                clients = int(client.info("clients")["connected_clients"]) - 1  # not ours
                self.peak["redis"] = max(self.peak["redis"], clients)


@dataclass
class Profile:
    name: str
    env: dict[str, str]
    description: str
    sampler: Sampler | None = None


def embedded_profile(tmp: Path, debug_off: bool) -> Profile:
    env = base_env() | {
        "DJANGO_SETTINGS_MODULE": "config.settings.embedded",
        "SQLITE_PATH": str(tmp / "embedded.sqlite3"),
    }
    if debug_off:
        env["DEBUG"] = "0"
    debug = "DEBUG=0" if debug_off else "DEBUG on (the profile's default)"
    return Profile(
        "embedded",
        env,
        f"config.settings.embedded: SQLite (WAL, IMMEDIATE) in a temporary file, in-memory "
        f"channel layer, local-memory cache, {debug}",
    )


def _script_url(script: str, log: Path) -> str:
    done = subprocess.run(
        ["bash", script], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    with open(log, "a") as out:
        out.write(f"$ bash {script}\n{done.stdout}{done.stderr}\n")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        fail(f"bash {script} failed ({done.returncode})", log)
    return lines[-1].strip()


def production_profile(tmp: Path) -> Profile:
    import redis
    from cryptography.fernet import Fernet

    log = tmp / "services.log"
    postgres_url = _script_url("scripts/postgres.sh", log)
    redis_url = _script_url("scripts/redis.sh", log)

    parts = urlsplit(postgres_url)
    database = f"bench_{os.getpid()}"
    psql_env = base_env() | {"PGPASSWORD": parts.password or ""}
    psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", parts.hostname or "127.0.0.1"]
    psql += ["-p", str(parts.port or 5432), "-U", parts.username or "", "-d", parts.path[1:]]
    run_checked([*psql, "-c", f'CREATE DATABASE "{database}"'], psql_env, log, "createdb")
    CLEANUP.add(
        f"database {database}",
        lambda: run_checked(
            [*psql, "-c", f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'],
            psql_env,
            log,
            "dropdb",
        ),
    )
    database_url = urlunsplit(parts._replace(path=f"/{database}"))

    # An empty Redis database of our own, so that nothing of the tests' (db 0) is touched.
    redis_parts = urlsplit(redis_url)
    for number in range(15, 0, -1):
        client = redis.Redis(host=redis_parts.hostname, port=redis_parts.port or 6379, db=number)
        if client.dbsize() == 0:
            break
    else:
        fail("no empty Redis database among 1-15")
    CLEANUP.add(f"Redis database {number}", client.flushdb)
    redis_db_url = urlunsplit(redis_parts._replace(path=f"/{number}"))

    env = base_env() | {
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # providers/crypto.py: FIELD_ENCRYPTION_KEYS are Fernet keys, made by Fernet.generate_key.
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "DEBUG": "0",
        "SECURE_SSL_REDIRECT": "0",
        "UPSTREAM_ALLOWED_NETWORKS": "127.0.0.0/8",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_db_url,
    }
    return Profile(
        "production",
        env,
        f"config.settings.production: PostgreSQL database {database} on "
        f"{parts.hostname}:{parts.port}, Redis db {number} on {redis_parts.netloc} "
        "(channel layer, cache, Celery broker), DEBUG=0",
        Sampler(postgres_url, database, redis_db_url),
    )


@dataclass
class Ours:
    server: Server
    seed: dict[str, Any]
    cookie: str
    login: str


def start_ours(tmp: Path, profile: Profile, upstream_base_url: str, counts: dict[str, int]) -> Ours:
    log = tmp / f"ours-{profile.name}.log"
    setup_log = tmp / f"setup-{profile.name}.log"
    manage = [str(PYTHON), "manage.py"]
    run_checked([*manage, "migrate", "--noinput"], profile.env, setup_log, "migrate")
    if profile.env.get("DJANGO_SETTINGS_MODULE") == "config.settings.production":
        # A production web process starts only with collectstatic's manifest (config/startup.py).
        run_checked(
            [*manage, "collectstatic", "--noinput"], profile.env, setup_log, "collectstatic"
        )
    spec = {
        "email": BENCH_EMAIL,
        "password": BENCH_PASSWORD,
        "upstream": upstream_base_url,
        "models": [PLAIN_MODEL, STREAM_MODEL],
        "stream_model": STREAM_MODEL,
        "words": WORDS,
        **counts,
    }
    command = [str(PYTHON), "benchmarks/_gw_django.py", "seed", json.dumps(spec)]
    seed = result_of(run_checked(command, profile.env, setup_log, "seeding"))
    port = free_port()
    command = [str(DAPHNE), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
    process = start(f"our app ({profile.name})", command, profile.env, log)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/v1/models", process, log, seconds=120)
    server = Server("ours", base, f"Bearer {seed['api_key']}", process, log)
    cookie, login = log_in(base, seed)
    return Ours(server, seed, cookie, login)


def log_in(base: str, seed: dict[str, Any]) -> tuple[str, str]:
    """The socket's session: through the login page as a browser would, or, where the page
    cannot be used over plain HTTP, the session the seed made with Django's login."""
    from benchmarks.app_ws import log_in as page_log_in

    try:
        session = page_log_in(base, BENCH_EMAIL, BENCH_PASSWORD)
        cookie = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
        return cookie, "the login page"
    except (Exception, SystemExit) as exc:
        why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return seed["session_cookie"], f"a session made by the seed (the login page failed: {why})"


# --- scenarios ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kind: str  # v1, v1_stream, rest_stream, ws
    concurrency: int
    requests: int
    litellm: bool = True

    @property
    def streaming(self) -> bool:
        return self.kind != "v1"


def scenarios(quick: bool) -> list[Scenario]:
    def n(full: int, short: int) -> int:
        return short if quick else full

    return [
        Scenario("a", "/v1/chat/completions, non-stream, C=1", "v1", 1, n(300, 50)),
        Scenario("b", "/v1/chat/completions, non-stream, C=32", "v1", 32, n(3000, 300)),
        Scenario(
            "c",
            f"/v1/chat/completions, stream ({WORDS} chunks 20 ms apart), C=32",
            "v1_stream",
            32,
            n(320, 64),
        ),
        Scenario(
            "d",
            f"REST message ?stream=true ({WORDS} words 20 ms apart), C=32, ours only",
            "rest_stream",
            32,
            n(320, 64),
            litellm=False,
        ),
        Scenario(
            "e1",
            "chat socket, 1 conversation alone (one after another), ours only",
            "ws",
            1,
            n(5, 3),
            litellm=False,
        ),
        Scenario("e100", "chat socket, 100 at once, ours only", "ws", 100, 100, litellm=False),
        Scenario("e500", "chat socket, 500 at once, ours only", "ws", 500, 500, litellm=False),
    ]


REST_WARM = 4
WS_WARM = 2


def conversations_needed(plan: list[Scenario], rounds: int) -> dict[str, int]:
    rest = sum(s.requests + REST_WARM for s in plan if s.kind == "rest_stream")
    ws = sum(s.requests + WS_WARM for s in plan if s.kind == "ws")
    return {"rest_conversations": rest * rounds, "ws_conversations": ws * rounds}


def load_spec(
    scenario: Scenario,
    target: Server,
    *,
    upstream: Server,
    expected: dict[str, str],
    ours: Ours | None,
    pools: dict[str, Iterator[int]],
) -> dict[str, Any]:
    kind = scenario.kind
    # The fake upstream stands in for REST and socket replies with /v1 streams of the same shape.
    if target.name == "direct" and kind in ("rest_stream", "ws"):
        kind = "v1_stream"
    c, n = scenario.concurrency, scenario.requests
    spec: dict[str, Any] = {
        "kind": "v1" if kind == "v1_stream" else kind,
        "stream": kind == "v1_stream",
        "base": target.base,
        "path": "/v1/chat/completions",
        "auth": target.auth,
        "model": STREAM_MODEL if kind != "v1" else PLAIN_MODEL,
        "prompt": PROMPT,
        "expected": expected["stream"] if kind != "v1" else expected["echo"],
        "expected_chunks": WORDS,
        "concurrency": c,
        "requests": n,
        "pids": {"server": target.process.pid, "upstream": upstream.process.pid},
    }
    if kind == "v1":
        spec |= {"warmup": max(2 * c, 20), "warmup_concurrency": c}
    elif kind == "v1_stream":
        spec |= {"warmup": min(c, 8), "warmup_concurrency": min(c, 8)}
    elif kind == "rest_stream":
        assert ours is not None  # noqa: S101 - ours-only scenario
        rest = pools["rest"]
        spec |= {
            "project_id": ours.seed["project_id"],
            "conversations": [next(rest) for _ in range(n)],
            "warm_conversations": [next(rest) for _ in range(REST_WARM)],
            "warmup": REST_WARM,
            "warmup_concurrency": REST_WARM,
        }
    else:
        assert ours is not None  # noqa: S101 - ours-only scenario
        ws = pools["ws"]
        spec |= {
            "cookie": ours.cookie,
            "conversations": [next(ws) for _ in range(n)],
            "warm_conversations": [next(ws) for _ in range(WS_WARM)],
        }
    return spec


def run_load(spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    log = tmp / "load.log"
    with open(log, "ab") as err:
        process = subprocess.Popen(
            [str(PYTHON), "benchmarks/_gw_load.py"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
        try:
            out, _ = process.communicate(json.dumps(spec).encode(), timeout=1800)
        finally:
            stop_process(process)
    if process.returncode != 0:
        fail(f"the load generator failed ({process.returncode})", log)
    result: dict[str, Any] = result_of(out.decode())
    return result


# --- figures -----------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(int(p / 100 * len(ordered)), len(ordered) - 1)]


def figures(result: dict[str, Any]) -> dict[str, Any]:
    m = result["measured"]
    n = result["requests"]
    ms = 1000.0
    chunks = m["chunks"]

    def scaled(value: float | None) -> float | None:
        return None if value is None else value * ms

    return {
        "rps": m["ok"] / result["elapsed"] if result["elapsed"] else 0.0,
        "p50": scaled(pct(m["latency"], 50)),
        "p99": scaled(pct(m["latency"], 99)),
        "ttft50": scaled(pct(m["ttft"], 50)),
        "ttft99": scaled(pct(m["ttft"], 99)),
        "cpu": result["cpu"]["server"] / n * ms,
        "upstream_cpu": result["cpu"]["upstream"] / n * ms,
        "client_cpu": result["client_cpu"] / n * ms,
        "rss_before": result["rss_before"]["server"],
        "rss_after": result["rss_after"]["server"],
        "failed": m["failed"],
        "dropped": m["dropped"],
        "wrong": m["wrong_text"],
        "chunks_min": min(chunks) if chunks else None,
        "chunks_max": max(chunks) if chunks else None,
        "statuses": m["statuses"],
        "samples": m["samples"],
    }


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "—"
    return f"{ours / theirs:.2f}x"


def summarize(runs: list[dict[str, Any]], scenario: Scenario) -> dict[str, Any]:
    """Medians over rounds of one target's figures (and its +p50 against the same round's
    direct run)."""
    keys = ["rps", "p50", "p99", "ttft50", "ttft99", "cpu", "upstream_cpu", "client_cpu"]
    keys += ["rss_before", "rss_after", "added", "added_ttft"]
    out: dict[str, Any] = {k: median([r.get(k) for r in runs]) for k in keys}
    for k in ("failed", "dropped", "wrong"):
        out[k] = sum(r[k] for r in runs)
    mins = [r["chunks_min"] for r in runs if r["chunks_min"] is not None]
    maxs = [r["chunks_max"] for r in runs if r["chunks_max"] is not None]
    out["chunks"] = f"{min(mins)}-{max(maxs)}" if mins else "—"
    return out


def print_scenario(scenario: Scenario, rounds: int, by_target: dict[str, list[dict]]) -> None:
    unit = "streams/s" if scenario.streaming else "req/s"
    print(f"\n{scenario.key}. {scenario.title} — {scenario.requests} per run, {rounds} round(s)")
    header = f"  {'target':<8} {unit:>9} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8}"
    if scenario.streaming:
        header += f" {'TTFT p50':>8} {'TTFT p99':>8} {'+TTFT':>7}"
    header += f" {'CPU ms/req':>10} {'upstr ms':>8} {'RSS MB before→after':>20} {'failed':>6}"
    if scenario.streaming:
        header += f" {'chunks':>7} {'dropped':>7} {'wrong':>5}"
    print(header)
    summaries = {}
    for target, runs in by_target.items():
        s = summarize(runs, scenario)
        summaries[target] = s
        rss = f"{fmt(s['rss_before'], 0)} → {fmt(s['rss_after'], 0)}"
        line = f"  {target:<8} {fmt(s['rps']):>9} {fmt(s['p50']):>8} {fmt(s['p99']):>8}"
        line += f" {fmt(s['added']):>8}"
        if scenario.streaming:
            line += f" {fmt(s['ttft50']):>8} {fmt(s['ttft99']):>8} {fmt(s['added_ttft']):>7}"
        line += f" {fmt(s['cpu'], 2):>10} {fmt(s['upstream_cpu'], 2):>8} {rss:>20}"
        line += f" {s['failed']:>6}"
        if scenario.streaming:
            line += f" {s['chunks']:>7} {s['dropped']:>7} {s['wrong']:>5}"
        print(line)
    peaks = [r["peaks"] for r in by_target.get("ours", []) if "peaks" in r]
    if peaks:
        print(
            f"  ours, peak connections (max over rounds): PostgreSQL "
            f"{max(p['pg'] for p in peaks)}, Redis clients {max(p['redis'] for p in peaks)}"
        )
    if "LiteLLM" in summaries and "ours" in summaries:
        o, t = summaries["ours"], summaries["LiteLLM"]
        print(
            f"  ours/LiteLLM: {unit} {ratio(o['rps'], t['rps'])}, "
            f"added p50 {ratio(o['added'], t['added'])}, "
            + (
                f"added TTFT {ratio(o['added_ttft'], t['added_ttft'])}, "
                if scenario.streaming
                else ""
            )
            + f"CPU/request {ratio(o['cpu'], t['cpu'])}"
        )


# --- the exactness check -----------------------------------------------------------------------


def exactness(profile: Profile, ours: Ours, counted: dict[str, Any], tmp: Path) -> None:
    time.sleep(2)  # anything settling after its response was sent
    spec = {"organization_id": ours.seed["organization_id"]}
    command = [str(PYTHON), "benchmarks/_gw_django.py", "check", json.dumps(spec)]
    check = result_of(run_checked(command, profile.env, tmp / "check.log", "the check"))

    def verdict(same: bool) -> str:
        return "OK" if same else "MISMATCH"

    ok_rows = check["by_status"].get("ok", 0)
    print(f"\nExactness ({profile.name}, ours, warm-ups included):")
    print(
        f"  ledger rows {check['rows']:,} (by status {check['by_status']}; "
        f"key {check['by_caller']['api_key']:,}, user {check['by_caller']['user']:,})"
    )
    # A reply the client gave up waiting for is still finished, saved and billed by the server.
    gave_up = counted["statuses"].get("TimeoutError", 0)
    same = ok_rows == counted["ok"] or (gave_up and ok_rows == counted["ok"] + gave_up)
    print(
        f"  successful requests counted by the load generator: {counted['ok']:,} "
        f"(failed {counted['failed']:,}) vs ledger rows with status ok {ok_rows:,}  "
        f"{verdict(bool(same))}"
        + (
            f" ({gave_up:,} the client gave up on and the server finished)"
            if gave_up and ok_rows == counted["ok"] + gave_up
            else ""
        )
    )
    if counted["failed"]:
        print(
            f"  failed requests (no ledger row when refused before the call): "
            f"{counted['failed']:,} {dict(counted['statuses'])}; ledger rows not ok: "
            f"{check['rows'] - ok_rows:,}"
        )
    print(f"  holds left: {check['holds']}  {verdict(check['holds'] == 0)}")
    for budget in check["budgets"]:
        spent = Decimal(budget["spent"]) if budget["spent"] is not None else None
        ledger = Decimal(budget["ledger"])
        reserved = Decimal(budget["reserved"] or 0)
        print(
            f"  {budget['budget']:<16} period spent {spent} vs ledger {ledger}, reserved "
            f"{reserved.normalize() if reserved else 0}  "
            # No period row: nothing was ever charged to it (a member budget when no chat
            # scenario ran), which matches a ledger of 0.
            f"{verdict((spent == ledger or (spent is None and ledger == 0)) and reserved == 0)}"
        )


# --- main --------------------------------------------------------------------------------------


def git_state() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    changed = [line for line in git("status", "--porcelain").splitlines() if line]
    mine = [line for line in changed if "benchmarks/" in line]
    others = len(changed) - len(mine)
    return f"commit {git('rev-parse', '--short', 'HEAD')}" + (
        f" + uncommitted changes in {others} file(s)" if others else ""
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, fewer requests")
    parser.add_argument("--profile", choices=["embedded", "production", "both"], default="embedded")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; --quick: 1)")
    parser.add_argument(
        "--debug-off", action="store_true", help="embedded profile with DEBUG=0 (default: on)"
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep the logs and SQLite file")
    parser.add_argument(
        "--only",
        metavar="KEYS",
        help="comma-separated scenario keys to run (a, b, c, d, e1, e100, e500); default all",
    )
    args = parser.parse_args()
    if args.only:
        known = {s.key for s in scenarios(quick=False)}
        unknown = set(args.only.split(",")) - known
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the finally blocks clean up, as on Ctrl-C


def main() -> None:
    args = parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    # Ctrl-C too, explicitly: a shell's background job starts with SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    started = time.monotonic()
    try:
        run_all(args, rounds, tmp)
    except KeyboardInterrupt:
        print("\nInterrupted: cleaning up.", file=sys.stderr)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        CLEANUP.run()
        if args.keep_temp:
            print(f"Logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"\nTotal time {time.monotonic() - started:.0f} s")


def run_all(args: argparse.Namespace, rounds: int, tmp: Path) -> None:
    plan = scenarios(args.quick)
    if args.only:
        plan = [s for s in plan if s.key in args.only.split(",")]
    upstream, upstream_base_url = start_upstream(tmp)
    litellm, callbacks = start_litellm(tmp, upstream_base_url)
    profiles = ["embedded", "production"] if args.profile == "both" else [args.profile]

    load = os.getloadavg()
    print(f"Gateway benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load average {load[0]:.2f} at start, {rounds} round(s)"
          f"{' (quick)' if args.quick else ''}")  # fmt: skip
    print(f"  app: {git_state()}")
    print(f"  fake upstream: {upstream_base_url} (manage.py run_fake_upstream)")
    print(
        f"  LiteLLM {LITELLM_VERSION}: proxy, 1 worker (uvicorn + uvloop), no database, a "
        "master key, models openai/<name> with prices; its default hooks: " + callbacks
    )

    for name in profiles:
        profile = (
            embedded_profile(tmp, args.debug_off) if name == "embedded" else production_profile(tmp)
        )
        counts = conversations_needed(plan, rounds)
        ours = start_ours(tmp, profile, upstream_base_url, counts)
        seed = ours.seed
        print(f"\n=== {name} profile — {profile.description}")
        print("  ours: daphne config.asgi:application, one process; per call: API key, rate limits "
              "(" + seed["rate_limits"] + "), budget holds and settlement on "
              + ", ".join(seed["budgets"]) + ", one ledger row")  # fmt: skip
        print(f"  socket log-in: {ours.login}")
        run_profile(plan, rounds, tmp, upstream, litellm, ours, profile)
        stop_process(ours.server.process)


def run_profile(
    plan: list[Scenario],
    rounds: int,
    tmp: Path,
    upstream: Server,
    litellm: Server,
    ours: Ours,
    profile: Profile,
) -> None:
    seed = ours.seed
    expected = {"echo": f"Echo: {PROMPT}", "stream": seed["expected_stream"]}
    pools = {"rest": iter(seed["rest_conversations"]), "ws": iter(seed["ws_conversations"])}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {s.key: {} for s in plan}
    counted: dict[str, Any] = {"ok": 0, "failed": 0, "statuses": Counter()}
    for round_number in range(1, rounds + 1):
        load = os.getloadavg()
        print(f"\n-- round {round_number}/{rounds} (load average {load[0]:.2f})", flush=True)
        for scenario in plan:
            gateways = [litellm, ours.server] if scenario.litellm else [ours.server]
            if round_number % 2 == 0:
                gateways.reverse()
            direct: dict[str, Any] | None = None
            for target in [upstream, *gateways]:
                spec = load_spec(
                    scenario, target, upstream=upstream, expected=expected, ours=ours, pools=pools
                )
                sampler = profile.sampler if target.name == "ours" else None
                with sampler or contextlib.nullcontext():
                    result = run_load(spec, tmp)
                f = figures(result)
                if sampler is not None:
                    f["peaks"] = dict(sampler.peak)
                if target.name == "direct":
                    direct = f
                elif direct is not None:
                    f["added"] = (
                        f["p50"] - direct["p50"] if None not in (f["p50"], direct["p50"]) else None
                    )
                    f["added_ttft"] = (
                        f["ttft50"] - direct["ttft50"]
                        if None not in (f["ttft50"], direct["ttft50"])
                        else None
                    )
                if target.name == "ours":
                    for phase in ("warm", "measured"):
                        counted["ok"] += result[phase]["ok"]
                        counted["failed"] += result[phase]["failed"]
                        counted["statuses"].update(result[phase]["statuses"])
                results[scenario.key].setdefault(target.name, []).append(f)
                print(
                    f"  {scenario.key:<5} {target.name:<8} {f['rps']:9.1f}/s  "
                    f"p50 {fmt(f['p50']):>8} ms  p99 {fmt(f['p99']):>8} ms  "
                    + (f"TTFT p50 {fmt(f['ttft50'])} ms  " if scenario.streaming else "")
                    + f"CPU {f['cpu']:.2f} ms/req (client {f['client_cpu']:.2f})  "
                    + f"failed {f['failed']}"
                    + (f" {f['statuses']}" if f["failed"] else "")
                    + (f"  wrong text {f['wrong']}" if f["wrong"] else "")
                    + (
                        f"  peak connections: PostgreSQL {f['peaks']['pg']}, Redis clients "
                        f"{f['peaks']['redis']}"
                        if "peaks" in f
                        else ""
                    )
                    + "".join(f"\n        {sample}" for sample in f["samples"][:2]),
                    flush=True,
                )
    print(f"\n  load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"\n=== {profile.name}: medians over {rounds} round(s); +p50 = p50 - direct p50 of the "
          "same round; CPU = the server's process tree, measured requests only")  # fmt: skip
    for scenario in plan:
        print_scenario(scenario, rounds, results[scenario.key])
    exactness(profile, ours, counted, tmp)


if __name__ == "__main__":
    main()
