"""The billing admin: budgets with this period's figures, the read-only ledger, prices."""

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal
from unittest import mock

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib import admin
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing import pricing
from billing.admin import CSV_HEADER, with_current_figures
from billing.models import (
    Budget,
    BudgetAlert,
    BudgetPeriod,
    Hold,
    ModelPrice,
    RateLimit,
    UsageRecord,
)
from billing.services import LIFETIME_START, ledger_spend, period_bounds
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db

BUDGETS = reverse("admin:billing_budget_changelist")
USAGE = reverse("admin:billing_usagerecord_changelist")


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(email="staff@example.com", is_staff=True, is_superuser=True))
    return client


def budget(organization, limit, *, scope="organization", project=None, user=None, **fields):
    return Budget.objects.create(
        organization=organization,
        scope=scope,
        project=project,
        user=user,
        limit_usd=Decimal(str(limit)),
        **fields,
    )


def this_period(budget: Budget, *, spent="0", reserved="0") -> BudgetPeriod:
    return BudgetPeriod.objects.create(
        budget=budget,
        start=period_bounds(budget.period, timezone.now())[0],
        spent=Decimal(spent),
        reserved=Decimal(reserved),
    )


def usage(project, user=None, *, cost="0.5", model="fake-gpt", **fields) -> UsageRecord:
    return UsageRecord.objects.create(
        organization=project.organization,
        project=project,
        user=user,
        model=model,
        prompt_tokens=fields.pop("prompt_tokens", 10),
        completion_tokens=fields.pop("completion_tokens", 5),
        cost=Decimal(cost),
        status=UsageRecord.Status.OK,
        **fields,
    )


def listed(response) -> set[int]:
    return {obj.pk for obj in response.context["cl"].result_list}


# --- every billing model ------------------------------------------------------------------------


@pytest.fixture
def one_of_each(org_a, project_a, alice, bob):
    price = ModelPrice.objects.create(
        model="fake-gpt*",
        input_per_million=Decimal(1),
        cached_input_per_million=Decimal("0.5"),
        output_per_million=Decimal(2),
        effective_from="2024-01-01",
    )
    usage(project_a, alice, price=price)
    b = budget(org_a, 10, scope="member", project=project_a, user=bob)
    period = this_period(b, spent="1", reserved="0.5")
    Hold.objects.create(
        period=period,
        request_id="3f1e3ad7-7d5c-4c55-9f0a-0e7c07b0b9a1",
        amount=Decimal("0.5"),
        expires_at=timezone.now() + timedelta(minutes=5),
    )
    BudgetAlert.objects.create(budget=b, period_start=period.start, threshold=50)
    RateLimit.objects.create(project=project_a, requests_per_minute=60, tokens_per_minute=10_000)


@pytest.mark.parametrize(
    "model", [m for m in admin.site._registry if m._meta.app_label == "billing"]
)
def test_staff_can_list_search_and_filter_every_billing_model(staff_client, one_of_each, model):
    opts = model._meta
    changelist = reverse(f"admin:billing_{opts.model_name}_changelist")

    response = staff_client.get(changelist)
    assert response.status_code == 200
    for term in ("alice", "org", "fake-gpt", "3f1e3ad7-7d5c-4c55-9f0a-0e7c07b0b9a1"):
        assert staff_client.get(changelist, {"q": term}).status_code == 200
    cl = response.context["cl"]
    for spec in cl.filter_specs:
        for choice in spec.choices(cl):
            assert staff_client.get(changelist + choice["query_string"]).status_code == 200
    obj = model._default_manager.first()
    if obj is not None:
        change = reverse(f"admin:billing_{opts.model_name}_change", args=[obj.pk])
        assert staff_client.get(change).status_code == 200


# --- budget figures -----------------------------------------------------------------------------


def test_the_figures_are_the_current_periods_row(org_a, project_a, bob):
    b = budget(org_a, 10)
    BudgetPeriod.objects.create(
        budget=b, start=period_bounds("month", timezone.now())[0] - timedelta(days=40), spent=9
    )
    this_period(b, spent="1.25", reserved="0.5")
    usage(project_a, bob, cost="7")  # the row wins over the ledger

    figures = with_current_figures(Budget.objects.all()).get()

    assert (figures._spent, figures._reserved) == (Decimal("1.25"), Decimal("0.5"))


@pytest.mark.parametrize("period", ["month", "day", "lifetime"])
def test_without_a_row_the_figures_are_what_the_ledger_says(org_a, org_b, bob, alice, period):
    project_a = ProjectFactory(organization=org_a)
    other_project = ProjectFactory(organization=org_a)
    usage(project_a, bob, cost="0.000000000001")
    usage(project_a, bob, cost="1.1")
    usage(project_a, alice, cost="2.2")
    usage(other_project, bob, cost="4.4")
    usage(ProjectFactory(organization=org_b), None, cost="8.8")
    budgets = [
        budget(org_a, 100, period=period),
        budget(org_a, 100, period=period, scope="project", project=project_a),
        budget(org_a, 100, period=period, scope="member", project=project_a, user=bob),
        budget(org_b, 100, period=period),
    ]

    figures = {b.pk: (b._spent, b._reserved) for b in with_current_figures(Budget.objects.all())}

    assert figures == {
        b.pk: (ledger_spend(b, *period_bounds(period, timezone.now())), Decimal(0)) for b in budgets
    }
    assert [figures[b.pk][0] for b in budgets] == [
        Decimal("7.700000000001"),
        Decimal("3.300000000001"),
        Decimal("1.100000000001"),
        Decimal("8.8"),
    ]


def test_the_list_shows_spent_reserved_limit_bar_and_remaining(staff_client, org_a):
    this_period(budget(org_a, 10), spent="8.5", reserved="0.25")

    body = staff_client.get(BUDGETS).content.decode()

    assert "$8.50" in body
    assert "$0.25" in body
    assert "$10.00" in body
    assert "$1.25" in body  # remaining: 10 - 8.5 - 0.25
    assert 'width="85%"' in body
    assert "85%" in body


def test_small_amounts_keep_four_places_rounded_half_up(staff_client, org_a):
    this_period(budget(org_a, 1), spent="0.012345", reserved="0.00005")

    body = staff_client.get(BUDGETS).content.decode()

    assert "$0.0123" in body
    assert "$0.0001" in body


@pytest.fixture
def filter_budgets(org_a, org_b, project_a, project_b, bob):
    """Each budget named after the filters that should select it."""
    other_project = ProjectFactory(organization=org_a)
    usage(project_a, bob, cost="9")
    past = BudgetPeriod(
        start=period_bounds("month", timezone.now())[0] - timedelta(days=40), spent=10
    )
    made = {
        "80": budget(org_a, 10),
        "blocked": budget(org_a, 10, scope="project", project=project_a),
        "80 from the ledger": budget(org_a, 10, scope="member", project=project_a, user=bob),
        "80 blocked zero limit": budget(org_b, 0),
        "none": budget(org_b, 100, scope="project", project=project_b),
        "none last month": budget(org_a, 10, scope="project", project=other_project),
        "80 blocked lifetime": budget(org_a, 50, period="lifetime"),
    }
    this_period(made["80"], spent="8")
    this_period(made["blocked"], spent="7.99", reserved="2.01")
    this_period(made["none"], spent="1")
    past.budget = made["none last month"]
    past.save()
    this_period(made["80 blocked lifetime"], spent="50")
    assert made["80 blocked lifetime"].periods.get().start == LIFETIME_START
    return made


def test_the_80_percent_filter_selects_exactly_the_budgets_spent_80_percent(
    staff_client, filter_budgets
):
    response = staff_client.get(BUDGETS, {"used": "80"})

    assert listed(response) == {b.pk for name, b in filter_budgets.items() if "80" in name}


def test_the_blocked_filter_selects_spent_plus_reserved_at_the_limit(staff_client, filter_budgets):
    blocked = {b.pk for name, b in filter_budgets.items() if "blocked" in name}

    assert listed(staff_client.get(BUDGETS, {"blocked": "yes"})) == blocked
    assert listed(staff_client.get(BUDGETS, {"blocked": "no"})) == (
        {b.pk for b in filter_budgets.values()} - blocked
    )


def test_the_list_costs_the_same_queries_for_one_budget_or_many(staff_client, org_a, org_b):
    this_period(budget(org_a, 10), spent="1")
    staff_client.get(BUDGETS)  # what a process caches on its first page (content types) is read
    with CaptureQueriesContext(connection) as one:
        staff_client.get(BUDGETS)
    for limit in (1, 2, 3):
        this_period(budget(org_b, limit), spent="1")
    budget(org_a, 5, period="day")  # no row: from the ledger, still in the same query
    with CaptureQueriesContext(connection) as many:
        staff_client.get(BUDGETS)

    assert len(many) == len(one)


def test_organization_and_project_pages_show_their_budgets(staff_client, org_a, project_a, bob):
    this_period(budget(org_a, 20), spent="5")
    this_period(
        budget(org_a, 4, scope="member", project=project_a, user=bob), spent="1", reserved="1"
    )

    org_page = staff_client.get(reverse("admin:accounts_organization_change", args=[org_a.pk]))
    project_page = staff_client.get(reverse("admin:accounts_project_change", args=[project_a.pk]))

    org_body = org_page.content.decode()
    assert "$20.00" in org_body
    assert "$5.00" in org_body
    assert 'width="25%"' in org_body
    assert "$4.00" in org_body
    assert "$2.00" in org_body
    assert 'width="25%"' in org_body
    project_body = project_page.content.decode()
    assert "$4.00" in project_body
    assert "$1.00" in project_body
    assert "$20.00" not in project_body  # the organization's budget is not the project's


def test_the_organization_page_costs_the_same_queries_for_one_budget_or_many(staff_client, org_a):
    page = reverse("admin:accounts_organization_change", args=[org_a.pk])
    this_period(budget(org_a, 10), spent="1")
    staff_client.get(page)  # what a process caches on its first page (content types) is read
    with CaptureQueriesContext(connection) as one:
        staff_client.get(page)
    for limit in (1, 2, 3):
        budget(org_a, limit, period="day")
    with CaptureQueriesContext(connection) as many:
        staff_client.get(page)

    assert len(many) == len(one)


# --- the budget form --------------------------------------------------------------------------


def budget_form(**fields) -> dict:
    return {
        "scope": "organization",
        "project": "",
        "user": "",
        "period": "month",
        "limit_usd": "10",
        "soft_thresholds": "50,80,100",
        "enabled": "on",
        **fields,
    }


def form_errors(response) -> dict[str, list[str]]:
    return response.context["adminform"].form.errors


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"scope": "organization", "project": "A"}, "project", "leave empty"),
        ({"scope": "organization", "user": "bob"}, "user", "leave empty"),
        ({"scope": "project"}, "project", "needs a project"),
        ({"scope": "project", "project": "B"}, "project", "is not a project of Org A"),
        ({"scope": "project", "project": "A", "user": "bob"}, "user", "leave empty"),
        ({"scope": "member", "project": "A"}, "user", "needs the member"),
        ({"scope": "member", "project": "A", "user": "charlie"}, "user", "is not a member"),
        ({"scope": "member", "user": "bob"}, "project", "needs a project"),
        ({"soft_thresholds": "50,eighty"}, "soft_thresholds", "Whole percentages"),
    ],
)
def test_scope_and_fields_must_agree(
    staff_client, org_a, project_a, project_b, bob, charlie, fields, field, says
):
    names = {"A": project_a.pk, "B": project_b.pk, "bob": bob.pk, "charlie": charlie.pk}
    data = {key: names.get(value, value) for key, value in fields.items()}

    response = staff_client.post(
        reverse("admin:billing_budget_add"), budget_form(organization=org_a.pk, **data)
    )

    assert response.status_code == 200
    assert says in " ".join(form_errors(response)[field])
    assert not Budget.objects.exists()


@pytest.mark.parametrize(
    "fields",
    [
        {"scope": "organization"},
        {"scope": "project", "project": "A"},
        {"scope": "member", "project": "A", "user": "bob"},
    ],
)
def test_consistent_budgets_are_saved(staff_client, org_a, project_a, bob, fields):
    names = {"A": project_a.pk, "bob": bob.pk}
    data = {key: names.get(value, value) for key, value in fields.items()}

    response = staff_client.post(
        reverse("admin:billing_budget_add"), budget_form(organization=org_a.pk, **data)
    )

    assert response.status_code == 302
    saved = Budget.objects.get()
    assert (saved.scope, saved.limit_usd) == (fields["scope"], Decimal(10))


def test_the_change_form_sets_the_limit_but_not_what_the_budget_covers(
    staff_client, org_a, project_a, bob
):
    b = budget(org_a, 100, scope="project", project=project_a)
    change = reverse("admin:billing_budget_change", args=[b.pk])
    same = budget_form(organization=org_a.pk, scope="project", project=project_a.pk)

    saved = staff_client.post(change, {**same, "limit_usd": "0.01"})
    refused = staff_client.post(change, {**same, "scope": "member", "user": bob.pk})

    assert saved.status_code == 302
    assert "cannot change" in " ".join(form_errors(refused)["scope"])
    assert "cannot change" in " ".join(form_errors(refused)["user"])
    b.refresh_from_db()
    assert (b.scope, b.user, b.limit_usd) == ("project", None, Decimal("0.01"))


def test_a_budget_added_on_the_project_page_belongs_to_the_projects_organization(
    staff_client, org_a, project_a, bob
):
    data = {
        "organization": org_a.pk,
        "name": project_a.name,
        "slug": project_a.slug,
        "default_system_prompt": "",
        "budgets-TOTAL_FORMS": "1",
        "budgets-INITIAL_FORMS": "0",
        **{f"budgets-0-{k}": v for k, v in budget_form(scope="member", user=bob.pk).items()},
    }

    response = staff_client.post(
        reverse("admin:accounts_project_change", args=[project_a.pk]), data
    )

    assert response.status_code == 302, response.context["inline_admin_formsets"][0].formset.errors
    saved = Budget.objects.get()
    assert (saved.organization, saved.project, saved.user) == (org_a, project_a, bob)


# --- actions ------------------------------------------------------------------------------------


def raise_limit(client, budgets, **data):
    return client.post(
        BUDGETS,
        {"action": "raise_limit", "_selected_action": [b.pk for b in budgets], **data},
    )


def test_raise_limit_asks_for_the_amount_first(staff_client, org_a):
    b = budget(org_a, "0.01")

    response = raise_limit(staff_client, [b], index="0")

    assert response.status_code == 200
    assert "admin/billing/budget/raise_limit.html" in [t.name for t in response.templates]
    assert 'name="amount"' in response.content.decode()
    b.refresh_from_db()
    assert b.limit_usd == Decimal("0.01")


def test_raise_limit_raises_each_limit_by_exactly_the_amount(staff_client, org_a, org_b):
    small, large, untouched = budget(org_a, "0.01"), budget(org_b, "12345.678901"), budget(org_b, 1)

    response = raise_limit(staff_client, [small, large], apply="1", amount="0.000001")

    assert response.status_code == 302
    for b in (small, large, untouched):
        b.refresh_from_db()
    assert small.limit_usd == Decimal("0.010001")
    assert large.limit_usd == Decimal("12345.678902")
    assert untouched.limit_usd == Decimal(1)


@pytest.mark.parametrize(
    ("amount", "says"),
    [("0", "greater than zero"), ("-5", "greater than zero"), ("ten", "Enter a number")],
)
def test_raise_limit_needs_a_positive_decimal(staff_client, org_a, amount, says):
    b = budget(org_a, 1)

    response = raise_limit(staff_client, [b], apply="1", amount=amount)

    assert response.status_code == 200
    assert says in " ".join(response.context["form"].errors["amount"])
    b.refresh_from_db()
    assert b.limit_usd == Decimal(1)


def test_raise_limit_refuses_to_go_past_the_largest_limit(staff_client, org_a):
    b = budget(org_a, "99999999")

    response = raise_limit(staff_client, [b], apply="1", amount="1")

    assert "past the largest limit" in " ".join(response.context["form"].errors["amount"])


def test_disable_disables_the_selected_budgets(staff_client, org_a, org_b):
    chosen, other = budget(org_a, 1), budget(org_b, 1)

    response = staff_client.post(
        BUDGETS, {"action": "disable", "_selected_action": [chosen.pk], "index": "0"}
    )

    assert response.status_code == 302
    assert Budget.objects.get(pk=chosen.pk).enabled is False
    assert Budget.objects.get(pk=other.pk).enabled is True


# --- prices ---------------------------------------------------------------------------------------


def test_a_new_price_is_a_new_row_and_a_charged_one_is_read_only(staff_client, project_a):
    charged = ModelPrice.objects.create(
        model="fake-gpt*",
        input_per_million=Decimal(1),
        cached_input_per_million=Decimal(1),
        output_per_million=Decimal(1),
        effective_from="2024-01-01",
    )
    usage(project_a, price=charged)

    form = staff_client.get(reverse("admin:billing_modelprice_add")).content.decode()
    response = staff_client.post(
        reverse("admin:billing_modelprice_add"),
        {
            "model": "fake-gpt*",
            "input_per_million": "2.5",
            "cached_input_per_million": "1.25",
            "output_per_million": "10",
            "effective_from": "2030-01-01",
        },
    )
    change = staff_client.get(reverse("admin:billing_modelprice_change", args=[charged.pk]))

    assert "later" in form
    assert "history is never rewritten" in form
    assert response.status_code == 302
    assert ModelPrice.objects.filter(model="fake-gpt*").count() == 2
    assert change.context["adminform"].form.fields == {}  # every price field is read-only


# --- the ledger -------------------------------------------------------------------------------


def test_the_ledger_cannot_be_added_changed_or_deleted_in_the_admin(staff_client, project_a, bob):
    record = usage(project_a, bob)
    change = reverse("admin:billing_usagerecord_change", args=[record.pk])

    view = staff_client.get(change)
    assert view.status_code == 200
    assert 'name="_save"' not in view.content.decode()
    assert staff_client.post(change, {"model": "free"}).status_code == 403
    assert staff_client.get(reverse("admin:billing_usagerecord_add")).status_code == 403
    delete = reverse("admin:billing_usagerecord_delete", args=[record.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    actions = [name for name, _ in staff_client.get(USAGE).context["action_form"].fields[
        "action"].choices]  # fmt: skip
    assert "delete_selected" not in actions
    assert "export_csv" in actions
    staff_client.post(USAGE, {"action": "delete_selected", "_selected_action": [record.pk],
                              "post": "yes", "index": "0"})  # fmt: skip
    assert UsageRecord.objects.filter(pk=record.pk, model="fake-gpt").exists()


def test_saving_an_existing_ledger_row_raises(project_a):
    record = usage(project_a)
    record.cost = Decimal(0)

    with pytest.raises(TypeError, match="append-only"):
        record.save()
    with pytest.raises(TypeError, match="append-only"):
        record.delete()
    with pytest.raises(TypeError, match="append-only"):
        UsageRecord.objects.filter(pk=record.pk).update(cost=0)


def test_the_ledger_list_shows_who_what_and_the_cost(staff_client, project_a, bob):
    usage(project_a, bob, cost="0.012345678901", prompt_tokens=1200, completion_tokens=34)

    body = staff_client.get(USAGE).content.decode()

    assert "bob@example.com" in body
    assert "1,200 / 0 / 34" in body
    assert 'title="0.012345678901"' in body
    assert "$0.0123" in body
    assert reverse("admin:billing_usagerecord_summary") in body


def test_csv_export_has_a_header_and_one_exact_row_per_record(staff_client, project_a, bob):
    first = usage(project_a, bob, cost="0.000123456789", latency_ms=420)
    second = usage(project_a, None, cost="12.5", estimated=True, source="title")
    usage(project_a, bob, cost="1")  # not selected

    response = staff_client.post(
        USAGE,
        {"action": "export_csv", "_selected_action": [first.pk, second.pk], "index": "0"},
    )

    assert response["Content-Type"] == "text/csv"
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == CSV_HEADER
    assert len(rows) == 3
    by_id = {row[0]: dict(zip(CSV_HEADER, row, strict=True)) for row in rows[1:]}
    one, two = by_id[str(first.request_id)], by_id[str(second.request_id)]
    stored = UsageRecord.objects.get(pk=first.pk).cost
    assert one["cost_usd"] == str(stored) == "0.000123456789"
    assert Decimal(two["cost_usd"]) == Decimal("12.5")
    assert (one["user"], one["project"], one["organization"]) == (
        "bob@example.com",
        "project-a",
        "org-a",
    )
    assert (two["user"], two["estimated"], two["source"], one["latency_ms"]) == (
        "",
        "True",
        "title",
        "420",
    )


def test_the_summary_shows_this_months_cost_tokens_and_calls_per_organization(
    staff_client, project_a, project_b, bob
):
    last_month = period_bounds("month", timezone.now())[0] - timedelta(days=3)
    with mock.patch("django.utils.timezone.now", return_value=last_month):
        usage(project_a, bob, cost="100")  # not this month
    usage(project_a, bob, cost="0.25", prompt_tokens=100, completion_tokens=20)
    usage(project_a, None, cost="0.000001", prompt_tokens=3, completion_tokens=0)
    usage(project_b, None, cost="2", prompt_tokens=1000, completion_tokens=1)

    response = staff_client.get(reverse("admin:billing_usagerecord_summary"))

    assert response.status_code == 200
    rows = [
        (r["organization__name"], r["cost"], r["tokens"], r["calls"])
        for r in response.context["rows"]
    ]
    assert rows == [
        ("Org B", Decimal(2), 1001, 1),
        ("Org A", Decimal("0.250001"), 123, 2),
    ]
    body = response.content.decode()
    assert "$2.00" in body
    assert "$0.25" in body
    assert "1,001" in body
    org_b_link = re.search(r'href="([^"]*organization__id__exact=\d+[^"]*)">Org B', body)[1]
    org_b_rows = staff_client.get(org_b_link.replace("&amp;", "&"))
    assert [r.organization.name for r in org_b_rows.context["cl"].result_list] == ["Org B"]


def test_the_summary_is_for_staff_only(client_for, alice):
    response = client_for(alice).get(reverse("admin:billing_usagerecord_summary"))

    assert response.status_code == 302


# --- the acceptance test: a limit set in the admin stops a member's chat; raising it frees it ---


@pytest.mark.django_db(transaction=True)
async def test_a_limit_set_in_the_admin_stops_the_chat_until_staff_raise_it(
    staff_client, open_socket, make_conversation, bob, project_a, fake_upstream
):
    price = await database_sync_to_async(ModelPrice.objects.create)(
        model="fake-gpt*",
        input_per_million=Decimal("1000.00"),
        cached_input_per_million=Decimal("1000.00"),
        output_per_million=Decimal("1000.00"),
        effective_from="2024-01-01",
    )
    # Even a one-token prompt, with the reply capped at the default, could cost more than $0.01.
    reply_cap = settings.CHAT_DEFAULT_REPLY_TOKENS
    worst = pricing.worst_case(price, prompt_tokens=1, max_tokens=reply_cap)
    assert worst == Decimal("0.001") * (1 + reply_cap) > Decimal("0.01")

    post = database_sync_to_async(staff_client.post)
    response = await post(
        reverse("admin:billing_budget_add"),
        budget_form(
            organization=project_a.organization_id,
            scope="project",
            project=project_a.pk,
            limit_usd="0.01",
            _save="Save",
        ),
    )
    assert response.status_code == 302
    limited = await database_sync_to_async(Budget.objects.get)()
    assert (limited.scope, limited.project_id, limited.period) == ("project", project_a.pk, "month")
    assert limited.limit_usd == Decimal("0.01")

    conversation = await database_sync_to_async(make_conversation)(
        bob,
        project_a,
        title="Budgets",  # titled already: no second, title call to count
    )
    _, socket = await open_socket(bob, conversation.pk)

    await socket.send(type="message", content="hello there")
    [error] = await socket.until("error")

    assert error["code"] == "budget_exceeded"
    assert "$0.01 a month" in error["message"]  # the limit
    resets = period_bounds("month", timezone.now())[1]
    assert f"resets on {resets:%Y-%m-%d} 00:00 UTC" in error["message"]
    assert sum(fake_upstream.request_counts.values()) == 0
    assert await database_sync_to_async(UsageRecord.objects.count)() == 0

    response = await post(
        BUDGETS,
        {"action": "raise_limit", "_selected_action": [limited.pk], "apply": "1", "amount": "9.99"},
    )
    assert response.status_code == 302
    await database_sync_to_async(limited.refresh_from_db)()
    assert limited.limit_usd == Decimal("10.00")

    await socket.send(type="message", content="hello again")
    events = await socket.until("done", "error")

    assert events[-1]["type"] == "done", events[-1]
    assert events[-1]["message"]["state"] == "complete"
    assert fake_upstream.request_counts["fake-gpt"] == 1
    [record] = await database_sync_to_async(list)(UsageRecord.objects.all())
    assert record.cost > 0
    assert record.user_id == bob.pk
    assert record.project_id == project_a.pk
    period = await database_sync_to_async(BudgetPeriod.objects.get)(budget=limited)
    assert (period.spent, period.reserved) == (record.cost, Decimal(0))
