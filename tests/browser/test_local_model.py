"""The one journey on the built-in local model (llama.cpp running SmolLM2, no key, no network):
what a person gets from `make run` before connecting any provider."""

import pytest
from playwright.sync_api import expect

from providers.llm.catalog import LOCAL_MODEL_NAME
from providers.models import ConnectionModel, ProjectModel
from providers.services import connections_ensure_defaults
from tests.browser.conftest import chat_url, conversation, growth, samples, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def local_chat(alice, project_a):
    connections_ensure_defaults()  # the built-in connection, as every migrate leaves it
    model = ConnectionModel.objects.get(name=LOCAL_MODEL_NAME, connection__organization=None)
    ProjectModel.objects.create(project=project_a, model=model, name=model.name, is_default=True)
    # Greedy decoding and a fixed seed: the same words every run; a short cap keeps it quick.
    return conversation(
        alice, project_a, model=LOCAL_MODEL_NAME, temperature=0.0, seed=7, max_tokens=40
    )


def test_the_local_model_answers_token_by_token(open_page, alice, local_chat):
    page = open_page(user=alice).page
    page.goto(chat_url(local_chat))
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")

    page.get_by_label("Your message").fill("Say hello to a new user in one sentence.")
    page.get_by_label("Your message").press("Enter")

    reply = page.locator("#msgs .msg--assistant").last
    expect(reply).to_have_attribute("data-state", "complete", timeout=120_000)
    steps = growth(samples(page), reply.get_attribute("data-id") or "")
    assert len(steps) >= 3, f"the reply grew in {len(steps)} steps: {steps}"
    text = reply.locator(".msg-body").inner_text()
    assert text.strip()
    expect(reply.locator(".msg-usage")).to_contain_text(LOCAL_MODEL_NAME)
    expect(reply.locator(".msg-usage")).to_contain_text("completion tokens")
    screenshot(page, "chat-local-model")
