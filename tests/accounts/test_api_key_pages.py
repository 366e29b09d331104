"""Project settings → API keys: the key is shown once, never again; members get 403."""

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts import api_keys
from accounts.models import ApiKey
from tests.conftest import membership
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db


def list_url(project) -> str:
    return reverse("api_keys", args=[project.organization.slug, project.slug])


def revoke_url(key: ApiKey) -> str:
    project = key.project
    return reverse("api_key_revoke", args=[project.organization.slug, project.slug, key.pk])


def plaintext_in(response) -> str:
    """The key in the read-only input of the page that created it."""
    [plaintext] = re.findall(r'id="new-api-key" value="(lgw_[0-9A-Za-z]+)"', response.text)
    assert plaintext == response.context["created"].plaintext
    return plaintext


@pytest.fixture
def key(alice, org_a, project_a) -> ApiKey:
    return api_keys.api_key_create(
        actor=membership(alice, org_a), project=project_a, name="CI bot", scopes=["chat"]
    ).key


@pytest.fixture
def staff_client() -> Client:
    client = Client()
    client.force_login(UserFactory(email="staff@example.com", is_staff=True, is_superuser=True))
    return client


def test_create_shows_the_key_once_and_never_again(client_for, alice, project_a, staff_client):
    client = client_for(alice)

    response = client.post(
        list_url(project_a), {"name": "CI bot", "scopes": ["chat", "read"], "expires_on": ""}
    )

    assert response.status_code == 200  # rendered, not redirected: no URL or session holds it
    assert "no-store" in response["Cache-Control"]
    plaintext = plaintext_in(response)
    page = response.content.decode()
    assert page.count(plaintext) == 1
    assert f'value="{plaintext}" readonly' in page
    assert 'data-copy="new-api-key"' in page
    assert "will not be shown again" in page
    key = ApiKey.objects.get()
    assert key.project == project_a
    assert key.created_by == alice
    assert key.scope_list() == ["chat", "read"]
    assert key.expires_at is None
    assert key.digest == api_keys.digest_of(plaintext)
    assert api_keys.api_key_authenticate(plaintext) == key
    assert plaintext not in str(list(client.session.items()))

    for later in (
        client.get(list_url(project_a)),
        client.get(revoke_url(key)),
        staff_client.get(reverse("admin:accounts_apikey_change", args=[key.pk])),
        staff_client.get(reverse("admin:accounts_apikey_changelist")),
    ):
        assert later.status_code == 200
        assert plaintext not in later.content.decode()
    listed = client.get(list_url(project_a)).content.decode()
    assert key.display in listed
    assert "CI bot" in listed


def test_the_list_shows_what_identifies_a_key_and_its_state(client_for, alice, org_a, project_a):
    actor = membership(alice, org_a)
    active = api_keys.api_key_create(
        actor=actor, project=project_a, name="Active bot", scopes=["read"]
    ).key
    revoked = api_keys.api_key_create(
        actor=actor, project=project_a, name="Revoked bot", scopes=["chat"]
    ).key
    api_keys.api_key_revoke(actor=actor, key=revoked)
    expired = api_keys.api_key_create(
        actor=actor,
        project=project_a,
        name="Expired bot",
        scopes=["chat"],
        expires_at=timezone.now() + timedelta(days=1),
    ).key
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))

    response = client_for(alice).get(list_url(project_a))

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    rows = {key.name: key for key in response.context["keys"]}
    assert set(rows) == {"Active bot", "Revoked bot", "Expired bot"}
    page = response.content.decode()
    for key in (active, revoked, expired):
        assert key.display in page
    assert "never" in page  # last used
    row = {name: next(r for r in page.split("<tr>") if f"<td>{name}</td>" in r) for name in rows}
    assert ">active<" in row["Active bot"]
    assert ">revoked<" in row["Revoked bot"]
    assert ">expired<" in row["Expired bot"]
    assert "Alice" in page
    # Only the active key can be revoked.
    assert revoke_url(active) in page
    assert revoke_url(revoked) not in page
    assert revoke_url(expired) not in page
    # The scopes are explained.
    assert "May call models" in page
    assert "May read conversations, usage and models" in page


def test_an_expiry_date_is_stored_as_the_start_of_that_day(client_for, alice, project_a):
    day = timezone.localdate() + timedelta(days=30)

    response = client_for(alice).post(
        list_url(project_a), {"name": "Temp", "scopes": ["read"], "expires_on": day.isoformat()}
    )

    assert response.status_code == 200
    key = ApiKey.objects.get()
    assert timezone.localtime(key.expires_at).date() == day
    assert timezone.localtime(key.expires_at).time().hour == 0
    assert key.is_active


def test_a_key_can_get_limits_of_its_own(client_for, alice, project_a):
    page = client_for(alice).post(
        list_url(project_a),
        {"name": "Bot", "scopes": ["chat"], "requests_per_minute": "30", "tokens_per_minute": ""},
    )

    key = ApiKey.objects.get()
    assert (key.requests_per_minute, key.tokens_per_minute) == (30, None)
    assert "30 req/min" in page.content.decode()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "CI bot", "expires_on": ""}, "scopes"),
        ({"name": "CI bot", "scopes": ["admin"]}, "scopes"),
        ({"name": "", "scopes": ["chat"]}, "name"),
        ({"name": "   ", "scopes": ["chat"]}, "name"),
        ({"name": "CI bot", "scopes": ["chat"], "expires_on": "2001-01-01"}, "expires_on"),
        ({"name": "CI bot", "scopes": ["chat"], "expires_on": "today"}, "expires_on"),
        ({"name": "CI bot", "scopes": ["chat"], "requests_per_minute": "0"}, "requests_per_minute"),
        ({"name": "CI bot", "scopes": ["chat"], "tokens_per_minute": "lots"}, "tokens_per_minute"),
    ],
)
def test_bad_input_shows_errors_and_creates_nothing(client_for, alice, project_a, data, field):
    response = client_for(alice).post(list_url(project_a), data)

    assert response.status_code == 200
    assert response.context["created"] is None
    assert response.context["form"].errors[field]
    assert 'class="field-error"' in response.content.decode()
    assert "will not be shown again" not in response.content.decode()
    assert not ApiKey.objects.exists()


def test_an_expiry_of_today_is_refused_as_not_in_the_future(client_for, alice, project_a):
    today = timezone.localdate().isoformat()

    response = client_for(alice).post(
        list_url(project_a), {"name": "CI bot", "scopes": ["chat"], "expires_on": today}
    )

    assert response.context["form"].errors["expires_on"] == [
        "The expiry date must be in the future."
    ]
    assert not ApiKey.objects.exists()


def test_revoke_asks_first_then_the_key_stops_working(client_for, alice, org_a, project_a):
    created = api_keys.api_key_create(
        actor=membership(alice, org_a), project=project_a, name="CI bot", scopes=["chat"]
    )
    client = client_for(alice)

    confirm = client.get(revoke_url(created.key))
    assert confirm.status_code == 200
    assert "Yes, revoke it" in confirm.content.decode()
    assert ApiKey.objects.get().revoked_at is None

    response = client.post(revoke_url(created.key))

    assert response.status_code == 302
    assert response.url == list_url(project_a)
    assert ApiKey.objects.get().revoked_at is not None
    assert api_keys.api_key_authenticate(created.plaintext) is None
    page = client.get(response.url).content.decode()
    assert "Revoked “CI bot”" in page
    assert ">revoked<" in page
    # Revoking again changes nothing and the confirm page says it is done.
    revoked_at = ApiKey.objects.get().revoked_at
    assert client.post(revoke_url(created.key)).status_code == 302
    assert ApiKey.objects.get().revoked_at == revoked_at
    assert "was revoked on" in client.get(revoke_url(created.key)).content.decode()


def test_a_member_gets_403_on_every_api_key_page(client_for, bob, key):
    client = client_for(bob)
    url = list_url(key.project)

    assert client.get(url).status_code == 403
    assert client.post(url, {"name": "Bob's", "scopes": ["chat"]}).status_code == 403
    assert client.get(revoke_url(key)).status_code == 403
    assert client.post(revoke_url(key)).status_code == 403
    assert ApiKey.objects.get() == key  # nothing created
    assert key.is_active
    assert ApiKey.objects.get().revoked_at is None


def test_links_are_shown_to_managers_only(client_for, alice, bob, project_a):
    args = [project_a.organization.slug, project_a.slug]
    url = list_url(project_a)

    for name in ("project_detail", "project_settings"):
        assert url in client_for(alice).get(reverse(name, args=args)).content.decode()
    assert url not in client_for(bob).get(reverse("project_detail", args=args)).content.decode()


def test_a_key_of_another_project_is_not_found(client_for, alice, charlie, org_a, project_b, key):
    other = ProjectFactory(organization=org_a, name="Other", slug="other")
    wrong_project = reverse("api_key_revoke", args=[org_a.slug, other.slug, key.pk])
    charlies_project = reverse(
        "api_key_revoke", args=[project_b.organization.slug, project_b.slug, key.pk]
    )

    assert client_for(alice).get(wrong_project).status_code == 404
    assert client_for(alice).post(wrong_project).status_code == 404
    assert client_for(charlie).get(charlies_project).status_code == 404
    assert client_for(charlie).post(charlies_project).status_code == 404
    assert ApiKey.objects.get().revoked_at is None
