"""The usage page after a chat: the owner sees the call in the daily chart, the totals and the
tables, at the price the ledger charged."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import chat_url, conversation, screenshot, use_fake_models

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MODEL = "fake-gpt"  # fast, and at the fake price: $0.001 a prompt token, $0.002 a reply token


def test_a_chat_shows_up_on_the_usage_page(
    open_page, alice, org_a, project_a, fake_upstream, fake_price
):
    use_fake_models(project_a, fake_upstream, MODEL)
    chat = conversation(alice, project_a, model=MODEL)
    page = open_page(user=alice).page
    page.goto(chat_url(chat))
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")
    page.get_by_label("Your message").fill("What does this cost?")
    page.get_by_label("Your message").press("Enter")
    reply = page.locator("#msgs .msg--assistant").last
    expect(reply).to_have_attribute("data-state", "complete")
    expect(reply.locator(".msg-usage")).to_contain_text("$")

    page.goto(f"/orgs/{org_a.slug}/usage/")

    expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()
    # The reply, and the call that titled the conversation.
    expect(page.get_by_test_id("total-calls")).not_to_have_text("0")
    cost = page.get_by_test_id("total-cost").inner_text()
    assert cost.startswith("$")
    assert cost not in ("$0.00", "$0.0000")
    chart = page.locator("figure.chart svg[role=img]")
    expect(chart).to_be_visible()
    expect(chart.locator("rect")).not_to_have_count(0)
    by_model = page.locator("section", has=page.get_by_role("heading", name="By model"))
    expect(by_model.get_by_role("table")).to_contain_text(MODEL)
    expect(by_model.get_by_role("table")).to_contain_text(cost)
    by_project = page.locator("section", has=page.get_by_role("heading", name="By project"))
    expect(by_project.get_by_role("table")).to_contain_text("Project A")
    screenshot(page, "usage")
