"""REST: project admins manage keys; a created key works at once and only once shown."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts import api_keys
from accounts.models import ApiKey
from tests.conftest import membership

pytestmark = pytest.mark.django_db


def keys_url(project) -> str:
    return reverse("api-keys", kwargs={"project_id": project.pk})


def create(client, project, **body):
    body.setdefault("name", "CI bot")
    body.setdefault("scopes", ["chat"])
    return client.post(keys_url(project), data=json.dumps(body), content_type="application/json")


def test_an_admin_creates_lists_and_revokes_a_key(client_for, alice, project_a):
    client = client_for(alice)

    created = create(client, project_a, scopes=["chat", "read"], requests_per_minute=60)

    assert created.status_code == 201
    assert created["Cache-Control"] == "no-store"
    data = created.json()
    plaintext = data["key"]
    assert api_keys.is_well_formed(plaintext)
    assert data["display"] == f"{plaintext[:12]}…{plaintext[-4:]}"
    assert data["scopes"] == ["chat", "read"]
    assert data["created_by"] == alice.email
    assert (data["requests_per_minute"], data["tokens_per_minute"]) == (60, None)
    listed = client.get(keys_url(project_a)).json()["results"]
    assert [k["id"] for k in listed] == [data["id"]]
    assert "key" not in listed[0]  # never shown again
    assert plaintext not in json.dumps(listed)
    # It works at once, with the SDK's header.
    projects = Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}").get(reverse("api-projects"))
    assert projects.status_code == 200

    revoke = reverse("api-key-revoke", kwargs={"project_id": project_a.pk, "key_id": data["id"]})
    revoked = client.post(revoke)

    assert revoked.status_code == 200
    assert revoked.json()["is_active"] is False
    assert revoked.json()["revoked_at"] is not None
    after = Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}").get(reverse("api-projects"))
    assert after.status_code == 401


def test_bad_key_input_is_a_400(client_for, alice, project_a):
    client = client_for(alice)

    no_scope = create(client, project_a, scopes=[])
    bad_scope = create(client, project_a, scopes=["admin"])
    past = create(client, project_a, expires_at=(timezone.now() - timedelta(days=1)).isoformat())

    assert no_scope.status_code == bad_scope.status_code == past.status_code == 400
    assert no_scope.json()["error"]["param"] == "scopes"
    assert past.json()["error"]["code"] == "invalid_expiry"
    assert ApiKey.objects.count() == 0


def test_members_and_keys_cannot_manage_keys(client_for, alice, bob, org_a, project_a):
    key = api_keys.api_key_create(
        actor=membership(alice, org_a), project=project_a, name="k", scopes=["chat", "read"]
    ).plaintext

    by_member = create(client_for(bob), project_a)
    by_key = Client(HTTP_AUTHORIZATION=f"Bearer {key}").get(keys_url(project_a))

    assert by_member.status_code == 403
    assert by_member.json()["error"]["code"] == "forbidden"
    assert client_for(bob).get(keys_url(project_a)).status_code == 403
    assert by_key.status_code == 403
    assert by_key.json()["error"]["code"] == "keys_not_allowed"


def test_every_unusable_key_gets_the_same_401(alice, org_a, project_a, project_b, charlie):
    url = reverse("api-conversations", kwargs={"project_id": project_a.pk})
    actor = membership(alice, org_a)
    revoked = api_keys.api_key_create(actor=actor, project=project_a, name="r", scopes=["read"])
    api_keys.api_key_revoke(actor=actor, key=revoked.key)
    expired = api_keys.api_key_create(actor=actor, project=project_a, name="e", scopes=["read"])
    ApiKey.objects.filter(pk=expired.key.pk).update(expires_at=timezone.now() - timedelta(1))

    others = api_keys.api_key_create(
        actor=membership(charlie, project_b.organization),
        project=project_b,
        name="theirs",
        scopes=["read"],
    ).plaintext

    bodies = []
    for raw in (
        revoked.plaintext,
        expired.plaintext,
        "lgw_malformed",
        api_keys.generate_key(),  # well-formed, unknown
        others,  # valid, for another project
    ):
        response = Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get(url)
        assert response.status_code == 401
        bodies.append(response.content)

    assert len(set(bodies)) == 1
    assert json.loads(bodies[0])["error"]["code"] == "invalid_api_key"


@pytest.mark.django_db(transaction=True)
def test_a_database_dump_holds_no_plaintext_key(client_for, alice, org_a, project_a):
    """The secret exists in one response only: not in any table, whatever the dump."""
    plaintext = create(client_for(alice), project_a).json()["key"]
    secret_part = plaintext[len(api_keys.KEY_PREFIX) :]

    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)

    assert api_keys.digest_of(plaintext) in dump.getvalue()  # the dump did include the key row
    assert secret_part not in dump.getvalue()
    assert secret_part[:20] not in dump.getvalue()
