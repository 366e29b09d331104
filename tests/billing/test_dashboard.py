"""The usage dashboard, its CSV export and the budget banner."""

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from unittest.mock import patch

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import Project
from billing.models import Budget, BudgetAlert, BudgetPeriod, UsageRecord
from billing.rollups import rollup_add, rollups_rebuild
from billing.selectors import DateRange, UsageScope, current_budget_banners, usage_dashboard
from billing.services import period_bounds
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db

OCTOBER = {"start": "2026-10-01", "end": "2026-10-31"}


def charge(project, user, *, at: datetime, cost: str, model: str = "gpt-4o", **fields):
    """A ledger row written at ``at`` (created_at is auto_now_add: the clock is what sets it),
    added to its daily rollup as the quota service adds it."""
    with patch("django.utils.timezone.now", return_value=at):
        record = UsageRecord.objects.create(
            organization=project.organization,
            project=project,
            user=user,
            model=model,
            cost=Decimal(cost),
            status=UsageRecord.Status.OK,
            **fields,
        )
    rollup_add(record)
    return record


def oct_(day: int, hour: int = 12, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(2026, 10, day, hour, minute, second, micro, tzinfo=UTC)


@pytest.fixture
def project_a2(org_a) -> Project:
    return ProjectFactory(organization=org_a, name="Support bot", slug="support-bot")


@pytest.fixture
def ledger(project_a, project_a2, project_b, alice, bob, charlie):
    """October 2026 in org A (alice and bob, two projects, two models), some rows just outside
    the month, and org B's rows, which org A must never see."""
    rows = [
        charge(project_a, alice, at=oct_(1, 0, 0, 0), cost="1.234567890123", prompt_tokens=1000,
               completion_tokens=200),
        charge(project_a, alice, at=oct_(1, 9), cost="0.000012500000", model="gpt-4o-mini",
               prompt_tokens=50, completion_tokens=5),
        charge(project_a, bob, at=oct_(3, 15), cost="0.5", prompt_tokens=300,
               completion_tokens=90),
        charge(project_a2, bob, at=oct_(3, 16), cost="2.000000000005", model="gpt-4o-mini",
               prompt_tokens=7000, completion_tokens=1234),
        charge(project_a2, alice, at=oct_(31, 23, 59, 59, 999999), cost="0.004999999999",
               prompt_tokens=10, completion_tokens=1),
    ]  # fmt: skip
    charge(project_a, alice, at=datetime(2026, 9, 30, 23, 59, 59, tzinfo=UTC), cost="100")
    charge(project_a, bob, at=datetime(2026, 11, 1, tzinfo=UTC), cost="100")
    charge(project_b, charlie, at=oct_(2), cost="55.55", prompt_tokens=5)
    # As the database gives them back: the figures must match what is stored.
    return list(UsageRecord.objects.filter(pk__in=[r.pk for r in rows]).order_by("created_at"))


def total(rows) -> Decimal:
    return sum((r.cost for r in rows), Decimal(0))


def get_usage(client, org="org-a", **params):
    return client.get(reverse("usage_dashboard", args=[org]), params)


def test_it_shows_the_whole_organization_to_an_owner_exactly(client_for, alice, ledger):
    response = get_usage(client_for(alice), **OCTOBER)

    assert response.status_code == 200
    dashboard = response.context["dashboard"]
    assert dashboard.total.cost == total(ledger) == Decimal("3.739580390127")
    assert dashboard.total.calls == 5
    assert dashboard.total.prompt_tokens == sum(r.prompt_tokens for r in ledger)
    assert dashboard.total.completion_tokens == sum(r.completion_tokens for r in ledger)
    body = response.content.decode()
    assert 'title="3.739580390127"' in body  # exact, as the ledger has it
    assert "$3.74" in body  # half-up to the cent
    assert "$55.55" not in body
    assert "$100" not in body


def test_it_breaks_spend_down_by_model_project_member_and_day(client_for, alice, bob, ledger):
    dashboard = get_usage(client_for(alice), **OCTOBER).context["dashboard"]

    def by(key, rows):
        return {k: (len(g), total(g)) for k in {key(r) for r in rows}
                for g in [[r for r in rows if key(r) == k]]}  # fmt: skip

    assert {s.key: (s.calls, s.cost) for s in dashboard.by_model} == by(lambda r: r.model, ledger)
    assert {s.key: (s.calls, s.cost) for s in dashboard.by_project} == by(
        lambda r: r.project_id, ledger
    )
    assert {s.key: (s.calls, s.cost) for s in dashboard.by_member} == by(
        lambda r: r.user_id, ledger
    )
    assert [s.label for s in dashboard.by_member] == ["Bob", "Alice"]  # most spent first
    days = {s.key: (s.calls, s.cost) for s in dashboard.by_day}
    assert len(days) == 31  # every day, the quiet ones as zeros
    assert days[date(2026, 10, 1)] == (2, Decimal("1.234580390123"))
    assert days[date(2026, 10, 2)] == (0, Decimal(0))
    assert days[date(2026, 10, 31)] == (1, Decimal("0.004999999999"))
    assert sum((cost for _, cost in days.values()), Decimal(0)) == total(ledger)


def test_the_page_shows_the_tables_the_chart_and_small_amounts(client_for, alice, ledger):
    body = get_usage(client_for(alice), **OCTOBER).content.decode()

    for heading in ("By model", "By project", "By member", "Spend by day"):
        assert heading in body
    assert body.count("<rect ") == 31
    assert "<script" not in body.split("<main")[1]  # a server-drawn chart, no JS library
    assert 'title="0.004999999999">$0.005<' in body  # 4 places, trailing zeros dropped
    assert 'title="2.500000000005">$2.50<' in body  # Oct 3
    assert "Support bot" in body
    assert "gpt-4o-mini" in body
    assert "Export CSV" in body


def test_a_member_sees_only_their_own_usage(client_for, bob, ledger):
    response = get_usage(client_for(bob), **OCTOBER)

    dashboard = response.context["dashboard"]
    own = [r for r in ledger if r.user_id == bob.pk]
    assert dashboard.total.cost == total(own) == Decimal("2.500000000005")
    assert dashboard.total.calls == 2
    assert dashboard.by_member is None
    assert {s.key for s in dashboard.by_model} == {"gpt-4o", "gpt-4o-mini"}
    body = response.content.decode()
    assert "your own usage" in body
    assert "By member" not in body
    assert "3.739580390127" not in body
    assert reverse("statement_list", args=["org-a"]) not in body


def test_the_default_range_is_this_month(client_for, alice, project_a):
    now = timezone.now()
    month_start, _ = period_bounds("month", now)
    charge(project_a, alice, at=month_start, cost="0.25")
    charge(project_a, alice, at=month_start - timedelta(microseconds=1), cost="7")

    response = get_usage(client_for(alice))

    dashboard = response.context["dashboard"]
    assert dashboard.date_range == DateRange(start=month_start.date(), end=now.date())
    assert dashboard.total.cost == Decimal("0.25")
    assert response.context["range_error"] is None


def test_the_totals_stay_exact_where_sqlite_sums_floats(client_for, alice, project_a):
    """SQLite keeps decimals as floats: its SUM of these 500 costs is 61.7283945060007."""
    with patch("django.utils.timezone.now", return_value=oct_(7)):
        UsageRecord.objects.bulk_create(
            UsageRecord(
                organization=project_a.organization,
                project=project_a,
                user=alice,
                model="gpt-4o",
                cost=Decimal("0.123456789012"),
                status="ok",
            )
            for _ in range(500)
        )
    rollups_rebuild()  # bulk_create adds no rollups (only the benchmark writes rows this way)

    dashboard = get_usage(client_for(alice), **OCTOBER).context["dashboard"]

    assert dashboard.total.cost == Decimal("61.728394506000")
    assert dashboard.by_model[0].cost == dashboard.by_project[0].cost == Decimal("61.728394506")


def test_the_range_includes_both_days_whole(client_for, alice, ledger):
    dashboard = get_usage(client_for(alice), start="2026-10-03", end="2026-10-03").context[
        "dashboard"
    ]

    assert dashboard.total.calls == 2
    assert dashboard.total.cost == Decimal("2.500000000005")
    assert [s.key for s in dashboard.by_day] == [date(2026, 10, 3)]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"end": "2026-10-15"}, DateRange(date(2026, 10, 1), date(2026, 10, 15))),
        ({"start": "2026-10-20"}, DateRange(date(2026, 10, 20), date(2026, 10, 31))),
    ],
)
def test_one_bound_gives_the_month_around_it(client_for, alice, ledger, params, expected):
    response = get_usage(client_for(alice), **params)

    assert response.context["dashboard"].date_range == expected
    assert response.context["range_error"] is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"start": "2026-13-01", "end": "2026-10-31"}, "Start: Enter a date as YYYY-MM-DD."),
        ({"start": "yesterday"}, "Start: Enter a date as YYYY-MM-DD."),
        ({"start": "2026-10-31", "end": "2026-10-01"}, "must not be after the end date"),
        ({"start": "2024-01-01", "end": "2026-10-01"}, "at most 366 days"),
        ({"start": "9999-01-01", "end": "9999-12-31"}, "Choose dates from 2000-01-01"),
        ({"start": "9999-12-30"}, "Choose dates from 2000-01-01"),
    ],
)
def test_a_bad_range_says_so_and_shows_this_month(client_for, alice, ledger, params, message):
    response = get_usage(client_for(alice), **params)

    assert response.status_code == 200
    today = timezone.now().date()
    assert response.context["dashboard"].date_range == DateRange.month_to_date(today)
    body = response.content.decode()
    assert message in body
    assert f"Showing {today.replace(day=1):%Y-%m-%d} to {today:%Y-%m-%d} instead." in body


def test_budgets_show_the_period_spend_against_the_limit(client_for, alice, bob, project_a):
    now = timezone.now()
    start, _ = period_bounds("month", now)
    org_budget = Budget.objects.create(
        organization=project_a.organization, scope="organization", limit_usd=Decimal("40")
    )
    BudgetPeriod.objects.create(budget=org_budget, start=start, spent=Decimal("30"))
    # No counter yet for this one: its spend comes from the ledger.
    Budget.objects.create(
        organization=project_a.organization,
        scope="member",
        project=project_a,
        user=bob,
        limit_usd=Decimal("2"),
    )
    charge(project_a, bob, at=now, cost="0.5")
    charge(project_a, bob, at=start - timedelta(seconds=1), cost="9")  # last month

    body = get_usage(client_for(alice)).content.decode()
    statuses = get_usage(client_for(alice)).context["dashboard"].budgets

    assert [(s.spent, s.budget.limit_usd, s.percent) for s in statuses] == [
        (Decimal("0.5"), Decimal("2"), Decimal("25.0")),
        (Decimal("30"), Decimal("40"), Decimal("75.0")),
    ]
    assert "75.0%" in body
    assert 'width="75.0%"' in body
    assert "25.0%" in body


def test_a_member_sees_the_limits_that_apply_to_them_only(client_for, alice, bob, project_a):
    org = project_a.organization
    Budget.objects.create(organization=org, scope="organization", limit_usd=Decimal("40"))
    Budget.objects.create(
        organization=org, scope="member", project=project_a, user=alice, limit_usd=Decimal("3")
    )

    statuses = get_usage(client_for(bob)).context["dashboard"].budgets

    assert [s.budget.scope for s in statuses] == ["organization"]


def test_the_dashboard_costs_a_bounded_number_of_queries(
    client_for, alice, project_a, project_a2, bob, ledger, django_assert_max_num_queries
):
    now = timezone.now()
    start, _ = period_bounds("month", now)
    for n, project in enumerate([None, project_a, project_a2]):
        budget = Budget.objects.create(
            organization=project_a.organization,
            scope="project" if project else "organization",
            project=project,
            limit_usd=Decimal(10 + n),
        )
        BudgetPeriod.objects.create(budget=budget, start=start, spent=Decimal(n))
    for day in range(1, 31):
        for project in (project_a, project_a2):
            charge(project, bob, at=oct_(day), cost="0.01", model=f"m-{day % 7}")
    client = client_for(alice)

    # session, user, two-factor device, membership; 4 aggregates, 2 for names; budgets and
    # counters; the banner; which organizations are scheduled for deletion (read once, then
    # kept in memory: not on the second page)
    with django_assert_max_num_queries(14):
        response = get_usage(client, **OCTOBER)
    assert response.status_code == 200
    with django_assert_max_num_queries(13):
        get_usage(client, start="2026-01-01", end="2026-12-31")


def test_the_settings_page_links_to_usage_and_statements(client_for, alice, bob, org_a):
    url = reverse("organization_settings", args=["org-a"])
    usage = reverse("usage_dashboard", args=["org-a"])
    statements = reverse("statement_list", args=["org-a"])

    owner_page = client_for(alice).get(url).content.decode()
    member_page = client_for(bob).get(url).content.decode()

    assert usage in owner_page
    assert statements in owner_page
    assert usage in member_page
    assert statements not in member_page


# --- CSV export ----------------------------------------------------------------------------------


def read_csv(response) -> list[dict]:
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith("attachment; filename=")
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def export(client, org="org-a", **params):
    return client.get(reverse("usage_export", args=[org]), params)


def test_the_export_has_every_row_of_the_range_cost_exactly_as_stored(client_for, alice, ledger):
    response = export(client_for(alice), **OCTOBER)

    assert response.streaming
    rows = read_csv(response)
    assert [r["request_id"] for r in rows] == [str(r.request_id) for r in ledger]  # oldest first
    assert [r["cost_usd"] for r in rows] == [
        "1.234567890123",
        "0.000012500000",
        "0.500000000000",
        "2.000000000005",
        "0.004999999999",
    ]
    first = rows[0]
    assert first["created_at"] == "2026-10-01T00:00:00+00:00"
    assert (first["project"], first["user"], first["model"]) == (
        "Project A",
        "alice@example.com",
        "gpt-4o",
    )
    assert (first["prompt_tokens"], first["completion_tokens"], first["status"]) == (
        "1000",
        "200",
        "ok",
    )
    assert rows[-1]["created_at"] == "2026-10-31T23:59:59.999999+00:00"


def test_the_export_writes_tiny_costs_in_plain_digits(client_for, alice, project_a):
    charge(project_a, alice, at=timezone.now(), cost="0.000000012500")
    charge(project_a, alice, at=timezone.now(), cost="0.000000000001")

    rows = read_csv(export(client_for(alice)))

    assert [r["cost_usd"] for r in rows] == ["0.000000012500", "0.000000000001"]


def test_a_member_exports_only_their_own_rows(client_for, bob, ledger):
    rows = read_csv(export(client_for(bob), **OCTOBER))

    assert {r["user"] for r in rows} == {"bob@example.com"}
    assert len(rows) == 2


def test_the_export_of_a_day(client_for, alice, ledger):
    rows = read_csv(export(client_for(alice), start="2026-10-03", end="2026-10-03"))

    assert [r["cost_usd"] for r in rows] == ["0.500000000000", "2.000000000005"]


def test_the_export_defuses_spreadsheet_formulas(client_for, alice, project_a):
    project_a.name = "=HYPERLINK(1)"
    project_a.save()
    charge(project_a, alice, at=timezone.now(), cost="1", model="@model")

    [row] = read_csv(export(client_for(alice)))

    assert (row["project"], row["model"]) == ("'=HYPERLINK(1)", "'@model")


def test_an_outsider_cannot_export(client_for, charlie, ledger):
    assert export(client_for(charlie), **OCTOBER).status_code == 404


@pytest.mark.django_db(transaction=True)
async def test_the_export_streams_under_asgi(async_client, alice, ledger):
    """Daphne serves the app: the CSV must come through the ASGI handler, chunk by chunk."""
    await async_client.aforce_login(alice)

    response = await async_client.get(reverse("usage_export", args=["org-a"]), OCTOBER)

    assert response.status_code == 200
    assert response.is_async
    text = b"".join([chunk async for chunk in response.streaming_content]).decode()
    assert [r["cost_usd"] for r in csv.DictReader(io.StringIO(text))][-1] == "0.004999999999"


# --- the budget banner ---------------------------------------------------------------------------


def alert(budget, threshold, *, spent=None, now=None):
    start, _ = period_bounds(budget.period, now or timezone.now())
    if spent is not None:
        BudgetPeriod.objects.update_or_create(
            budget=budget, start=start, defaults={"spent": Decimal(spent)}
        )
    return BudgetAlert.objects.create(budget=budget, period_start=start, threshold=threshold)


@pytest.fixture
def project_budget(project_a):
    return Budget.objects.create(
        organization=project_a.organization,
        scope="project",
        project=project_a,
        limit_usd=Decimal("25"),
    )


def test_the_banner_shows_the_highest_threshold_crossed(client_for, alice, bob, project_budget):
    alert(project_budget, 50, spent="21")
    alert(project_budget, 80)

    for user in (alice, bob):
        body = client_for(user).get(reverse("organization_settings", args=["org-a"])).content
        assert b"Project Project A has used 80% of its $25.00 monthly budget." in body
        assert b"50% of its" not in body


def test_the_banner_says_when_a_limit_is_reached(client_for, alice, project_budget):
    alert(project_budget, 100, spent="25")
    _, end = period_bounds("month", timezone.now())

    body = client_for(alice).get(reverse("organization_settings", args=["org-a"])).content

    assert (
        f"Project Project A has reached its limit: new messages are refused until "
        f"{end:%Y-%m-%d} 00:00 UTC."
    ).encode() in body


def test_the_banner_shows_on_the_chat_page(client_for, alice, project_budget, make_conversation):
    alert(project_budget, 100, spent="30")
    conversation = make_conversation(alice, project_budget.project)

    response = client_for(alice).get(
        reverse("conversation_detail", args=["org-a", "project-a", conversation.pk])
    )

    assert response.status_code == 200
    assert b"has reached its limit" in response.content


def test_no_banner_before_an_alert_or_in_another_org(client_for, alice, charlie, project_budget):
    settings_a = reverse("organization_settings", args=["org-a"])
    assert b"budget-alerts" not in client_for(alice).get(settings_a).content

    alert(project_budget, 80, spent="20")

    assert b"budget-alerts" in client_for(alice).get(settings_a).content
    org_b_page = client_for(charlie).get(reverse("organization_settings", args=["org-b"]))
    assert b"budget-alerts" not in org_b_page.content
    assert client_for(charlie).get(settings_a).status_code == 404
    assert current_budget_banners(user_id=charlie.pk, organization_slug="org-a") == []


def test_the_banner_ignores_past_periods_and_raised_limits(alice, project_budget):
    last_month = period_bounds("month", timezone.now())[0] - timedelta(days=1)
    alert(project_budget, 100, now=last_month)
    assert current_budget_banners(user_id=alice.pk, organization_slug="org-a") == []

    alert(project_budget, 80, spent="20")
    alert(project_budget, 100)
    project_budget.limit_usd = Decimal("50")  # raised since: 20 is 40% now
    project_budget.save()

    assert current_budget_banners(user_id=alice.pk, organization_slug="org-a") == []


def test_a_member_budget_banner_is_for_that_member_and_managers(alice, bob, project_a):
    budget = Budget.objects.create(
        organization=project_a.organization,
        scope="member",
        project=project_a,
        user=alice,
        limit_usd=Decimal("1"),
    )
    alert(budget, 100, spent="1")

    [banner] = current_budget_banners(user_id=alice.pk, organization_slug="org-a")
    assert banner.message.startswith("Alice in project Project A has reached its limit")
    assert current_budget_banners(user_id=bob.pk, organization_slug="org-a") == []


def test_the_banner_costs_one_query_on_org_pages_and_home(client_for, alice, project_budget):
    alert(project_budget, 80, spent="20")
    client = client_for(alice)

    with CaptureQueriesContext(connection) as org_page:
        client.get(reverse("organization_settings", args=["org-a"]))
    with CaptureQueriesContext(connection) as home:
        client.get(reverse("home"))
    with CaptureQueriesContext(connection) as account_page:
        client.get(reverse("two_factor"))

    assert len([q for q in org_page if "billing_budgetalert" in q["sql"]]) == 1
    assert len([q for q in home if "billing_budgetalert" in q["sql"]]) == 1  # the banner there too
    assert not [q for q in account_page if "billing_" in q["sql"]]


def test_the_selectors_work_without_a_request(alice, ledger, org_a):
    """The dashboard's reads are plain functions of a scope and a range (no view needed)."""
    dashboard = usage_dashboard(
        scope=UsageScope(organization=org_a, user_id=alice.pk),
        date_range=DateRange(date(2026, 10, 1), date(2026, 10, 31)),
    )

    assert dashboard.total.cost == total([r for r in ledger if r.user_id == alice.pk])
