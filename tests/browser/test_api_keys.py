"""An API key is created once: the page shows its secret once, and reloading that page (the
browser sends the form again) neither makes a second key nor shows the secret again."""

import re

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from accounts.models import ApiKey
from tests.browser.conftest import orm, screenshot

pytestmark = pytest.mark.django_db


def keys_url(project) -> str:
    return reverse("api_keys", args=[project.organization.slug, project.slug])


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_reloading_after_creating_a_key_does_not_create_another(open_page, alice, project_a):
    page = open_page(user=alice).page
    page.goto(keys_url(project_a))
    expect(page.get_by_role("cell", name="No keys yet.")).to_be_visible()

    page.get_by_label("Name").fill("CI bot")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("The new API key")
    expect(secret).to_have_value(re.compile(r"^lgw_\w+$"))
    plaintext = secret.input_value()
    screenshot(page, "api-key-created")

    page.reload()  # the browser posts the form again

    expect(page.get_by_text("The key “CI bot” was created already")).to_be_visible()
    expect(page.get_by_label("The new API key")).to_have_count(0)
    assert plaintext not in page.content()
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("CI bot")
    assert orm(lambda: ApiKey.objects.filter(project=project_a).count()) == 1


# The same rule without a browser, quick: a form's token makes one key, however often it is
# sent; a refused form can be corrected and sent again with its token.


def form_token(page) -> str:
    [token] = re.findall(r'name="form_token" value="([\w-]+)"', page.content.decode())
    return token


def test_a_form_sent_twice_makes_one_key(client_for, alice, project_a):
    client = client_for(alice)
    data = {
        "name": "CI bot",
        "scopes": ["chat"],
        "form_token": form_token(client.get(keys_url(project_a))),
    }

    first = client.post(keys_url(project_a), data)
    again = client.post(keys_url(project_a), data)

    assert first.status_code == 200
    assert first.context["created"].key.name == "CI bot"
    assert again.status_code == 302
    assert again["Location"] == keys_url(project_a)
    listed = client.get(keys_url(project_a)).content.decode()
    assert "The key “CI bot” was created already" in listed
    assert first.context["created"].plaintext not in listed
    assert ApiKey.objects.count() == 1
    # A new form (the page rendered after the key) has a token of its own.
    assert form_token(first) != data["form_token"]


def test_a_refused_form_can_be_sent_again_with_its_token(client_for, alice, project_a):
    client = client_for(alice)
    token = form_token(client.get(keys_url(project_a)))

    refused = client.post(
        keys_url(project_a), {"name": "", "scopes": ["chat"], "form_token": token}
    )
    fixed = client.post(
        keys_url(project_a), {"name": "Bot", "scopes": ["chat"], "form_token": token}
    )

    assert refused.context["form"].errors["name"]
    assert fixed.status_code == 200
    assert fixed.context["created"].key.name == "Bot"
    assert ApiKey.objects.count() == 1
