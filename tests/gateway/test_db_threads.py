"""The gateway's database work on long-lived threads (core.db).

Against Daphne (``live_daphne`` runs it with ``DB_THREADS=1``, as on the embedded profile):
many calls at once through the official SDK, with an organization, a project and a key budget
all on, each answer and each budget's counters agree with the ledger. Then the threads
themselves: the work runs on them, and each keeps its connection until that fails.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
from django.db import connection, connections
from django.test import override_settings

from accounts import api_keys
from accounts.models import ApiKey
from billing.models import Budget, BudgetPeriod, Hold, ModelPrice, UsageRecord
from billing.services import ledger_spend, period_bounds
from core.db import db_sync_to_async
from tests.chat.conftest import make_key, serve

CALLS = 24


@pytest.fixture
def budgeted_key(alice, org_a, project_a, fake_upstream) -> str:
    """A chat key of project A's priced fake-gpt, under an organization, a project and a key
    budget, each with room for every call."""
    serve(project_a, fake_upstream)
    ModelPrice.objects.create(
        model="fake-gpt*",
        input_per_million=Decimal("1000"),
        cached_input_per_million=Decimal("500"),
        output_per_million=Decimal("2000"),
        effective_from="2024-01-01",
    )
    key = make_key(alice, org_a, project_a)
    api_key = ApiKey.objects.get(digest=api_keys.digest_of(key))
    for scope, fields in (
        (Budget.Scope.ORGANIZATION, {}),
        (Budget.Scope.PROJECT, {"project": project_a}),
        (Budget.Scope.API_KEY, {"project": project_a, "api_key": api_key}),
    ):
        Budget.objects.create(organization=org_a, scope=scope, limit_usd=Decimal(1000), **fields)
    return key


def messages(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"call number {n}"}]


async def at_once(base_url: str, key: str, *, stream: bool) -> list[Any]:
    """``CALLS`` calls through the SDK, all started together; each one's text."""
    async with openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=60
    ) as client:

        async def one(n: int) -> str:
            if not stream:
                completion = await client.chat.completions.create(
                    model="fake-gpt", messages=messages(n), max_tokens=16
                )
                return completion.choices[0].message.content or ""
            chunks = await client.chat.completions.create(
                model="fake-gpt",
                messages=messages(n),
                max_tokens=16,
                stream=True,
                stream_options={"include_usage": True},
            )
            text = [c.choices[0].delta.content or "" async for c in chunks if c.choices]
            return "".join(text)

        return await asyncio.gather(*(one(n) for n in range(CALLS)))


def check_the_books() -> None:
    records = list(UsageRecord.objects.all())
    assert len(records) == CALLS
    assert {r.status for r in records} == {"ok"}
    assert not Hold.objects.exists()
    total = sum((r.cost for r in records), Decimal(0))
    assert total > 0
    budgets = list(Budget.objects.order_by("id"))
    assert [b.scope for b in budgets] == ["organization", "project", "api_key"]
    for budget in budgets:
        (period,) = BudgetPeriod.objects.filter(budget=budget)
        _, end = period_bounds(budget.period, period.start)
        assert period.reserved == 0
        assert period.spent == ledger_spend(budget, period.start, end)
        assert period.spent == total  # every call was under every one of them


@pytest.mark.django_db(transaction=True)
def test_concurrent_calls_settle_every_budget_to_the_ledger(live_daphne, budgeted_key):
    answers = asyncio.run(at_once(live_daphne, budgeted_key, stream=False))

    assert answers == [f"Echo: call number {n}" for n in range(CALLS)]
    check_the_books()


@pytest.mark.django_db(transaction=True)
def test_concurrent_streams_settle_every_budget_to_the_ledger(live_daphne, budgeted_key):
    answers = asyncio.run(at_once(live_daphne, budgeted_key, stream=True))

    assert answers == [f"Echo: call number {n}" for n in range(CALLS)]
    check_the_books()


# --- the threads ---------------------------------------------------------------------------


def on_db_thread(fn):
    """Run ``fn`` through ``db_sync_to_async`` with one database thread, from a loop of its
    own, as the gateway's views do."""
    with override_settings(DB_THREADS=1):
        run = db_sync_to_async(fn)
    return asyncio.run(run())


def where() -> tuple[str, Any]:
    """The thread this runs on, and its open database connection."""
    connection.ensure_connection()
    return threading.current_thread().name, connection.connection


@pytest.fixture
def closed_afterwards() -> Iterator[None]:
    """The database thread outlives the test: its connection is closed when the test ends,
    so that nothing holds the test database open meanwhile."""
    yield
    on_db_thread(connections.close_all)


@pytest.mark.django_db
def test_the_work_runs_on_a_db_thread_which_keeps_its_connection(closed_afterwards):
    connection.ensure_connection()

    first_thread, first_connection = on_db_thread(where)
    second_thread, second_connection = on_db_thread(where)

    assert first_thread.startswith("db")
    assert first_thread != threading.current_thread().name
    assert second_thread == first_thread
    assert second_connection is first_connection
    assert first_connection is not connection.connection  # not the caller's


@pytest.mark.django_db
def test_a_connection_with_errors_that_still_works_is_kept(closed_afterwards):
    def had_errors() -> Any:
        connection.ensure_connection()
        connection.errors_occurred = True
        return connection.connection

    old = on_db_thread(had_errors)
    _, now = on_db_thread(where)

    assert now is old
    assert on_db_thread(lambda: connection.errors_occurred) is False


@pytest.mark.django_db
def test_a_connection_with_errors_that_no_longer_works_is_replaced(closed_afterwards):
    def broke() -> Any:
        connection.ensure_connection()
        connection.errors_occurred = True
        # What a server gone away looks like to Django (SQLite's connections never go bad).
        connection.is_usable = lambda: False
        return connection.connection

    def repaired() -> None:
        del connection.is_usable

    old = on_db_thread(broke)
    try:
        _, new = on_db_thread(where)
    finally:
        on_db_thread(repaired)

    assert new is not old
    assert on_db_thread(lambda: connection.errors_occurred) is False
