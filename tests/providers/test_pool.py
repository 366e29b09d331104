"""The provider pool (providers.pool): one long-lived provider per connection and event loop.

The pool's bookkeeping (which provider a call gets, when one is closed) is tested with a tiny
double of our ``Provider`` protocol that counts its closes; the sharing of one provider and one
upstream connection, and a changed connection's new key, with the real ``OpenAIProvider``
against real HTTP servers; the gateway end to end with the official SDK against Daphne.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from providers import pool as pool_module
from providers.llm.base import ChatRequest
from providers.llm.fake_upstream import BAD_KEY
from providers.llm.openai_provider import OpenAIProvider
from providers.models import ProviderConnection
from providers.pool import ProviderPool, leased_provider, provider_pool
from providers.services import connection_update
from providers.specs import ProviderSpec
from tests.chat.conftest import FAKE_KEY, make_key, serve
from tests.conftest import membership

HELLO = [{"role": "user", "content": "hello pool"}]
REQUEST = ChatRequest(model="fake-gpt", messages=HELLO)


def spec(connection_id: int | None = 1, **changes: Any) -> ProviderSpec:
    base = ProviderSpec(
        kind=ProviderConnection.Kind.COMPATIBLE,
        model="fake-gpt",
        context_window=8192,
        base_url="http://127.0.0.1:9/v1",
        api_key="sk-one",
        timeout=5.0,
        max_retries=0,
        connection_id=connection_id,
    )
    return replace(base, **changes)


async def pending_closes(pool: ProviderPool) -> None:
    """Run the closes the pool has scheduled to their end: what is not closed after this was
    never asked to close."""
    await asyncio.gather(*list(pool._closing))


# --- a Provider double: the pool's bookkeeping ---------------------------------------------


@dataclass(eq=False)
class CountingProvider:
    """Stands for a provider built from ``spec``; counts how often it is closed."""

    spec: ProviderSpec
    closes: int = 0

    async def aclose(self) -> None:
        self.closes += 1


@pytest.fixture
def doubles(monkeypatch) -> list[CountingProvider]:
    """Every provider the pool builds is a CountingProvider, in the order built."""
    built: list[CountingProvider] = []

    def build(spec: ProviderSpec) -> CountingProvider:
        built.append(CountingProvider(spec))
        return built[-1]

    monkeypatch.setattr(pool_module, "build_provider", build)
    return built


async def test_calls_of_one_connection_get_one_provider(doubles):
    pool = ProviderPool()

    async with pool.lease(spec()) as first, pool.lease(spec()) as overlapping:
        pass
    async with pool.lease(spec()) as later:
        pass
    await pending_closes(pool)

    assert first is overlapping is later
    assert len(doubles) == 1
    assert first.closes == 0
    assert len(pool) == 1


async def test_what_is_per_call_does_not_build_a_new_provider(doubles):
    pool = ProviderPool()

    async with pool.lease(spec()) as first:
        pass
    async with pool.lease(
        spec(model="fake-gpt-mini", context_window=100, max_output_tokens=7)
    ) as second:
        pass

    assert second is first
    assert len(doubles) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"base_url": "http://127.0.0.1:10/v1"},
        {"api_key": "sk-two"},
        {"timeout": 9.0},
        {"max_retries": 2},
        {"organization": "org-x"},
        {"project": "proj-x"},
    ],
    ids=lambda change: next(iter(change)),
)
async def test_a_changed_connection_gets_a_new_provider_and_the_old_one_is_closed(doubles, change):
    pool = ProviderPool()
    async with pool.lease(spec()) as old:
        pass

    async with pool.lease(spec(**change)) as new:
        pass
    await pending_closes(pool)

    assert new is not old
    assert new.spec == spec(**change)
    assert old.closes == 1
    assert new.closes == 0
    assert len(pool) == 1


async def test_the_old_provider_is_closed_when_its_last_lease_ends_not_before(doubles):
    pool = ProviderPool()
    first = pool.lease(spec())
    second = pool.lease(spec())
    old = await first.__aenter__()
    assert await second.__aenter__() is old

    async with pool.lease(spec(api_key="sk-two")) as new:  # changed while two calls go on
        await pending_closes(pool)
        assert old.closes == 0
        await first.__aexit__(None, None, None)
        await pending_closes(pool)
        assert old.closes == 0  # one call still uses it
        await second.__aexit__(None, None, None)
        await pending_closes(pool)
        assert old.closes == 1

    await pending_closes(pool)
    assert new.closes == 0
    assert old.closes == 1  # once, however many leases it had


async def test_beyond_its_size_the_least_recently_used_idle_provider_is_closed(doubles):
    pool = ProviderPool(size=2)
    async with pool.lease(spec(1)) as one:
        pass
    async with pool.lease(spec(2)) as two:
        pass
    async with pool.lease(spec(1)):  # connection 1 used again: 2 is now the oldest
        pass

    async with pool.lease(spec(3)) as three:
        pass
    await pending_closes(pool)

    assert (one.closes, two.closes, three.closes) == (0, 1, 0)
    assert len(pool) == 2
    async with pool.lease(spec(2)) as two_again:  # evicted: built again when needed
        pass
    assert two_again is not two
    assert len(doubles) == 4


async def test_a_provider_in_use_is_never_evicted(doubles):
    pool = ProviderPool(size=2)
    async with pool.lease(spec(1)) as busy:  # the least recently used, but in use
        async with pool.lease(spec(2)) as idle:
            pass

        async with pool.lease(spec(3)) as three:
            pass
        await pending_closes(pool)

        assert busy.closes == 0
        assert idle.closes == 1
        assert three.closes == 0
        async with pool.lease(spec(1)) as again:
            assert again is busy


async def test_a_pool_full_of_providers_in_use_still_serves_a_new_connection(doubles):
    pool = ProviderPool(size=2)
    async with pool.lease(spec(1)) as one, pool.lease(spec(2)) as two:
        async with pool.lease(spec(3)) as three:  # nothing idle to evict: the pool grows
            await pending_closes(pool)
            assert three.spec == spec(3)
            assert three.closes == 0  # not closed under the call that uses it
        await pending_closes(pool)
        assert (one.closes, two.closes) == (0, 0)


async def test_settings_without_a_connection_share_a_provider_by_what_they_say(doubles):
    pool = ProviderPool()
    async with pool.lease(spec(None)) as first:
        pass
    async with pool.lease(spec(None)) as same:
        pass
    async with pool.lease(spec(None, api_key="sk-two")) as other:
        pass
    await pending_closes(pool)

    assert same is first
    assert other is not first
    assert first.closes == 0  # not a change of one connection: both stay
    assert len(pool) == 2


async def test_a_provider_that_fails_to_close_does_not_fail_the_call(monkeypatch):
    class FailingToClose(CountingProvider):
        async def aclose(self) -> None:
            await super().aclose()
            raise OSError("the connection was already gone")

    built: list[FailingToClose] = []

    def build(spec: ProviderSpec) -> FailingToClose:
        built.append(FailingToClose(spec))
        return built[-1]

    monkeypatch.setattr(pool_module, "build_provider", build)
    pool = ProviderPool()
    async with pool.lease(spec()):
        pass

    async with pool.lease(spec(api_key="sk-two")):  # retires the first one
        pass
    await pool.aclose()

    assert [p.closes for p in built] == [1, 1]


async def test_closing_the_pool_closes_every_provider_once_its_calls_end(doubles):
    pool = ProviderPool()
    async with pool.lease(spec(1)) as idle:
        pass
    lease = pool.lease(spec(2))
    busy = await lease.__aenter__()

    await pool.aclose()
    assert idle.closes == 1
    assert busy.closes == 0  # its call goes on
    await lease.__aexit__(None, None, None)
    await pending_closes(pool)

    assert busy.closes == 1
    assert len(pool) == 0


async def test_each_event_loop_has_its_own_pool_and_providers(doubles):
    async def lease_here() -> tuple[ProviderPool, Any]:
        async with leased_provider(spec()) as provider:
            return provider_pool(), provider

    here_pool, here = await lease_here()
    also_here_pool, also_here = await lease_here()
    # Another loop, in another thread (as a Celery task's asyncio.run would have).
    there_pool, there = await asyncio.to_thread(lambda: asyncio.run(lease_here()))

    assert also_here_pool is here_pool
    assert also_here is here
    assert there_pool is not here_pool
    assert there is not here
    assert len(doubles) == 2


# --- the real provider, over real HTTP -----------------------------------------------------

COMPLETION = {
    "id": "chatcmpl-recorded",
    "object": "chat.completion",
    "created": 0,
    "model": "fake-gpt",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "recorded"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.lock = threading.Lock()
        # (the client's port, its Authorization header) of each request: one port per TCP
        # connection the client opened.
        self.seen: list[tuple[int, str | None]] = []


class _RecordingHandler(BaseHTTPRequestHandler):
    """Answers every chat completion with `COMPLETION`, over HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _RecordingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.seen.append((self.client_address[1], self.headers.get("Authorization")))
        data = json.dumps(COMPLETION).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def recorder() -> Iterator[_RecordingServer]:
    server = _RecordingServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def url_of(server: _RecordingServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


async def test_two_calls_of_a_connection_use_one_provider_and_one_tcp_connection(recorder):
    pool = ProviderPool()
    served = spec(base_url=url_of(recorder))
    try:
        async with pool.lease(served) as first:
            one = await first.complete(REQUEST)
        async with pool.lease(served) as second:
            two = await second.complete(REQUEST)
    finally:
        await pool.aclose()

    assert second is first
    assert one.text == two.text == "recorded"
    ports = [port for port, _ in recorder.seen]
    assert len(ports) == 2
    assert ports[0] == ports[1]  # the second call went over the first one's connection


async def test_a_call_on_the_old_provider_goes_on_while_the_new_key_is_used(recorder):
    pool = ProviderPool()
    before = spec(base_url=url_of(recorder), api_key="sk-before")
    after = spec(base_url=url_of(recorder), api_key="sk-after")
    try:
        async with pool.lease(before) as old:
            assert isinstance(old, OpenAIProvider)
            async with pool.lease(after) as new:  # the connection's key changed meanwhile
                await new.complete(REQUEST)
            await old.complete(REQUEST)  # the call that began before the change still works
            await pending_closes(pool)
            assert not old._client.is_closed()
        await pending_closes(pool)

        assert old._client.is_closed()
        assert isinstance(new, OpenAIProvider)
        assert not new._client.is_closed()
        async with pool.lease(after) as again:
            await again.complete(REQUEST)
    finally:
        await pool.aclose()

    assert again is new
    assert [header for _, header in recorder.seen] == [
        "Bearer sk-after",
        "Bearer sk-before",
        "Bearer sk-after",
    ]


def test_a_pool_whose_event_loop_has_ended_is_let_go(recorder):
    """A loop that ends (an ``asyncio.run``; each request of Django's test client runs the
    async gateway view in a loop of its own) must not keep its pool: its providers hold the
    loop, an HTTP client and an open upstream connection, for the life of the process."""

    async def one_call() -> weakref.ref[asyncio.AbstractEventLoop]:
        async with leased_provider(spec(base_url=url_of(recorder))) as provider:
            await provider.complete(REQUEST)
        return weakref.ref(asyncio.get_running_loop())

    loop = asyncio.run(one_call())
    gc.collect()

    assert loop() is None


# --- the gateway, end to end ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_gateway_uses_a_connections_new_key_from_the_next_call(
    live_daphne, fake_upstream, alice, org_a, project_a
):
    serve(project_a, fake_upstream)
    connection = ProviderConnection.objects.get(project=project_a)
    key = make_key(alice, org_a, project_a)
    client = openai.OpenAI(base_url=f"{live_daphne}/v1", api_key=key, max_retries=0, timeout=20)

    def set_key(api_key: str) -> None:
        connection_update(
            actor=membership(alice, org_a),
            connection=connection,
            name=connection.name,
            base_url=connection.base_url,
            api_key=api_key,
            timeout=connection.timeout,
            max_retries=connection.max_retries,
        )

    first = client.chat.completions.create(model="fake-gpt", messages=HELLO)
    set_key(BAD_KEY)  # the fake upstream refuses this one, and only this one
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="fake-gpt", messages=HELLO)
    set_key(FAKE_KEY)
    again = client.chat.completions.create(model="fake-gpt", messages=HELLO)

    assert first.choices[0].message.content == "Echo: hello pool"
    assert refused.value.status_code == 502
    assert refused.value.code == "upstream_auth_failed"
    assert again.choices[0].message.content == "Echo: hello pool"
    assert fake_upstream.request_counts["fake-gpt"] == 3
