"""Monthly statements: closing a month from the ledger, the beat task, the pages."""

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal
from unittest.mock import patch

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import Project
from billing.models import Statement, StatementLine, UsageRecord
from billing.statement_services import (
    statements_close_month,
    statements_close_previous_month,
)
from billing.tasks import close_last_month
from core.errors import ServiceError
from tests.factories import OrganizationFactory, ProjectFactory

pytestmark = pytest.mark.django_db

OCTOBER = date(2026, 10, 1)
MID_NOVEMBER = datetime(2026, 11, 15, 12, tzinfo=UTC)


def charge(project, user, *, at: datetime, cost: str, model: str = "gpt-4o", **fields):
    """A ledger row written at ``at`` (created_at is auto_now_add: the clock is what sets it)."""
    with patch("django.utils.timezone.now", return_value=at):
        return UsageRecord.objects.create(
            organization=project.organization,
            project=project,
            user=user,
            model=model,
            cost=Decimal(cost),
            status=UsageRecord.Status.OK,
            **fields,
        )


def oct_(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 10, day, hour, tzinfo=UTC)


@pytest.fixture
def project_a2(org_a) -> Project:
    return ProjectFactory(organization=org_a, name="Support bot", slug="support-bot")


@pytest.fixture
def october(project_a, project_a2, project_b, alice, bob, charlie):
    """Org A's October: two projects, two models, two people; around it, rows that must stay
    out (September, November, org B)."""
    rows = [
        charge(project_a, alice, at=datetime(2026, 10, 1, tzinfo=UTC), cost="1.234567890123",
               prompt_tokens=1000, completion_tokens=200),
        charge(project_a, bob, at=oct_(2), cost="0.000012500000", prompt_tokens=50,
               completion_tokens=5),
        charge(project_a, alice, at=oct_(3), cost="0.5", model="gpt-4o-mini", prompt_tokens=300,
               completion_tokens=90),
        charge(project_a2, bob, at=datetime(2026, 10, 31, 23, 59, 59, 999999, tzinfo=UTC),
               cost="2.000000000005", prompt_tokens=7000, completion_tokens=1234),
    ]  # fmt: skip
    charge(project_a, alice, at=datetime(2026, 9, 30, 23, 59, 59, tzinfo=UTC), cost="100")
    charge(project_a, alice, at=datetime(2026, 11, 1, tzinfo=UTC), cost="100")
    charge(project_b, charlie, at=oct_(5), cost="55.55")
    return list(UsageRecord.objects.filter(pk__in=[r.pk for r in rows]))


def close(organization, month=OCTOBER, now=MID_NOVEMBER) -> Statement:
    return statements_close_month(organization=organization, month_start=month, now=now)


def test_it_writes_one_line_per_project_and_model(org_a, project_a, project_a2, october):
    statement = close(org_a)

    assert (statement.period_start, statement.period_end) == (
        datetime(2026, 10, 1, tzinfo=UTC),
        datetime(2026, 11, 1, tzinfo=UTC),
    )
    lines = {
        (line.project_id, line.project_name, line.model): (
            line.calls,
            line.prompt_tokens,
            line.completion_tokens,
            line.cost,
        )
        for line in statement.lines.all()
    }
    assert lines == {
        (project_a.pk, "Project A", "gpt-4o"): (2, 1050, 205, Decimal("1.234580390123")),
        (project_a.pk, "Project A", "gpt-4o-mini"): (1, 300, 90, Decimal("0.5")),
        (project_a2.pk, "Support bot", "gpt-4o"): (1, 7000, 1234, Decimal("2.000000000005")),
    }


def test_the_total_is_the_ledger_sum_exactly(org_a, october):
    statement = close(org_a)

    ledger_sum = sum((row.cost for row in october), Decimal(0))
    assert statement.total_cost == ledger_sum == Decimal("3.734580390128")
    assert sum((line.cost for line in statement.lines.all()), Decimal(0)) == ledger_sum
    statement.refresh_from_db()
    assert statement.total_cost == ledger_sum


def test_the_total_stays_exact_where_sqlite_sums_floats(org_a, project_a, alice):
    """SQLite keeps decimals as floats: its SUM of these 500 costs is 61.7283945060007. The
    statement sums exact integers of 1e-12 USD instead."""
    with patch("django.utils.timezone.now", return_value=oct_(7)):
        UsageRecord.objects.bulk_create(
            UsageRecord(
                organization=org_a,
                project=project_a,
                user=alice,
                model="gpt-4o",
                cost=Decimal("0.123456789012"),
                status="ok",
            )
            for _ in range(500)
        )

    statement = close(org_a)

    statement.refresh_from_db()
    assert statement.total_cost == Decimal("61.728394506000")
    assert statement.lines.get().cost == Decimal("61.728394506000")


def test_closing_twice_gives_the_same_statement(org_a, project_a, alice, october):
    first = close(org_a)
    # A row stamped in October but written after the close does not rewrite the statement.
    charge(project_a, alice, at=oct_(20), cost="9")

    second = close(org_a, now=datetime(2026, 12, 2, tzinfo=UTC))

    assert second.pk == first.pk
    assert second.total_cost == first.total_cost
    assert Statement.objects.count() == 1
    assert StatementLine.objects.count() == 3


def test_a_month_without_usage_closes_empty(org_a):
    statement = close(org_a)

    assert statement.total_cost == 0
    assert not statement.lines.exists()


@pytest.mark.parametrize(
    ("month", "now", "code"),
    [
        (date(2026, 10, 2), MID_NOVEMBER, "invalid"),
        (date(2026, 11, 1), MID_NOVEMBER, "month_not_over"),
        (OCTOBER, datetime(2026, 11, 1, 0, 5, tzinfo=UTC), "month_not_over"),  # grace period
    ],
)
def test_only_a_whole_month_that_is_over_can_be_closed(org_a, october, month, now, code):
    with pytest.raises(ServiceError) as refused:
        close(org_a, month=month, now=now)

    assert refused.value.code == code
    assert not Statement.objects.exists()


def test_a_project_deleted_later_keeps_its_name_on_the_statement(org_a, project_a2, october):
    statement = close(org_a)
    project_a2.delete()

    line = statement.lines.get(model="gpt-4o", project_name="Support bot")
    assert line.project is None
    assert line.cost == Decimal("2.000000000005")


def test_rows_of_a_project_deleted_before_closing_are_still_billed(org_a, project_a2, october):
    project_a2.delete()

    statement = close(org_a)

    line = statement.lines.get(project=None)
    assert (line.project_name, line.cost) == ("", Decimal("2.000000000005"))
    assert statement.total_cost == Decimal("3.734580390128")


def test_the_month_is_read_from_the_ledger_in_one_query(org_a, october):
    with CaptureQueriesContext(connection) as queries:
        close(org_a)

    assert len([q for q in queries if "billing_usagerecord" in q["sql"]]) == 1
    assert len(queries) <= 8  # the rest: is it closed yet, then the inserts and savepoints


def test_the_beat_task_closes_last_month_for_every_organization_with_usage(org_a, org_b, october):
    OrganizationFactory(name="Quiet")  # no usage in October: no statement

    with patch("django.utils.timezone.now", return_value=MID_NOVEMBER):
        assert close_last_month.delay().get() == 2
        assert close_last_month.delay().get() == 0  # idempotent: nothing left to do

    assert sorted(Statement.objects.values_list("organization__slug", flat=True)) == [
        "org-a",
        "org-b",
    ]
    assert Statement.objects.get(organization=org_b).total_cost == Decimal("55.55")
    totals = UsageRecord.objects.filter(
        created_at__gte=datetime(2026, 10, 1, tzinfo=UTC),
        created_at__lt=datetime(2026, 11, 1, tzinfo=UTC),
    ).aggregate(total=Sum("cost"))
    assert sum(Statement.objects.values_list("total_cost", flat=True)) == totals["total"]


def test_the_beat_task_waits_for_the_grace_period(org_a, october):
    assert statements_close_previous_month(now=datetime(2026, 11, 1, 0, 5, tzinfo=UTC)) == []
    assert len(statements_close_previous_month(now=datetime(2026, 11, 1, 0, 15, tzinfo=UTC))) == 2


# --- pages ----------------------------------------------------------------------------------


@pytest.fixture
def statement(org_a, october) -> Statement:
    return close(org_a)


def test_an_owner_sees_the_statements_and_a_statement(client_for, alice, statement):
    client = client_for(alice)

    listing = client.get(reverse("statement_list", args=["org-a"])).content.decode()
    detail = client.get(reverse("statement_detail", args=["org-a", statement.pk]))

    assert "October 2026" in listing
    assert "$3.73" in listing
    body = detail.content.decode()
    assert detail.status_code == 200
    assert 'title="3.734580390128" data-testid="statement-total">$3.73<' in body
    assert "Support bot" in body
    assert "gpt-4o-mini" in body


def test_the_statement_csv_has_exact_costs_and_the_total(client_for, alice, statement):
    response = client_for(alice).get(reverse("statement_export", args=["org-a", statement.pk]))

    assert response["Content-Disposition"] == ('attachment; filename="statement-org-a-2026-10.csv"')
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == [
        "project",
        "model",
        "calls",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
    ]
    assert rows[1:] == [
        ["Project A", "gpt-4o", "2", "1050", "205", "1.234580390123"],
        ["Project A", "gpt-4o-mini", "1", "300", "90", "0.500000000000"],
        ["Support bot", "gpt-4o", "1", "7000", "1234", "2.000000000005"],
        ["total", "", "", "", "", "3.734580390128"],
    ]


@pytest.mark.parametrize("name", ["statement_list", "statement_detail", "statement_export"])
def test_a_member_may_not_see_statements(client_for, bob, statement, name):
    args = ["org-a"] if name == "statement_list" else ["org-a", statement.pk]

    assert client_for(bob).get(reverse(name, args=args)).status_code == 403


def test_another_organizations_statement_is_not_found(client_for, charlie, org_b, statement):
    client = client_for(charlie)
    own = close(org_b)

    assert client.get(reverse("statement_detail", args=["org-b", own.pk])).status_code == 200
    assert client.get(reverse("statement_detail", args=["org-b", statement.pk])).status_code == 404
    assert client.get(reverse("statement_export", args=["org-b", statement.pk])).status_code == 404
