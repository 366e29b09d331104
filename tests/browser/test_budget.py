"""An owner sets a tiny project budget on the budgets page, and a member's next message is
refused with the real figures, in the README's money display rule (four decimal places under a
dollar), with nothing sent upstream."""

import pytest
from django.db.models import Sum
from django.urls import reverse
from playwright.sync_api import expect

from billing.models import UsageRecord
from core.money import usd
from tests.browser.conftest import chat_url, conversation, orm, screenshot, use_fake_models

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_owner_caps_the_project_on_the_page_and_a_members_next_message_is_refused(
    open_page, alice, bob, org_a, project_a, fake_upstream, fake_price
):
    use_fake_models(project_a, fake_upstream)
    chat = conversation(bob, project_a)
    member = open_page(user=bob).page
    member.goto(chat_url(chat))
    expect(member.locator("#chat-status")).to_have_attribute("data-status", "online")

    # The member's first message is answered and billed (fake-gpt* costs $0.001 a token in).
    member.get_by_label("Your message").fill("hello")
    member.get_by_label("Your message").press("Enter")
    expect(member.locator("#msgs .msg--assistant").last).to_have_attribute("data-state", "complete")
    # Then the conversation is titled, by a call of its own that is billed too: once the
    # title shows, both ledger rows are written.
    expect(member.locator("#chat-title")).not_to_have_text("New chat")
    spent = orm(
        lambda: UsageRecord.objects.filter(project=project_a).aggregate(total=Sum("cost"))["total"]
    )
    assert spent is not None
    assert spent > 0

    # The owner caps the project at $0.0001 for its lifetime, on the budgets page.
    owner = open_page(user=alice).page
    owner.goto(reverse("budgets", args=[org_a.slug]))
    owner.get_by_label("Limits the spending of").select_option("project")
    owner.get_by_label("Project", exact=True).select_option(label="Project A")
    owner.get_by_label("Period", exact=True).select_option("lifetime")
    owner.get_by_label("Hard limit (USD)").fill("0.0001")
    owner.get_by_role("button", name="Add budget").click()
    budgets = owner.get_by_role("main")
    expect(budgets).to_contain_text("$0.0001")
    expect(budgets).to_contain_text(usd(spent))  # what was spent before the cap counts
    screenshot(owner, "budgets-page")

    calls_before = sum(fake_upstream.request_counts.values())
    member.get_by_label("Your message").fill("One more question")
    member.get_by_label("Your message").press("Enter")

    refusal = member.locator("#composer-alert")
    expect(refusal).to_be_visible()
    expect(refusal).to_contain_text("$0.0001")
    expect(refusal).to_contain_text(usd(spent))
    screenshot(member, "budget-refusal")
    # The text stays in the composer, nothing was answered, nothing was sent upstream.
    expect(member.get_by_label("Your message")).to_have_value("One more question")
    expect(member.locator("#msgs .msg--assistant")).to_have_count(1)
    assert sum(fake_upstream.request_counts.values()) == calls_before
