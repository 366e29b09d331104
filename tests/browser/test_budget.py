"""A member's message over the project's budget is refused with the real figures, in the
README's money display rule (four decimal places under a dollar), and nothing goes upstream."""

from decimal import Decimal

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from billing.models import Budget, BudgetPeriod
from billing.services import LIFETIME_START
from tests.browser.conftest import chat_url, conversation, screenshot, use_fake_models

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def spent_project(org_a, project_a, fake_upstream, fake_price):
    """Project A: a budget of $0.0001 with $0.0022 spent already. A lifetime budget, so that
    a run at the turn of a month cannot start a fresh period. (Set in the database until the
    owner's budget page lands; then this journey sets it there, as an owner would.)"""
    use_fake_models(project_a, fake_upstream)
    budget = Budget.objects.create(
        organization=org_a,
        scope=Budget.Scope.PROJECT,
        project=project_a,
        period=Budget.Period.LIFETIME,
        limit_usd=Decimal("0.0001"),
    )
    BudgetPeriod.objects.create(budget=budget, start=LIFETIME_START, spent=Decimal("0.0022"))
    return project_a


def test_a_member_over_the_project_budget_sees_the_real_figures(
    open_page, bob, spent_project, fake_upstream
):
    chat = conversation(bob, spent_project)
    page = open_page(user=bob).page
    page.goto(chat_url(chat))
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")

    page.get_by_label("Your message").fill("One more question")
    page.get_by_label("Your message").press("Enter")

    refusal = page.locator("#composer-alert")
    expect(refusal).to_be_visible()
    expect(refusal).to_contain_text("$0.0001")
    expect(refusal).to_contain_text("$0.0022")
    screenshot(page, "budget-refusal")
    # The text stays in the composer, nothing was answered, nothing was sent upstream.
    expect(page.get_by_label("Your message")).to_have_value("One more question")
    expect(page.locator("#msgs .msg--assistant")).to_have_count(0)
    assert not fake_upstream.request_counts


def test_the_owner_sees_the_budget_and_its_spend_on_the_budgets_page(
    open_page, alice, org_a, spent_project
):
    page = open_page(user=alice).page
    response = page.goto(reverse("budgets", args=[org_a.slug]))

    assert response is not None
    assert response.ok
    main = page.get_by_role("main")
    expect(main).to_contain_text("Project A")
    expect(main).to_contain_text("$0.0001")
    expect(main).to_contain_text("$0.0022")
    screenshot(page, "budgets-page")
