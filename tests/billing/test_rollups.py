"""The daily usage rollups: always the ledger, summed; what the dashboard reads.

Calls go through the quota service (reserve, settle), as every upstream call does; the figures
are checked against the ledger's rows, summed here or by the dashboard's queries of before the
rollups (``ledger_figures``).
"""

import importlib
import io
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import UTC, date, datetime
from decimal import Decimal
from types import SimpleNamespace
from unittest.mock import patch

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.urls import reverse

from accounts.api_keys import CreatedKey, api_key_create
from accounts.models import Organization, Project, User
from accounts.services import project_delete
from billing import selectors, services
from billing.models import UsageRecord, UsageRollup
from billing.pricing import cost_units_sum, units_to_cost
from billing.rollups import rollup_add, rollups_rebuild
from billing.selectors import DateRange, UsageScope, ledger_rows
from billing.services import CallContext
from tests.conftest import membership
from tests.factories import MembershipFactory, ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db

FREE = "smollm2-135m-instruct"  # no price: every call costs 0
NOVEMBER = DateRange(date(2026, 11, 1), date(2026, 11, 30))


def at(day: int, hour: int = 12, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, second, micro, tzinfo=UTC)


def settle(
    project: Project,
    *,
    when: datetime | None,
    user: User | None = None,
    key: CreatedKey | None = None,
    model: str = "fake-gpt",
    prompt: int = 100,
    cached: int = 0,
    completion: int = 50,
    status: str = UsageRecord.Status.OK,
    estimated: bool = False,
) -> UsageRecord:
    """One call, reserved and settled at ``when`` (the ledger's clock; None: as it is set)."""
    context = CallContext(
        organization_id=project.organization_id,
        project_id=project.pk,
        user_id=user.pk if user else None,
        model=model,
        source=UsageRecord.Source.API if key else UsageRecord.Source.CHAT,
        api_key_id=key.key.pk if key else None,
    )
    clock = patch("django.utils.timezone.now", return_value=when) if when else nullcontext()
    with clock:
        reservation = services.quota_reserve(
            context=context, prompt_tokens=prompt, max_tokens=max(completion, 1)
        )
        return services.quota_settle(
            reservation=reservation,
            status=status,
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=completion,
            estimated=estimated,
        )


# --- what the ledger says ----------------------------------------------------------------------


def rollups() -> dict[tuple, tuple]:
    """Every rollup row: (organization, day, model, project, user, key) -> the sums."""
    return {
        (r.organization_id, r.day, r.model, r.project_id, r.user_id, r.api_key_id): (
            r.calls,
            r.prompt_tokens,
            r.cached_tokens,
            r.completion_tokens,
            r.cost,
        )
        for r in UsageRollup.objects.all()
    }


def ledger_summed() -> dict[tuple, tuple]:
    """The ledger's rows, as stored, summed in Python per group and UTC day."""
    sums: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, 0, Decimal(0)])
    for r in UsageRecord.objects.all():
        group = sums[
            (
                r.organization_id,
                r.created_at.astimezone(UTC).date(),
                r.model,
                r.project_id,
                r.user_id,
                r.api_key_id,
            )
        ]
        for n, value in enumerate(
            (1, r.prompt_tokens, r.cached_tokens, r.completion_tokens, r.cost)
        ):
            group[n] += value
    return {group: tuple(values) for group, values in sums.items()}


def ledger_figures(scope: UsageScope, date_range: DateRange, by: str) -> list[tuple]:
    """A grouping as the dashboard computed it from the ledger's rows, before the rollups:
    (key, calls, prompt, completion, cost) per group, in the dashboard's order."""
    rows = ledger_rows(scope, date_range)
    if by == "day":
        rows = rows.annotate(day=TruncDate("created_at", tzinfo=UTC))
    grouped = rows.values(by).annotate(
        calls=Count("id"),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        units=cost_units_sum(),
    )
    order = ["day"] if by == "day" else ["-units", by]
    return [
        (row[by], row["calls"], row["prompt"] or 0, row["completion"] or 0,
         str(units_to_cost(row["units"])))
        for row in grouped.order_by(*order)
    ]  # fmt: skip


def figures(groups: list[selectors.Spend]) -> list[tuple]:
    return [
        (s.key, s.calls, s.prompt_tokens, s.completion_tokens, str(s.cost))
        for s in groups
        if s.calls  # spend_by_day adds the days without calls
    ]


# --- the data ----------------------------------------------------------------------------------


@pytest.fixture
def project_a2(org_a) -> Project:
    return ProjectFactory(organization=org_a, name="Support bot", slug="support-bot")


@pytest.fixture
def dave(org_a) -> User:
    """A member of org A whose calls are all free."""
    user = UserFactory(email="dave@example.com", name="Dave")
    MembershipFactory(user=user, organization=org_a)
    return user


@pytest.fixture
def bot_key(alice, project_a) -> CreatedKey:
    return api_key_create(
        actor=membership(alice, project_a.organization), project=project_a, name="bot",
        scopes=["chat"],
    )  # fmt: skip


@pytest.fixture
def mix(fake_price, project_a, project_a2, project_b, alice, bob, charlie, dave, bot_key):
    """November in two organizations: projects, members, a key, priced and free models, days
    and their edges, failed calls (cost 0), estimated and cached ones, repeats of one group."""
    settle(project_a, user=alice, when=at(1, 0, 0, 0), prompt=1000, completion=200)
    settle(project_a, user=alice, when=at(1, 9), prompt=1000, completion=200)  # same group
    settle(project_a, user=alice, when=at(1, 23, 59, 59, 999999), cached=40, completion=7)
    settle(project_a, user=alice, when=at(2, 0, 0, 0), model="fake-gpt-mini", completion=3)
    settle(project_a, user=bob, when=at(3, 15), prompt=300, completion=90)
    settle(project_a, user=bob, when=at(3, 16), prompt=0, completion=0, status="error")
    settle(project_a2, user=bob, when=at(3, 16), model="fake-gpt-mini", prompt=7000)
    settle(project_a2, user=alice, when=at(3, 17), estimated=True, status="incomplete")
    settle(project_a, user=dave, when=at(5), model=FREE, prompt=64, completion=32)
    settle(project_a2, user=dave, when=at(5, 13), model=FREE, prompt=8, completion=8)
    settle(project_a, key=bot_key, when=at(5), prompt=12, completion=34)
    settle(project_a, key=bot_key, when=at(5, 20), prompt=12, completion=34)
    settle(project_a, key=bot_key, when=at(6), model=FREE, prompt=5, completion=5)
    settle(project_a, user=dave, when=at(6, 1), model=FREE, prompt=5, completion=5)
    settle(project_a, key=bot_key, when=at(7), status="stopped", estimated=True, completion=0)
    settle(project_a, user=alice, when=at(30, 23, 59, 59, 999999), prompt=10, completion=1)
    settle(project_a, user=alice, when=datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC))
    settle(project_a, user=bob, when=datetime(2026, 12, 1, tzinfo=UTC))
    settle(project_b, user=charlie, when=at(1, 9), prompt=5000, completion=1000)
    settle(project_b, user=charlie, when=at(3, 16), model=FREE)
    assert UsageRecord.objects.filter(cost=0).count() == 6  # a failed call and free ones


# --- the tests ---------------------------------------------------------------------------------


def test_it_keeps_the_rollups_equal_to_the_ledger(mix):
    assert rollups() == ledger_summed()
    assert UsageRollup.objects.count() < UsageRecord.objects.count()  # the repeats were added


def test_it_rolls_a_day_up_by_its_utc_date(mix, alice, project_a):
    first = UsageRollup.objects.get(
        organization=project_a.organization, day=date(2026, 11, 1), model="fake-gpt",
        project=project_a, user=alice,
    )  # fmt: skip

    assert (first.calls, first.prompt_tokens, first.cached_tokens) == (3, 2100, 40)
    assert (
        first.cost
        == Decimal("2.894000000000")
        == sum(
            (r.cost for r in UsageRecord.objects.filter(user=alice, created_at__date="2026-11-01")),
            Decimal(0),
        )
    )


@pytest.mark.parametrize(
    "date_range",
    [
        NOVEMBER,
        DateRange(date(2026, 11, 1), date(2026, 11, 1)),
        DateRange(date(2026, 11, 2), date(2026, 11, 5)),
        DateRange(date(2026, 10, 1), date(2026, 12, 31)),
        DateRange(date(2026, 11, 8), date(2026, 11, 29)),  # no calls
    ],
)
def test_the_dashboard_figures_are_the_ledgers(mix, alice, bob, org_a, project_a, date_range):
    scopes = [
        UsageScope(organization=org_a),
        UsageScope.for_membership(membership(bob, org_a)),
        UsageScope(organization=org_a, project_id=project_a.pk),
        UsageScope(organization=org_a, user_id=alice.pk, project_id=project_a.pk),
        UsageScope(organization=org_a, project_id=project_a.pk, api_keys_only=True),
        UsageScope(organization=Organization.objects.get(slug="org-b")),
    ]
    for scope in scopes:
        dashboard = selectors.usage_dashboard(scope=scope, date_range=date_range)
        assert figures(dashboard.by_day) == ledger_figures(scope, date_range, "day")
        assert len(dashboard.by_day) == len(date_range.days())
        assert figures(dashboard.by_model) == ledger_figures(scope, date_range, "model")
        assert figures(dashboard.by_project) == ledger_figures(scope, date_range, "project_id")
        if dashboard.by_member is not None:
            assert figures(dashboard.by_member) == ledger_figures(scope, date_range, "user_id")
        by_key = selectors.spend_by_api_key(scope, date_range)
        assert figures(by_key) == ledger_figures(scope, date_range, "api_key_id")
        rows = list(ledger_rows(scope, date_range))
        assert dashboard.total.calls == len(rows)
        assert dashboard.total.cost == sum((r.cost for r in rows), Decimal(0))


def test_groups_come_most_spent_first_with_the_none_groups_in_place(mix, org_a, bot_key):
    scope = UsageScope(organization=org_a)

    by_member = selectors.spend_by_member(scope, NOVEMBER)
    by_key = selectors.spend_by_api_key(scope, NOVEMBER)

    assert [s.label for s in by_member] == ["Bob", "Alice", "(no user)", "Dave"]
    assert [s.label for s in by_key] == ["(no key: chat)", str(bot_key.key)]


def test_a_tie_with_a_none_group_is_broken_as_the_ledgers_query_breaks_it(mix, org_a):
    # Nov 6: the key's free call (no user) and Dave's free call (no key), both $0.
    day = DateRange(date(2026, 11, 6), date(2026, 11, 6))
    scope = UsageScope(organization=org_a)

    by_member = selectors.spend_by_member(scope, day)
    by_key = selectors.spend_by_api_key(scope, day)

    assert {s.label for s in by_member} == {"(no user)", "Dave"}
    assert {s.cost for s in by_member} == {s.cost for s in by_key} == {Decimal(0)}
    # Where NULL sorts is the database's (first on SQLite, last on PostgreSQL): the same there.
    assert figures(by_member) == ledger_figures(scope, day, "user_id")
    assert figures(by_key) == ledger_figures(scope, day, "api_key_id")


def test_it_stays_the_ledger_when_a_project_a_user_and_a_key_are_deleted(
    mix, alice, bob, org_a, project_a, project_a2, bot_key
):
    # A row that joins an existing "none" group once its project is gone.
    settle(project_a2, user=bob, when=at(3, 18), prompt=7, completion=7)
    with patch("django.utils.timezone.now", return_value=at(3, 19)):
        orphan = UsageRecord.objects.create(
            organization=org_a, project=None, user=bob, model="fake-gpt", cost=Decimal("0.25"),
            prompt_tokens=1, completion_tokens=2, status=UsageRecord.Status.OK,
        )  # fmt: skip
    rollup_add(orphan)

    project_delete(actor=membership(alice, org_a), project=project_a2)
    bot_key.key.delete()
    bob.delete()

    assert UsageRecord.objects.filter(project=None, user=None).exists()
    assert rollups() == ledger_summed()
    scope = UsageScope(organization=org_a)
    for by, groups in [
        ("project_id", selectors.spend_by_project(scope, NOVEMBER)),
        ("user_id", selectors.spend_by_member(scope, NOVEMBER)),
        ("api_key_id", selectors.spend_by_api_key(scope, NOVEMBER)),
    ]:
        assert figures(groups) == ledger_figures(scope, NOVEMBER, by)
    assert "(deleted project)" in [s.label for s in selectors.spend_by_project(scope, NOVEMBER)]


def test_the_rebuild_command_reproduces_the_rollups(mix):
    kept = rollups()
    UsageRollup.objects.all().delete()

    out = io.StringIO()
    call_command("rebuild_usage_rollups", stdout=out)

    assert rollups() == kept == ledger_summed()
    assert f"Rebuilt {len(kept)} usage rollup(s)" in out.getvalue()


def test_a_rebuild_in_small_batches_adds_groups_that_span_them(mix):
    kept = rollups()
    UsageRollup.objects.filter(calls__gt=1).update(calls=99)  # out of step: rebuilt anyway

    written = rollups_rebuild(batch_size=2)

    assert rollups() == kept
    assert written == len(kept)


def test_the_migration_fills_the_rollups_from_the_ledger_already_written(mix):
    kept = rollups()
    UsageRollup.objects.all().delete()
    migration = importlib.import_module("billing.migrations.0010_usage_rollups_backfill")

    migration.backfill(apps, SimpleNamespace(connection=connection))

    assert rollups() == kept


def test_an_outsider_never_sees_another_organizations_rollups(mix, client_for, charlie, org_b):
    own = client_for(charlie).get(
        reverse("usage_dashboard", args=["org-b"]), {"start": "2026-11-01", "end": "2026-11-30"}
    )
    theirs = client_for(charlie).get(reverse("usage_dashboard", args=["org-a"]))

    dashboard = own.context["dashboard"]
    rows = UsageRecord.objects.filter(organization=org_b)
    assert dashboard.total.calls == rows.count() == 2
    assert dashboard.total.cost == sum((r.cost for r in rows), Decimal(0))
    assert {s.key for s in dashboard.by_member} == {charlie.pk}
    assert {s.label for s in dashboard.by_project} == {"Project B"}
    assert theirs.status_code == 404


# --- at the same time --------------------------------------------------------------------------


def settle_at_once(project: Project, user: User, *, threads: int, calls_each: int) -> None:
    """``threads`` threads, each with its own connection, settle calls of one group (same
    organization, project, user, model and day) together."""
    start = threading.Barrier(threads, timeout=30)

    def worker(n: int) -> None:
        try:
            start.wait()
            for _ in range(calls_each):
                settle(project, user=user, when=None, prompt=100 + n, completion=10)
        finally:
            connection.close()

    # The clock is set once for every thread (a patch per thread would undo another's).
    with (
        patch("django.utils.timezone.now", return_value=at(9)),
        ThreadPoolExecutor(max_workers=threads) as pool,
    ):
        for future in [pool.submit(worker, n) for n in range(threads)]:
            future.result()


@pytest.mark.django_db(transaction=True)
def test_two_settles_of_one_group_at_once_both_count(fake_price, project_a, alice):
    settle_at_once(project_a, alice, threads=2, calls_each=1)

    rollup = UsageRollup.objects.get()
    assert (rollup.calls, rollup.prompt_tokens) == (2, 201)
    assert rollups() == ledger_summed()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_many_settles_of_one_group_at_once_on_postgres_all_count(fake_price, project_a, alice):
    assert connection.vendor == "postgresql"

    settle_at_once(project_a, alice, threads=8, calls_each=10)

    assert UsageRollup.objects.get().calls == 80
    assert rollups() == ledger_summed()
