"""Settings every upstream call reads — prices, budgets, rate limits, which connection serves a
model — kept in memory between changes instead of read from the database on every call.

Each process keeps its own copy (``cached(key, compute)``). Saving or deleting a model that
feeds it (each app registers its own with ``invalidate_on_change``) empties this process's copy
at once and bumps a version in Django's cache, which every other process checks at most every
``CONFIG_CACHE_CHECK_SECONDS`` (Redis in production: shared by all processes). Entries also
expire after ``CONFIG_CACHE_SECONDS``, the bound for a change no process saw: a queryset
``update()`` that sends no signal (code that does one calls ``invalidate()``), or another
process on the embedded profile, whose local-memory cache is not shared.

Only definitions are kept here, never counters: what a budget has spent and holds is read and
locked in the call's own transaction (``billing.services``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Model
from django.db.models.signals import post_delete, post_save

VERSION_KEY = "config-cache:version"

T = TypeVar("T")

_lock = threading.Lock()
_entries: dict[Hashable, tuple[float, Any]] = {}


class _State:
    version: object = None  # the shared version this process's copy belongs to
    checked_at = 0.0  # time.monotonic() of the last look at it
    generation = 0  # how many times this copy was emptied


_state = _State()


def _sync(now: float) -> None:
    """Forget everything if another process changed a setting since we last looked."""
    if now - _state.checked_at < settings.CONFIG_CACHE_CHECK_SECONDS:
        return
    version = cache.get(VERSION_KEY)
    with _lock:
        if version != _state.version:
            _entries.clear()
            _state.generation += 1
            _state.version = version
        _state.checked_at = now


def cached(
    key: Hashable, compute: Callable[[], T], *, keep: Callable[[T], bool] | None = None
) -> T:
    """The value kept under ``key``, computed (and kept) if there is none or it is too old.
    Callers treat what they get as read-only: it is shared by every thread of the process.
    ``keep``: which computed values to keep (e.g. not a miss for a key anyone can make up:
    entries are few because settings are few, and must stay so)."""
    now = time.monotonic()
    _sync(now)
    entry = _entries.get(key)
    if entry is not None and now - entry[0] < settings.CONFIG_CACHE_SECONDS:
        return entry[1]  # type: ignore[no-any-return]
    generation = _state.generation
    value = compute()
    with _lock:
        # Kept only if nothing changed while it was read: a value read before a change that
        # another thread saw meanwhile would otherwise outlive it.
        if _state.generation == generation and (keep is None or keep(value)):
            _entries[key] = (now, value)
    return value


def clear() -> None:
    """Forget this process's copy (tests start from a clean one)."""
    with _lock:
        _entries.clear()
        _state.generation += 1
        _state.checked_at = 0.0


def invalidate() -> None:
    """A setting changed: forget it here now, and tell the other processes."""
    clear()
    try:
        cache.incr(VERSION_KEY)
    except ValueError:  # no version yet (or it expired): any new value differs from theirs
        cache.set(VERSION_KEY, time.time_ns(), timeout=None)


def _on_change(**kwargs: Any) -> None:
    invalidate()
    # Once more when the transaction commits: a call made meanwhile (in another thread or
    # process) may have read, and kept, the rows from before the change.
    transaction.on_commit(invalidate)


def invalidate_on_change(*models: type[Model]) -> None:
    """Forget the cache whenever a row of one of ``models`` is saved or deleted."""
    for model in models:
        uid = f"config-cache:{model._meta.label}"
        post_save.connect(_on_change, sender=model, dispatch_uid=f"{uid}:save")
        post_delete.connect(_on_change, sender=model, dispatch_uid=f"{uid}:delete")
