"""Production's cache (core.cache.SharedRedisCache): one Redis client per process, whatever
context or thread asks, so a request no longer opens connections of its own."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from django.core.cache import CacheHandler

pytestmark = pytest.mark.redis


@pytest.fixture
def handler() -> CacheHandler:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail("REDIS_URL is not set: `make test` starts Redis with scripts/redis.sh")
    return CacheHandler({"default": {"BACKEND": "core.cache.SharedRedisCache", "LOCATION": url}})


def test_every_context_and_thread_shares_one_client_and_its_connections(handler):
    async def in_a_task() -> object:
        return handler["default"]  # a new context: Django makes a new cache object here

    objects = [asyncio.run(in_a_task()) for _ in range(3)]
    from_thread: list[object] = []
    thread = threading.Thread(target=lambda: from_thread.append(handler["default"]))
    thread.start()
    thread.join()
    objects += from_thread

    assert len({id(cache) for cache in objects}) > 1  # Django's objects do differ…
    clients = {id(cache._cache) for cache in objects}
    assert len(clients) == 1  # …and share one client

    key = f"shared-cache-test:{os.getpid()}"
    objects[0].set(key, 41, timeout=30)
    assert objects[-1].incr(key) == 42
    pool = objects[0]._cache._pools[0]
    before = len(pool._available_connections) + len(pool._in_use_connections)
    for cache in objects:
        cache.get(key)
    assert len(pool._available_connections) + len(pool._in_use_connections) == before
    objects[0].delete(key)
