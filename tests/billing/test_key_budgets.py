"""Budgets per API key: a key's spending is limited on its own, beside its project's."""

from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from accounts.api_keys import CreatedKey, api_key_create
from accounts.models import ApiKey, Project
from billing import services
from billing.admin import with_current_figures
from billing.models import Budget, BudgetAlert, BudgetPeriod, Hold, UsageRecord
from billing.selectors import UsageScope, budget_statuses, current_budget_banners
from billing.services import CallContext, QuotaExceeded, ledger_spend, period_bounds
from tests.conftest import membership
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db


def make_key(owner, project: Project, name: str) -> CreatedKey:
    return api_key_create(
        actor=membership(owner, project.organization), project=project, name=name, scopes=["chat"]
    )


def by_key(key: ApiKey, model: str = "fake-gpt") -> CallContext:
    """A REST call: made by a key, no user."""
    return CallContext(
        organization_id=key.project.organization_id,
        project_id=key.project_id,
        user_id=None,
        model=model,
        source=UsageRecord.Source.API,
        api_key_id=key.pk,
    )


def call(context: CallContext, *, completion_tokens: int = 100) -> UsageRecord:
    """Reserve 100 in / 200 out ($0.50 worst case at fake_price) and settle 100 in and
    ``completion_tokens`` out ($0.10 + $0.002 each)."""
    reservation = services.quota_reserve(context=context, prompt_tokens=100, max_tokens=200)
    return services.quota_settle(
        reservation=reservation,
        status=UsageRecord.Status.OK,
        prompt_tokens=100,
        completion_tokens=completion_tokens,
    )


@pytest.fixture
def ci(alice, project_a) -> CreatedKey:
    return make_key(alice, project_a, "CI")


@pytest.fixture
def support(alice, project_a) -> CreatedKey:
    return make_key(alice, project_a, "Support bot")


def key_budget(key: ApiKey, limit: str, **fields) -> Budget:
    return Budget.objects.create(
        organization=key.project.organization,
        scope=Budget.Scope.API_KEY,
        project=key.project,
        api_key=key,
        limit_usd=Decimal(limit),
        **fields,
    )


# --- the quota service ---------------------------------------------------------------------------


def test_it_refuses_a_call_over_the_keys_budget_but_not_another_keys(
    fake_price, ci, support, alice, project_a
):
    budget = key_budget(ci.key, "0.60")
    call(by_key(ci.key))  # spends $0.30

    with pytest.raises(QuotaExceeded) as info:  # 0.30 + 0.50 worst case > 0.60
        services.quota_reserve(context=by_key(ci.key), prompt_tokens=100, max_tokens=200)

    error = info.value
    assert error.code == "budget_exceeded"
    assert (
        f"This would go over the budget of API key CI (lgw_{ci.plaintext[4:12]}…"
        f"{ci.plaintext[-4:]}): $0.60 a month, $0.30 spent."
    ) in error.message
    assert ci.plaintext not in error.message
    assert BudgetPeriod.objects.get(budget=budget).reserved == 0
    # The same project's other key, and its people in the web chat, are not held back.
    for _ in range(3):
        call(by_key(support.key))
    call(
        CallContext(
            organization_id=project_a.organization_id,
            project_id=project_a.pk,
            user_id=alice.pk,
            model="fake-gpt",
        )
    )
    assert not Hold.objects.exists()


def test_it_charges_settled_calls_to_the_keys_budget_only(fake_price, ci, support):
    budget = key_budget(ci.key, "10")
    other = key_budget(support.key, "10")

    mine = [call(by_key(ci.key), completion_tokens=n) for n in (10, 50)]
    call(by_key(support.key), completion_tokens=200)

    period = BudgetPeriod.objects.get(budget=budget)
    assert (period.spent, period.reserved) == (mine[0].cost + mine[1].cost, Decimal(0))
    assert period.spent == Decimal("0.32")  # 2 x 0.1 in, 60 x 0.002 out
    assert BudgetPeriod.objects.get(budget=other).spent == Decimal("0.5")
    start, end = period_bounds(budget.period, timezone.now())
    assert ledger_spend(budget, start, end) == period.spent


def test_it_starts_a_key_budget_added_mid_period_from_the_keys_ledger_rows(fake_price, ci, support):
    earlier = call(by_key(ci.key))  # $0.30
    call(by_key(support.key))
    budget = key_budget(ci.key, "0.80")

    services.quota_reserve(context=by_key(ci.key), prompt_tokens=100, max_tokens=200)

    period = BudgetPeriod.objects.get(budget=budget)
    assert (period.spent, period.reserved) == (earlier.cost, Decimal("0.5"))
    with pytest.raises(QuotaExceeded, match=r"\$0.30 spent, \$0.50 in flight"):
        services.quota_reserve(context=by_key(ci.key), prompt_tokens=0, max_tokens=1)


def test_it_alerts_managers_naming_the_key_as_it_is_written(
    fake_price, ci, alice, bob, mailoutbox, django_capture_on_commit_callbacks
):
    budget = key_budget(ci.key, "0.5", soft_thresholds="50")

    with django_capture_on_commit_callbacks(execute=True):
        call(by_key(ci.key))  # $0.30 of $0.50: past 50 %

    [mail] = mailoutbox
    assert mail.to == ["alice@example.com"]
    assert f"the budget of API key CI ({ci.key.display}) passed 50% of its limit" in mail.subject
    assert mail.body.startswith(f"The budget of API key CI ({ci.key.display})")
    assert BudgetAlert.objects.get().budget == budget
    # A key budget limits no member's calls: its banner is for managers only.
    [banner] = current_budget_banners(user_id=alice.pk, organization_slug="org-a")
    assert banner.subject == f"API key CI ({ci.key.display}) in project Project A"
    assert current_budget_banners(user_id=bob.pk, organization_slug="org-a") == []


def test_it_is_shown_on_the_managers_usage_page_only(fake_price, ci, alice, bob, org_a):
    budget = key_budget(ci.key, "1")
    call(by_key(ci.key))

    [status] = budget_statuses(UsageScope(organization=org_a))
    assert (status.budget, status.spent) == (budget, Decimal("0.3"))
    assert status.subject == f"API key CI ({ci.key.display}) in project Project A"
    assert budget_statuses(UsageScope(organization=org_a, user_id=bob.pk)) == []


def test_it_names_the_key_without_its_secret(ci):
    budget = key_budget(ci.key, "5")

    assert (
        budget.describe() == f"the budget of API key CI (lgw_{ci.plaintext[4:12]}…{ci.key.last4})"
    )
    assert ci.plaintext not in str(budget)


# --- the database constraint ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"scope": "api_key"},  # no key
        {"scope": "api_key", "api_key": "ci", "project": None},
        {"scope": "api_key", "api_key": "ci", "user": "bob"},
        {"scope": "project", "api_key": "ci"},
        {"scope": "member", "api_key": "ci", "user": "bob"},
        {"scope": "organization", "api_key": "ci", "project": None},
    ],
)
def test_it_refuses_an_api_key_budget_without_a_key_and_a_key_on_other_scopes(
    ci, bob, project_a, fields
):
    names = {"ci": ci.key, "bob": bob}
    values = {"project": project_a, **{k: names.get(v, v) for k, v in fields.items()}}

    with pytest.raises(IntegrityError), transaction.atomic():
        Budget.objects.create(organization=project_a.organization, limit_usd=Decimal(1), **values)


# --- the admin -----------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(email="staff@example.com", is_staff=True, is_superuser=True))
    return client


def budget_form(**fields) -> dict:
    return {
        "scope": "api_key",
        "project": "",
        "user": "",
        "api_key": "",
        "period": "month",
        "limit_usd": "10",
        "soft_thresholds": "50,80,100",
        "enabled": "on",
        **fields,
    }


def test_it_renders_a_key_budget_in_the_admin_with_its_figures(
    staff_client, fake_price, ci, support, project_a
):
    budget = key_budget(ci.key, "2")
    call(by_key(ci.key))
    call(by_key(support.key))
    BudgetPeriod.objects.all().delete()  # figures from the ledger, as before the first call

    figures = with_current_figures(Budget.objects.filter(pk=budget.pk)).get()
    change = staff_client.get(reverse("admin:billing_budget_change", args=[budget.pk]))
    listing = staff_client.get(reverse("admin:billing_budget_changelist"), {"scope": "api_key"})
    found = staff_client.get(reverse("admin:billing_budget_changelist"), {"q": ci.key.prefix})
    project_page = staff_client.get(reverse("admin:accounts_project_change", args=[project_a.pk]))

    assert (
        figures._spent
        == Decimal("0.3")
        == ledger_spend(budget, *period_bounds("month", timezone.now()))
    )
    assert change.status_code == 200
    assert "$0.30" in change.content.decode()
    assert [b.pk for b in listing.context["cl"].result_list] == [budget.pk]
    assert [b.pk for b in found.context["cl"].result_list] == [budget.pk]
    assert project_page.status_code == 200
    assert "$2.00" in project_page.content.decode()


def test_it_saves_a_key_budget_taking_the_project_from_the_key(staff_client, org_a, ci):
    response = staff_client.post(
        reverse("admin:billing_budget_add"), budget_form(organization=org_a.pk, api_key=ci.key.pk)
    )

    assert response.status_code == 302
    saved = Budget.objects.get()
    assert (saved.scope, saved.project, saved.api_key) == ("api_key", ci.key.project, ci.key)


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"project": "A", "api_key": "other project's"}, "api_key", "is not a key of project"),
        ({"project": "A", "api_key": "org B's"}, "api_key", "is not a key of project"),
        ({"api_key": "org B's"}, "project", "is not a project of Org A"),
        ({"project": "A"}, "api_key", "needs the key"),
        ({"project": "A", "api_key": "A's", "user": "bob"}, "user", "leave empty"),
        ({"scope": "project", "project": "A", "api_key": "A's"}, "api_key", "leave empty"),
    ],
)
def test_it_refuses_a_key_from_another_project_in_the_admin_form(
    staff_client, org_a, project_a, alice, bob, charlie, project_b, fields, field, says
):
    other_project = ProjectFactory(organization=org_a)
    names = {
        "A": project_a.pk,
        "bob": bob.pk,
        "A's": make_key(alice, project_a, "a").key.pk,
        "other project's": make_key(alice, other_project, "other").key.pk,
        "org B's": make_key(charlie, project_b, "b").key.pk,
    }
    data = {key: names.get(value, value) for key, value in fields.items()}

    response = staff_client.post(
        reverse("admin:billing_budget_add"), budget_form(organization=org_a.pk, **data)
    )

    assert response.status_code == 200
    assert says in " ".join(response.context["adminform"].form.errors[field])
    assert not Budget.objects.exists()


def project_page_data(project: Project, **budget_fields) -> dict:
    fields = budget_form(**budget_fields)
    del fields["project"]  # the inline's own project
    return {
        "organization": project.organization_id,
        "name": project.name,
        "slug": project.slug,
        "default_system_prompt": "",
        "budgets-TOTAL_FORMS": "1",
        "budgets-INITIAL_FORMS": "0",
        **{f"budgets-0-{k}": v for k, v in fields.items()},
    }


def test_it_adds_a_key_budget_on_the_project_page_for_the_projects_keys_only(
    staff_client, org_a, project_a, alice, ci
):
    other = make_key(alice, ProjectFactory(organization=org_a), "other")
    page = reverse("admin:accounts_project_change", args=[project_a.pk])

    refused = staff_client.post(page, project_page_data(project_a, api_key=other.key.pk))
    saved = staff_client.post(page, project_page_data(project_a, api_key=ci.key.pk))

    [formset] = [
        f.formset for f in refused.context["inline_admin_formsets"] if f.formset.prefix == "budgets"
    ]
    assert "is not a key of project Project A" in " ".join(formset.errors[0]["api_key"])
    assert saved.status_code == 302
    budget = Budget.objects.get()
    assert (budget.organization, budget.project, budget.api_key) == (org_a, project_a, ci.key)
