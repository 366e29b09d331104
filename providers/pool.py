"""Long-lived providers: one per connection and event loop, its HTTP connection pool reused.

Building an ``OpenAIProvider`` builds an SDK client, whose HTTP transport loads the certificate
bundle into a new SSL context (about 20 ms of CPU) and starts with no open connection to the
upstream. A process serves every call of a connection from one provider instead:
``leased_provider(spec)`` hands it out for the duration of one call.

The provider is keyed by the connection's identity and by everything it was built from (base
URL, key, organization, project, timeout, retries): when an admin changes the connection, the
next call builds a new one, and the old one is closed once its last call has ended. Providers
are per event loop, because an HTTP client belongs to the loop it was first used on (Daphne
has one for the life of the process; each Celery task's ``asyncio.run`` has its own, which is
why sync code builds a provider of its own rather than leasing one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass

from .llm.base import Provider
from .specs import ProviderSpec, build_provider

logger = logging.getLogger(__name__)

# Connections whose provider a process keeps open at once; the least recently used one with no
# call in flight is closed beyond that.
MAX_PROVIDERS = 128


@dataclass
class _Entry:
    provider: Provider
    fingerprint: Hashable
    leases: int = 0
    retired: bool = False  # replaced or evicted: closed when its last lease ends


def _identity(spec: ProviderSpec) -> Hashable:
    """What a provider serves: a stored connection, else its settings (a spec built without
    one, e.g. the built-in model)."""
    return ("connection", spec.connection_id) if spec.connection_id else _fingerprint(spec)


def _fingerprint(spec: ProviderSpec) -> Hashable:
    """Everything a provider is built from (the model, window and caps are per call)."""
    return (
        spec.kind,
        spec.base_url,
        spec.api_key,
        spec.organization,
        spec.project,
        spec.timeout,
        spec.max_retries,
    )


class ProviderPool:
    """The providers of one event loop."""

    def __init__(self, *, size: int = MAX_PROVIDERS) -> None:
        self._size = size
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def lease(self, spec: ProviderSpec) -> AsyncIterator[Provider]:
        entry = self._acquire(spec)
        try:
            yield entry.provider
        finally:
            entry.leases -= 1
            if entry.retired and entry.leases == 0:
                self._close_soon(entry)

    def _acquire(self, spec: ProviderSpec) -> _Entry:
        identity, fingerprint = _identity(spec), _fingerprint(spec)
        entry = self._entries.get(identity)
        if entry is not None and entry.fingerprint != fingerprint:
            self._retire(identity)  # the connection changed: its next calls use a new one
            entry = None
        if entry is None:
            entry = self._entries[identity] = _Entry(build_provider(spec), fingerprint)
        self._entries.move_to_end(identity)
        entry.leases += 1  # before evicting: a provider in use is never evicted
        self._evict()
        return entry

    def _retire(self, identity: Hashable) -> None:
        entry = self._entries.pop(identity)
        entry.retired = True
        if entry.leases == 0:
            self._close_soon(entry)

    def _evict(self) -> None:
        idle = [key for key, entry in self._entries.items() if entry.leases == 0]
        for identity in idle[: max(len(self._entries) - self._size, 0)]:
            self._retire(identity)

    def _close_soon(self, entry: _Entry) -> None:
        task = asyncio.get_running_loop().create_task(self._close(entry.provider))
        self._closing.add(task)  # a reference until it is done, so it is not collected
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(provider: Provider) -> None:
        try:
            await provider.aclose()
        except Exception:  # a connection that fails to close is no reason to fail a call
            logger.warning("closing a provider failed", exc_info=True)

    async def aclose(self) -> None:
        """Close every provider (a test's loop that ends; a process that shuts down)."""
        for identity in list(self._entries):
            self._retire(identity)
        await asyncio.gather(*self._closing, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._entries)


_POOL_ATTRIBUTE = "_llm_gateway_provider_pool"


def provider_pool() -> ProviderPool:
    """The running event loop's pool.

    Kept on the loop itself, not in a registry: its providers' connections refer to the loop,
    so a registry entry would keep a finished loop (``asyncio.run``, ``async_to_sync``) and its
    open connections alive for good; on the loop, they are garbage together."""
    loop = asyncio.get_running_loop()
    pool: ProviderPool | None = getattr(loop, _POOL_ATTRIBUTE, None)
    if pool is None:
        pool = ProviderPool()
        setattr(loop, _POOL_ATTRIBUTE, pool)
    return pool


def leased_provider(spec: ProviderSpec) -> contextlib.AbstractAsyncContextManager[Provider]:
    """``async with leased_provider(spec) as provider:`` — the connection's long-lived provider
    for one call, on the running loop."""
    return provider_pool().lease(spec)
