"""Database work from async code, on a few long-lived threads that keep their connections.

Django runs each ASGI request's sync code on a thread of its own, which opens a database
connection and closes it when the request ends. For the calls that carry traffic (the
gateway's key check, reserve and settle) that costs a connect and a close per request, and on
SQLite every writer queues on the one write lock by sleeping in SQLite's busy handler (1, 2, 5,
… 100 ms at a time), not in order. ``db_sync_to_async(fn)`` runs ``fn`` on a pool of
``DB_THREADS`` threads instead: each keeps its connection between calls, and with one thread
(the embedded profile's setting, for SQLite) writes are queued in order, in Python, and never
wait on the lock for each other.

``DB_THREADS = 0`` means Django's own ``sync_to_async`` (the test settings: a test's
transaction lives on the test's own connection, which other threads cannot see).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial, wraps
from typing import Any, ParamSpec, TypeVar, cast

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_executor: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    with _lock:
        executor = _executor.get(threads)
        if executor is None:
            executor = _executor[threads] = ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="db"
            )
        return executor


def _on_db_thread(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    # The thread's connections stay open between calls (no CONN_MAX_AGE: the thread lives as
    # long as the process); one that failed and is no longer usable is replaced.
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and connection.errors_occurred:
            if not connection.is_usable():
                connection.close()
            connection.errors_occurred = False
    return fn(*args, **kwargs)


def db_sync_to_async(
    fn: Callable[P, R], *, detached: bool = False
) -> Callable[P, Coroutine[Any, Any, R]]:
    """``fn`` as a coroutine function whose body runs on the database threads.

    Without them: on the request's own thread, or, for code that is not on one (``detached``:
    a socket's consumer, a reply's task, a task that outlives its request), through channels'
    ``database_sync_to_async``, which closes stale connections around each call."""
    threads = settings.DB_THREADS
    if not threads:
        wrapped = database_sync_to_async(fn) if detached else sync_to_async(fn)
        return cast(Callable[P, Coroutine[Any, Any, R]], wrapped)

    @wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        call = sync_to_async(
            partial(_on_db_thread, fn), thread_sensitive=False, executor=_pool(threads)
        )
        return await call(*args, **kwargs)

    return run


def db_async(fn: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """``db_sync_to_async`` for code that is not on a request's thread: a socket's consumer,
    a reply's task."""
    return db_sync_to_async(fn, detached=True)
