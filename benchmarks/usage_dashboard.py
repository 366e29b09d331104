"""The usage dashboard at 1,000,000 ledger rows: how long each read takes.

From the project root:

    .venv/bin/python benchmarks/usage_dashboard.py                  # build a DB, then measure
    .venv/bin/python benchmarks/usage_dashboard.py --db /tmp/u.sqlite3 --keep   # reuse it

It runs on the test settings (``config.settings.test``: SQLite, the profile's own options) but
never on the test database: it migrates a throwaway SQLite file of its own (a temporary one,
deleted at the end, or ``--db PATH``; ``--keep`` keeps it and reuses it next time, skipping the
slow part). Into it goes one organization with 8 members, 5 projects and 6 models, and
``--rows`` (1,000,000) UsageRecord rows spread evenly over the 90 days before today, written
with ``bulk_create`` in batches of 10,000. ``created_at`` is ``auto_now_add``, which
``bulk_create`` would overwrite with the present; the script switches that off on the field
while it writes (the benchmark's data only: the app never does this). ``bulk_create`` adds no
daily rollups (the quota service adds each row's as it settles), so the script rebuilds them
from the ledger afterwards (``billing.rollups.rollups_rebuild``), and again whenever a kept
file's rollups do not add up to its ledger. A file kept by an older version is migrated first:
the migrations fill the rollups of the rows already there.

Then it times, over the last full calendar month (about a third of the rows), each read the
dashboard makes, the whole page through the test client for an owner and for a member, the CSV
export of one day (streamed to nowhere), and closing the month into a statement; ``--runs``
times each (3), printing the median and the slowest. ``--explain`` prints SQLite's query plans.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from unittest.mock import MagicMock, patch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODELS = {  # USD per 1M tokens, input / output
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "gpt-4-turbo": (Decimal("10.00"), Decimal("30.00")),
    "gpt-3.5-turbo": (Decimal("0.50"), Decimal("1.50")),
    "llama-3.1-8b": (Decimal("0.05"), Decimal("0.08")),
    "smollm2-135m-instruct": (Decimal(0), Decimal(0)),
}
DAYS = 90
BATCH = 10_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--db", help="SQLite file to use (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the file; reuse its rows")
    parser.add_argument("--explain", action="store_true", help="print the query plans")
    return parser.parse_args()


def set_up_django(db_path: str, keep: bool) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    import django
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.sqlite3":
        raise SystemExit("This benchmark builds a throwaway SQLite file; use SQLite settings.")
    database["NAME"] = db_path
    database["TEST"] = {"NAME": db_path}
    django.setup()
    from django.db import connection

    # With keepdb, only the migrations the file lacks run; the rollups' fill them from its ledger.
    started = time.perf_counter()
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False, keepdb=keep)
    print(f"Migrated {db_path} in {time.perf_counter() - started:.0f} s", flush=True)


def roll_up(ledger_rows: int) -> None:
    """Rebuild the daily rollups unless they already add up to the ledger's rows."""
    from django.db import connection
    from django.db.models import Sum

    from billing.models import UsageRollup
    from billing.rollups import rollups_rebuild

    if UsageRollup.objects.aggregate(calls=Sum("calls"))["calls"] != ledger_rows:
        print("Rolling the ledger up by day …", flush=True)
        started = time.perf_counter()
        written = rollups_rebuild()
        print(f"  {written:,} rollup rows in {time.perf_counter() - started:.0f} s")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE billing_usagerollup")  # filled after the file's last ANALYZE


def populate(rows: int) -> None:
    from django.db import connection
    from django.utils import timezone

    from accounts.models import Membership, Organization, Project, Role, User
    from billing.models import Budget, BudgetPeriod, UsageRecord
    from billing.services import ledger_spend, period_bounds

    rng = random.Random(20261123)  # noqa: S311 - repeatable data, not secrets
    organization = Organization.objects.create(name="Bench", slug="bench")
    users = [
        User.objects.create_user(email=f"user{n}@bench.example", password=None, name=f"User {n}")
        for n in range(8)
    ]
    for n, user in enumerate(users):
        Membership.objects.create(
            user=user, organization=organization, role=Role.OWNER if n == 0 else Role.MEMBER
        )
    projects = [
        Project.objects.create(organization=organization, name=f"Project {n}", slug=f"p{n}")
        for n in range(5)
    ]
    budgets = [
        Budget.objects.create(organization=organization, scope="organization", limit_usd=50_000),
        *(
            Budget.objects.create(
                organization=organization, scope="project", project=project, limit_usd=10_000
            )
            for project in projects[:2]
        ),
        Budget.objects.create(
            organization=organization,
            scope="member",
            project=projects[0],
            user=users[1],
            limit_usd=1000,
        ),
    ]

    start = datetime.combine(date.today() - timedelta(days=DAYS), datetime.min.time(), UTC)
    step = timedelta(days=DAYS) / rows
    names = list(MODELS)
    field = UsageRecord._meta.get_field("created_at")
    field.auto_now_add = False  # so bulk_create keeps the times given (see the docstring)
    started = time.perf_counter()
    try:
        for offset in range(0, rows, BATCH):
            batch = []
            for n in range(offset, min(offset + BATCH, rows)):
                model = names[rng.randrange(len(names))]
                prompt, completion = rng.randint(20, 4000), rng.randint(1, 1200)
                price_in, price_out = MODELS[model]
                batch.append(
                    UsageRecord(
                        organization=organization,
                        project=projects[rng.randrange(len(projects))],
                        user=users[rng.randrange(len(users))],
                        model=model,
                        prompt_tokens=prompt,
                        completion_tokens=completion,
                        cost=(prompt * price_in + completion * price_out) / 1_000_000,
                        status="ok",
                        latency_ms=rng.randint(80, 9000),
                        created_at=start + step * n,
                    )
                )
            UsageRecord.objects.bulk_create(batch)
            done = offset + len(batch)
            if done % 100_000 == 0:
                print(f"  {done:,} rows, {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        field.auto_now_add = True
    # Every settled call keeps its budgets' counters; here they start from the ledger at once.
    now = timezone.now()
    for budget in budgets:
        start, end = period_bounds(budget.period, now)
        BudgetPeriod.objects.create(
            budget=budget, start=start, spent=ledger_spend(budget, start, end)
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def timed(label: str, action: Callable[[], object], runs: int, results: list) -> None:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    results.append((label, statistics.median(times), max(times)))


def main() -> None:
    args = parse_args()
    temporary = args.db is None
    db_path = args.db or tempfile.mkstemp(prefix="usage-bench-", suffix=".sqlite3")[1]
    set_up_django(db_path, keep=args.keep and not temporary)

    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse
    from django.utils import timezone

    from accounts.models import Membership, Organization
    from billing import selectors
    from billing.models import Statement, UsageRecord
    from billing.selectors import DateRange, UsageScope
    from billing.statement_services import statements_close_month
    from billing.views import _csv_chunks

    existing = UsageRecord.objects.count()
    if existing == 0:
        print(f"Writing {args.rows:,} ledger rows into {db_path} …", flush=True)
        started = time.perf_counter()
        populate(args.rows)
        print(f"  done in {time.perf_counter() - started:.0f} s")
    else:
        print(f"Reusing {existing:,} ledger rows in {db_path}")
    roll_up(UsageRecord.objects.count())

    organization = Organization.objects.get(slug="bench")
    owner = Membership.objects.select_related("user").get(organization=organization, role="owner")
    member = Membership.objects.select_related("user").filter(role="member").first()
    today = timezone.now().date()
    last_month_end = today.replace(day=1) - timedelta(days=1)
    month = DateRange(start=last_month_end.replace(day=1), end=last_month_end)
    one_day = DateRange(start=month.end, end=month.end)
    whole, mine = UsageScope(organization=organization), UsageScope.for_membership(member)
    in_month = selectors.ledger_rows(whole, month).count()
    in_day = selectors.ledger_rows(whole, one_day).count()
    print(
        f"\nRange {month.start} to {month.end}: {in_month:,} rows; "
        f"export day {one_day.start}: {in_day:,} rows; {args.runs} runs each.\n"
    )

    if args.explain:
        with CaptureQueriesContext(connection) as queries:
            selectors.usage_dashboard(scope=whole, date_range=month)
            selectors.usage_dashboard(scope=mine, date_range=month)
            list(selectors.ledger_export_rows(whole, one_day))
        with connection.cursor() as cursor:
            for query in queries:
                if "billing_usage" in query["sql"]:  # the ledger and its rollups
                    cursor.execute("EXPLAIN QUERY PLAN " + query["sql"])
                    print(query["sql"][:90], "…")
                    print("   ", "; ".join(row[3] for row in cursor.fetchall()))
        print()

    def export_day() -> int:
        header = [n for n, _ in selectors.EXPORT_COLUMNS]
        return sum(
            len(c) for c in _csv_chunks(header, selectors.ledger_export_rows(whole, one_day))
        )

    owner_client, member_client = Client(), Client()
    owner_client.force_login(owner.user)
    member_client.force_login(member.user)
    page = reverse("usage_dashboard", args=["bench"])
    query = {"start": month.start.isoformat(), "end": month.end.isoformat()}

    results: list = []
    timed("spend by day (owner)", lambda: selectors.spend_by_day(whole, month), args.runs, results)
    timed("spend by model", lambda: selectors.spend_by_model(whole, month), args.runs, results)
    timed("spend by project", lambda: selectors.spend_by_project(whole, month), args.runs, results)
    timed("spend by member", lambda: selectors.spend_by_member(whole, month), args.runs, results)
    timed(
        "budgets (4, from counters)", lambda: selectors.budget_statuses(whole), args.runs, results
    )

    def budgets_from_ledger() -> None:
        no_counters = MagicMock()
        no_counters.objects.filter.return_value.order_by.return_value = []
        with patch.object(selectors, "BudgetPeriod", no_counters):
            selectors.budget_statuses(whole)

    timed("budgets (4, no counters: ledger)", budgets_from_ledger, args.runs, results)
    timed(
        "all dashboard reads (owner)",
        lambda: selectors.usage_dashboard(scope=whole, date_range=month),
        args.runs,
        results,
    )
    timed(
        "all dashboard reads (member)",
        lambda: selectors.usage_dashboard(scope=mine, date_range=month),
        args.runs,
        results,
    )
    timed("dashboard page, HTTP (owner)", lambda: owner_client.get(page, query), args.runs, results)
    timed(
        "dashboard page, HTTP (member)", lambda: member_client.get(page, query), args.runs, results
    )
    timed(f"CSV export of a day ({in_day:,} rows)", export_day, args.runs, results)

    def close_month() -> None:
        Statement.objects.filter(organization=organization).delete()
        statements_close_month(organization=organization, month_start=month.start)

    timed("close the month into a statement", close_month, args.runs, results)

    with CaptureQueriesContext(connection) as queries:
        response = owner_client.get(page, query)
    if response.status_code != 200:
        raise SystemExit(f"The dashboard answered {response.status_code}.")

    width = max(len(label) for label, _, _ in results)
    print(f"{'read':<{width}}  median ms  slowest ms")
    for label, median, slowest in results:
        print(f"{label:<{width}}  {median:9.0f}  {slowest:10.0f}")
    print(f"\nThe owner's page ran {len(queries)} queries.")

    if temporary or not args.keep:
        connection.close()
        Path(db_path).unlink(missing_ok=True)
        for suffix in ("-wal", "-shm", "-journal"):
            Path(db_path + suffix).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
