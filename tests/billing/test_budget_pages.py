"""Budgets and rate limits on pages: owners and admins manage them, members read the ones that
apply to them, outsiders get 404; a change holds from the very next call, and the counters stay
equal to the ledger whatever is changed."""

import json
from datetime import UTC, datetime
from decimal import Decimal
from unittest.mock import patch

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.api_keys import api_key_create
from billing import services
from billing.models import Budget, BudgetAlert, BudgetPeriod, RateLimit, UsageRecord
from billing.services import CallContext, ledger_spend, period_bounds
from core.money import usd
from tests.chat.conftest import make_key, serve
from tests.conftest import membership

pytestmark = pytest.mark.django_db

OCT_3 = datetime(2026, 10, 3, 12, tzinfo=UTC)
OCT_15 = datetime(2026, 10, 15, 9, tzinfo=UTC)


def chat(key: str):
    """One call of the OpenAI-compatible endpoint with a project key."""
    return Client().post(
        "/v1/chat/completions",
        data=json.dumps(
            {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        ),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def error_code(answer) -> str:
    return answer.json()["error"]["code"]


def budgets_url(org) -> str:
    return reverse("budgets", args=[org.slug])


def edit_url(budget: Budget) -> str:
    return reverse("budget_edit", args=[budget.organization.slug, budget.pk])


def limits_url(project) -> str:
    return reverse("project_limits", args=[project.organization.slug, project.slug])


def new_budget(**fields) -> dict:
    """What the "Add a budget" form posts."""
    return {"period": "month", "soft_thresholds": "50, 80, 100", "enabled": "on", **fields}


def edited(budget: Budget, **fields) -> dict:
    """What the edit form posts: the budget as it is, with ``fields`` changed."""
    data = {
        "period": budget.period,
        "limit_usd": str(budget.limit_usd),
        "soft_thresholds": budget.soft_thresholds,
        "enabled": "on" if budget.enabled else "",
        **fields,
    }
    return {name: value for name, value in data.items() if value != ""}


def in_project(project, user) -> CallContext:
    return CallContext(
        organization_id=project.organization_id,
        project_id=project.pk,
        user_id=user.pk,
        model="fake-gpt",
    )


def call(context: CallContext, *, completion_tokens: int = 100) -> UsageRecord:
    """A call of 100 prompt tokens held for 200 reply tokens, settled at ``completion_tokens``
    ($0.10 + $0.002 each at fake_price)."""
    reservation = services.quota_reserve(context=context, prompt_tokens=100, max_tokens=200)
    return services.quota_settle(
        reservation=reservation,
        status=UsageRecord.Status.OK,
        prompt_tokens=100,
        completion_tokens=completion_tokens,
    )


def counter(budget: Budget) -> Decimal:
    """What the current period's counter says (the one the next call locks)."""
    budget.refresh_from_db()
    start, _ = period_bounds(budget.period, timezone.now())
    return BudgetPeriod.objects.get(budget=budget, start=start).spent


def ledger(budget: Budget) -> Decimal:
    budget.refresh_from_db()
    return ledger_spend(budget, *period_bounds(budget.period, timezone.now()))


@pytest.fixture
def ci_key(alice, project_a):
    return api_key_create(
        actor=membership(alice, project_a.organization),
        project=project_a,
        name="CI",
        scopes=["chat"],
    ).key


@pytest.fixture
def budgets(org_a, project_a, alice, bob, ci_key):
    """One budget of each kind in org A: the organization's, the project's, Bob's and Alice's
    in the project, and the CI key's."""
    make = Budget.objects.create
    return {
        "organization": make(organization=org_a, scope="organization", limit_usd=Decimal(100)),
        "project": make(
            organization=org_a, scope="project", project=project_a, limit_usd=Decimal(20)
        ),
        "bob": make(
            organization=org_a,
            scope="member",
            project=project_a,
            user=bob,
            limit_usd=Decimal("0.0001"),
            period="day",
        ),
        "alice": make(
            organization=org_a, scope="member", project=project_a, user=alice, limit_usd=5
        ),
        "key": make(
            organization=org_a,
            scope="api_key",
            project=project_a,
            api_key=ci_key,
            limit_usd=3,
            period="lifetime",
        ),
    }


# --- reading -------------------------------------------------------------------------------


def test_it_shows_an_owner_every_budget_with_spend_held_and_reset(
    client_for, alice, org_a, budgets
):
    bob_budget = budgets["bob"]
    start, end = period_bounds("day", timezone.now())
    BudgetPeriod.objects.create(
        budget=bob_budget, start=start, spent=Decimal("0.0022"), reserved=Decimal("0.00005")
    )

    page = client_for(alice).get(budgets_url(org_a))

    assert page.status_code == 200
    html = page.content.decode()
    for budget in budgets.values():
        assert f'data-testid="budget-{budget.pk}"' in html
        assert edit_url(budget) in html
    # Bob's: the display rule (4 places under a dollar), exact figure in the title, the hold,
    # what is left, and when it resets.
    assert '<strong title="0.002200000000">$0.0022</strong> spent of $0.0001' in html
    assert "$0.0001 held for calls in flight" in html
    assert "$0.00 left" in html
    assert f"resets {end:%Y-%m-%d} 00:00 UTC" in html
    assert "lifetime: never resets" in html  # the key's
    assert "alerts at 50, 80, 100%" in html
    assert 'action="' + budgets_url(org_a) + '"' in html  # the form to add one


def test_a_member_reads_only_the_budgets_that_apply_to_them(client_for, bob, org_a, budgets):
    page = client_for(bob).get(budgets_url(org_a))

    assert page.status_code == 200
    html = page.content.decode()
    for name in ("organization", "project", "bob"):
        assert f'data-testid="budget-{budgets[name].pk}"' in html
    for name in ("alice", "key"):  # another member's, and a key's (no member's calls)
        assert f'data-testid="budget-{budgets[name].pk}"' not in html
    assert 'data-testid="member-budgets-note"' in html
    assert "/budgets/" + str(budgets["bob"].pk) not in html  # no Change links
    assert '<form method="post" action="' + budgets_url(org_a) not in html


def test_a_member_is_refused_every_change(client_for, bob, org_a, budgets):
    client = client_for(bob)
    bob_budget = budgets["bob"]

    assert (
        client.post(budgets_url(org_a), new_budget(scope="organization", limit_usd="1")).status_code
        == 403
    )
    assert client.get(edit_url(bob_budget)).status_code == 403
    assert (
        client.post(edit_url(bob_budget), edited(bob_budget, limit_usd="1000")).status_code == 403
    )
    delete = reverse("budget_delete", args=[org_a.slug, bob_budget.pk])
    assert client.post(delete).status_code == 403
    assert (
        client.post(
            limits_url(budgets["project"].project), {"requests_per_minute": "1"}
        ).status_code
        == 403
    )
    bob_budget.refresh_from_db()
    assert bob_budget.limit_usd == Decimal("0.0001")
    assert Budget.objects.count() == 5
    assert not RateLimit.objects.exists()


def test_an_outsider_gets_404_even_for_a_budget_id_under_their_own_organization(
    client_for, charlie, org_b, budgets
):
    client = client_for(charlie)
    own_org_url = reverse("budget_edit", args=[org_b.slug, budgets["organization"].pk])

    assert client.get(own_org_url).status_code == 404
    assert client.post(own_org_url, {"limit_usd": "1000"}).status_code == 404
    assert (
        client.post(reverse("budget_delete", args=[org_b.slug, budgets["project"].pk])).status_code
        == 404
    )
    assert Budget.objects.filter(organization__slug="org-a").count() == 5


# --- adding --------------------------------------------------------------------------------


def test_it_adds_a_budget_of_each_kind(client_for, alice, bob, org_a, project_a, ci_key):
    client = client_for(alice)
    posts = [
        new_budget(scope="organization", limit_usd="250"),
        new_budget(scope="project", project=project_a.pk, limit_usd="0.50", period="day"),
        new_budget(scope="member", project=project_a.pk, user=bob.pk, limit_usd="2"),
        # A key's project is the key's: no need to pick it.
        new_budget(scope="api_key", api_key=ci_key.pk, limit_usd="1", period="lifetime",
                   soft_thresholds="90 100"),
    ]  # fmt: skip

    for data in posts:
        response = client.post(budgets_url(org_a), data)
        assert response.status_code == 302, response.content.decode()
        assert response.url == budgets_url(org_a)

    made = list(Budget.objects.order_by("id"))
    assert [(b.scope, b.project, b.user, b.api_key, b.period, b.limit_usd) for b in made] == [
        ("organization", None, None, None, "month", Decimal(250)),
        ("project", project_a, None, None, "day", Decimal("0.5")),
        ("member", project_a, bob, None, "month", Decimal(2)),
        ("api_key", project_a, None, ci_key, "lifetime", Decimal(1)),
    ]
    assert made[3].soft_thresholds == "90,100"
    assert "Added a budget for API key CI" in client.get(budgets_url(org_a)).content.decode()


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"limit_usd": "-1"}, "limit_usd", "greater than or equal to 0"),
        ({"limit_usd": "abc"}, "limit_usd", "Enter a number."),
        ({"limit_usd": "0.0000001"}, "limit_usd", "no more than 6 decimal places"),
        ({"limit_usd": ""}, "limit_usd", "This field is required."),
        ({"soft_thresholds": "0, 50"}, "soft_thresholds", "from 1 to 100"),
        ({"soft_thresholds": "50, 101"}, "soft_thresholds", "from 1 to 100"),
        ({"soft_thresholds": "fifty"}, "soft_thresholds", "from 1 to 100"),
        ({"period": "week"}, "period", "Select a valid choice."),
        ({"scope": "project"}, "project", "A project budget needs a project."),
        ({"scope": "member"}, "project", "A member budget needs a project."),
        ({"scope": "api_key"}, "api_key", "An API key budget needs the key."),
    ],
)
def test_it_shows_what_is_wrong_next_to_the_field(client_for, alice, org_a, data, field, message):
    post = new_budget(scope="organization", limit_usd="10") | data

    response = client_for(alice).post(budgets_url(org_a), post)

    assert response.status_code == 200
    form = response.context["form"]
    assert field in form.errors, form.errors
    assert message in " ".join(form.errors[field])
    assert message.split(" (")[0] in response.content.decode().replace("&#x27;", "'")
    assert not Budget.objects.exists()


def test_it_refuses_what_the_scope_does_not_name_and_another_tenants_objects(
    client_for, alice, bob, charlie, org_a, project_a, project_b
):
    client = client_for(alice)
    cases = [
        # Project X picked, but the scope left at "organization": not an organization budget.
        (new_budget(scope="organization", project=project_a.pk, limit_usd="1"), "project"),
        (new_budget(scope="project", project=project_a.pk, user=bob.pk, limit_usd="1"), "user"),
        # Org B's project and member are no choices of org A's form.
        (new_budget(scope="project", project=project_b.pk, limit_usd="1"), "project"),
        (new_budget(scope="member", project=project_a.pk, user=charlie.pk, limit_usd="1"),
         "user"),
    ]  # fmt: skip

    for data, field in cases:
        response = client.post(budgets_url(org_a), data)
        assert response.status_code == 200
        assert field in response.context["form"].errors, (data, response.context["form"].errors)
    assert not Budget.objects.exists()


# --- changing: it holds from the very next call --------------------------------------------


def test_a_budget_lowered_on_the_page_refuses_the_very_next_call(
    client_for, alice, org_a, project_a, fake_upstream, fake_price
):
    serve(project_a, fake_upstream)
    key = make_key(alice, org_a, project_a)
    budget = Budget.objects.create(organization=org_a, scope="organization", limit_usd=100)
    assert chat(key).status_code == 200  # the gateway now keeps the budget in memory
    spent = counter(budget)
    assert spent > 0

    response = client_for(alice).post(edit_url(budget), edited(budget, limit_usd="0.0001"))

    assert response.status_code == 302
    refused = chat(key)
    assert refused.status_code == 429
    assert error_code(refused) == "budget_exceeded"
    message = refused.json()["error"]["message"]
    assert f"$0.0001 a month, {services.money(spent)} spent" in message
    assert counter(budget) == ledger(budget) == spent  # nothing charged for the refusal


def test_a_budget_deleted_on_the_page_stops_refusing_at_once(
    client_for, alice, org_a, project_a, fake_upstream, fake_price
):
    serve(project_a, fake_upstream)
    key = make_key(alice, org_a, project_a)
    budget = Budget.objects.create(organization=org_a, scope="organization", limit_usd=0)
    assert chat(key).status_code == 429

    response = client_for(alice).post(reverse("budget_delete", args=[org_a.slug, budget.pk]))

    assert response.status_code == 302
    assert not Budget.objects.exists()
    assert chat(key).status_code == 200


def test_a_limit_lowered_below_the_spending_alerts_at_once(
    client_for, alice, bob, org_a, project_a, fake_price, mailoutbox,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    budget = Budget.objects.create(organization=org_a, scope="organization", limit_usd=100)
    call(in_project(project_a, bob))  # $0.30: far from any threshold of $100
    assert not BudgetAlert.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        client_for(alice).post(edit_url(budget), edited(budget, limit_usd="0.35"))
        client_for(alice).post(edit_url(budget), edited(budget, limit_usd="0.34"))

    # $0.30 of $0.35 is past 50 and 80 %, not 100: recorded and mailed once each, however
    # often the limit changes within the period.
    assert sorted(BudgetAlert.objects.values_list("threshold", flat=True)) == [50, 80]
    assert sorted(m.subject for m in mailoutbox) == [
        "[Org A] the Org A budget passed 50% of its limit",
        "[Org A] the Org A budget passed 80% of its limit",
    ]
    home = client_for(bob).get(reverse("home")).content.decode()
    assert f"Org A has used 80% of its {usd(Decimal('0.34'))} monthly budget." in home


def test_changing_the_period_counts_each_period_from_the_ledger(
    client_for, alice, bob, org_a, project_a, fake_price
):
    """Month → day → month → day within one month: each switch starts the counter of the
    period now current from the ledger, so none is ever read stale — the month's counter,
    left behind while the budget counted days, included."""
    budget = Budget.objects.create(organization=org_a, scope="organization", limit_usd=100)

    def switch_to(period: str) -> None:
        response = client.post(edit_url(budget), edited(budget, period=period))
        assert (response.status_code, response.url) == (302, budgets_url(org_a))

    with patch("django.utils.timezone.now", return_value=OCT_3):
        call(in_project(project_a, bob), completion_tokens=10)  # $0.12, on Oct 3
    with patch("django.utils.timezone.now", return_value=OCT_15):
        client = client_for(alice)  # a session of that day
        assert counter(budget) == Decimal("0.12")  # month
        switch_to("day")
        call(in_project(project_a, bob), completion_tokens=20)  # $0.14
        assert counter(budget) == ledger(budget) == Decimal("0.14")  # Oct 15 only

        switch_to("month")
        assert counter(budget) == ledger(budget) == Decimal("0.26")  # not the stale 0.12
        call(in_project(project_a, bob), completion_tokens=30)  # $0.16
        assert counter(budget) == ledger(budget) == Decimal("0.42")

        switch_to("day")
        assert counter(budget) == ledger(budget) == Decimal("0.30")  # not the stale 0.14
        call(in_project(project_a, bob), completion_tokens=40)  # $0.18
        assert counter(budget) == ledger(budget) == Decimal("0.48")

        switch_to("lifetime")
        call(in_project(project_a, bob), completion_tokens=0)  # $0.10
        assert counter(budget) == ledger(budget) == Decimal("0.70")


def test_a_budget_turned_back_on_counts_what_was_spent_while_it_was_off(
    client_for, alice, bob, org_a, project_a, fake_price
):
    budget = Budget.objects.create(organization=org_a, scope="organization", limit_usd="0.5")
    client = client_for(alice)
    call(in_project(project_a, bob))  # $0.30

    assert client.post(edit_url(budget), edited(budget, enabled="")).status_code == 302
    call(in_project(project_a, bob))  # $0.30 more: not counted by a budget that is off
    call(in_project(project_a, bob))
    assert client.post(edit_url(budget), edited(budget, enabled="on")).status_code == 302

    assert counter(budget) == ledger(budget) == Decimal("0.90")
    with pytest.raises(services.QuotaExceeded):
        services.quota_reserve(context=in_project(project_a, bob), prompt_tokens=1, max_tokens=1)


def test_an_edit_shows_what_is_wrong_and_changes_nothing(client_for, alice, budgets):
    budget = budgets["project"]

    response = client_for(alice).post(
        edit_url(budget), edited(budget, limit_usd="-5", soft_thresholds="150")
    )

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert set(errors) == {"limit_usd", "soft_thresholds"}
    budget.refresh_from_db()
    assert (budget.limit_usd, budget.soft_thresholds) == (Decimal(20), "50,80,100")


# --- rate limits ---------------------------------------------------------------------------


@pytest.fixture
def fresh_rate_counts():
    """No count of this minute left by another test's project of the same id."""
    cache.clear()
    yield
    cache.clear()


def test_a_rate_limit_set_on_the_page_refuses_the_next_call(
    client_for, alice, org_a, project_a, fake_upstream, fake_price, fresh_rate_counts
):
    serve(project_a, fake_upstream)
    key = make_key(alice, org_a, project_a)
    assert chat(key).status_code == 200

    response = client_for(alice).post(limits_url(project_a), {"requests_per_minute": "1"})

    assert response.status_code == 302
    limit = RateLimit.objects.get(project=project_a)
    assert (limit.requests_per_minute, limit.tokens_per_minute) == (1, None)
    assert chat(key).status_code == 200  # the first of this minute's one
    refused = chat(key)
    assert refused.status_code == 429
    assert error_code(refused) == "rate_limit_exceeded"

    # Emptied: no limit at all, and no row left.
    emptied = {"requests_per_minute": "", "tokens_per_minute": ""}
    assert client_for(alice).post(limits_url(project_a), emptied).status_code == 302
    assert not RateLimit.objects.exists()
    assert chat(key).status_code == 200


@pytest.mark.parametrize("value", ["0", "-3", "many", "2147483648"])
def test_a_rate_limit_must_be_a_whole_number_from_1(client_for, alice, project_a, value):
    response = client_for(alice).post(limits_url(project_a), {"tokens_per_minute": value})

    assert response.status_code == 200
    assert "tokens_per_minute" in response.context["form"].errors
    assert not RateLimit.objects.exists()


def test_a_keys_own_rate_limit_is_set_on_its_page(client_for, alice, bob, project_a, ci_key):
    url = reverse("api_key_limits", args=[project_a.organization.slug, project_a.slug, ci_key.pk])

    assert client_for(bob).get(url).status_code == 403
    response = client_for(alice).post(url, {"requests_per_minute": "5", "tokens_per_minute": "900"})

    assert response.status_code == 302
    assert response.url == limits_url(project_a)
    ci_key.refresh_from_db()
    assert (ci_key.requests_per_minute, ci_key.tokens_per_minute) == (5, 900)
    page = client_for(alice).get(limits_url(project_a)).content.decode()
    assert "900" in page
    assert url in page


def test_a_member_reads_the_projects_limits_but_not_its_keys(
    client_for, bob, project_a, budgets, ci_key
):
    RateLimit.objects.create(project=project_a, requests_per_minute=60, tokens_per_minute=None)

    page = client_for(bob).get(limits_url(project_a))

    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-testid="project-rate-limits"' in html
    assert "<dd>60</dd>" in html
    assert ci_key.display not in html
    assert f'data-testid="budget-{budgets["project"].pk}"' in html
    assert f'data-testid="budget-{budgets["key"].pk}"' not in html


# --- the banner ------------------------------------------------------------------------------


def test_the_banner_shows_on_the_home_page_of_every_member_and_nobody_else(
    client_for, alice, bob, charlie, org_a, project_a, fake_price
):
    Budget.objects.create(organization=org_a, scope="organization", limit_usd="0.5")
    call(in_project(project_a, bob))  # $0.30 of $0.50: past 50 %

    for person in (alice, bob):
        assert f"Org A has used 50% of its {usd(Decimal('0.5'))} monthly budget." in (
            client_for(person).get(reverse("home")).content.decode()
        )
    assert "Org A" not in client_for(charlie).get(reverse("home")).content.decode()


def test_the_banner_leaves_out_an_organization_the_session_has_not_passed_two_factor_for(
    client_for, bob, org_a, project_a, fake_price
):
    Budget.objects.create(organization=org_a, scope="organization", limit_usd="0.5")
    call(in_project(project_a, bob))
    org_a.require_two_factor = True
    org_a.save()

    assert "monthly budget" not in client_for(bob).get(reverse("home")).content.decode()


def test_the_banner_costs_one_query_on_the_home_page_and_none_off_it(
    client_for, alice, org_a, project_a, fake_price
):
    Budget.objects.create(organization=org_a, scope="organization", limit_usd="0.5")
    call(in_project(project_a, alice))
    client = client_for(alice)

    with CaptureQueriesContext(connection) as home:
        page = client.get(reverse("home"))
    with CaptureQueriesContext(connection) as elsewhere:
        client.get(reverse("two_factor"))  # a page of no organization

    assert "monthly budget" in page.content.decode()
    assert len([q for q in home if "billing_" in q["sql"]]) == 1
    assert not [q for q in elsewhere if "billing_" in q["sql"]]
