"""Many calls at once against a small budget: the budget holds, and nothing stays reserved.

Every call reserves its worst case before "calling" and settles to a smaller real cost after,
each in its own thread with its own database connection, as concurrent requests would.
"""

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection

from billing import services
from billing.models import BudgetPeriod, Hold, UsageRecord
from billing.services import CallContext, QuotaExceeded

PROMPT, MAX_TOKENS = 100, 200  # worst case at fake_price: 0.1 + 0.4 = $0.50


def hammer(project, user, *, calls: int, workers: int) -> dict[str, int]:
    ctx = CallContext(
        organization_id=project.organization_id,
        project_id=project.pk,
        user_id=user.pk,
        model="fake-gpt",
    )
    outcomes: dict[str, int] = {"ok": 0, "refused": 0, "other refusals": 0}
    lock = threading.Lock()
    start = threading.Barrier(workers, timeout=30)  # a thread that never comes breaks it
    rng = random.Random(7)
    completions = [rng.randint(50, MAX_TOKENS) for _ in range(calls)]

    def one(n: int) -> None:
        try:
            if n < workers:
                start.wait()  # the first wave starts together
            try:
                reservation = services.quota_reserve(
                    context=ctx, prompt_tokens=PROMPT, max_tokens=MAX_TOKENS
                )
            except QuotaExceeded as error:
                kind = "refused" if error.code == "budget_exceeded" else "other refusals"
                with lock:
                    outcomes[kind] += 1
                return
            services.quota_settle(
                reservation=reservation,
                status="ok",
                prompt_tokens=PROMPT,
                completion_tokens=completions[n],
            )
            with lock:
                outcomes["ok"] += 1
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(one, n) for n in range(calls)]:
            future.result()  # re-raise any failure in a worker
    return outcomes


def check_the_books(budget, outcomes: dict[str, int], calls: int) -> None:
    spent = sum((r.cost for r in UsageRecord.objects.all()), Decimal(0))
    period = BudgetPeriod.objects.get(budget=budget)
    assert outcomes["other refusals"] == 0  # every refused call got budget_exceeded
    assert outcomes["ok"] + outcomes["refused"] == calls
    assert outcomes["ok"] == UsageRecord.objects.count()
    assert spent <= budget.limit_usd, f"overspent: {spent} > {budget.limit_usd}"
    assert period.spent == spent
    assert period.reserved == 0
    assert not Hold.objects.exists()
    # It was a real contest: many got through, most were refused.
    assert 15 <= outcomes["ok"] <= 40
    assert outcomes["refused"] >= calls - 40


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_200_concurrent_calls_on_postgres_never_overspend(
    fake_price, make_budget, project_a, alice
):
    from django.db import connection as db

    assert db.vendor == "postgresql"
    budget = make_budget(project_a.organization, limit=10, scope="project", project=project_a)

    outcomes = hammer(project_a, alice, calls=200, workers=32)

    check_the_books(budget, outcomes, 200)


@pytest.mark.django_db(transaction=True)
def test_concurrent_calls_on_sqlite_never_overspend(fake_price, make_budget, project_a, alice):
    budget = make_budget(project_a.organization, limit=10, scope="project", project=project_a)

    outcomes = hammer(project_a, alice, calls=80, workers=8)

    check_the_books(budget, outcomes, 80)
