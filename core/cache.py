"""Django's Redis cache with one client, and so one connection pool, per process.

Django keeps a cache object per request context (``caches`` is context-local under ASGI), and
each ``RedisCache`` object makes its own client and pool: every request opened new connections
to Redis for its rate-limit counters and left them to the garbage collector
(benchmarks/gateway.py counted 250 Redis clients for one server process). redis-py's pools are
thread-safe, so every cache object of the process shares one client per configuration.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property


class SharedRedisCache(RedisCache):
    _clients: ClassVar[dict[str, RedisCacheClient]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @cached_property
    def _cache(self) -> Any:
        own: Any = self  # RedisCache's attributes, which django-stubs does not declare
        key = repr((own._servers, sorted(own._options.items())))
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = own._class(own._servers, **own._options)
                # Made here, under the lock: the client makes its pools lazily, unguarded.
                for index, server in enumerate(own._servers):
                    client._pools[index] = client._pool_class.from_url(
                        server, **client._pool_options
                    )
                self._clients[key] = client
        return client
