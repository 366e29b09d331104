"""REST: ``/api/v1/organizations/<id>/audit-events/`` for owners, read only, paged, filtered."""

import pytest
from django.urls import reverse

from accounts.models import Membership, Role
from audit.services import audit_record
from tests.chat.conftest import make_key

pytestmark = pytest.mark.django_db


def url(org) -> str:
    return reverse("api-audit-events", args=[org.pk])


def test_an_owner_lists_the_events_newest_first(
    client_for, alice, charlie, org_a, org_b, project_a
):
    older = audit_record(
        action="budget.updated",
        organization=org_a,
        actor=alice,
        project=project_a,
        target=project_a,
        changes={"limit_usd": ["10", "20"]},
    )
    newer = audit_record(action="member.invited", organization=org_a, actor=alice)
    audit_record(action="budget.updated", organization=org_b, actor=charlie)

    body = client_for(alice).get(url(org_a)).json()

    assert body["count"] == 2
    assert [event["id"] for event in body["results"]] == [newer.pk, older.pk]
    assert body["results"][1] | {"created_at": None} == {
        "id": older.pk,
        "created_at": None,
        "action": "budget.updated",
        "actor": "alice@example.com",
        "project": project_a.pk,
        "project_name": "Project A",
        "target": {"type": "accounts.project", "id": str(project_a.pk), "label": str(project_a)},
        "changes": {"limit_usd": ["10", "20"]},
        "ip": None,
    }
    assert body["results"][0]["target"] is None


def test_it_filters_as_the_page_does(client_for, alice, bob, org_a):
    audit_record(action="budget.updated", organization=org_a, actor=alice)
    by_bob = audit_record(action="persona.created", organization=org_a, actor=bob)

    body = client_for(alice).get(url(org_a), {"actor": "bob@example.com"}).json()
    refused = client_for(alice).get(url(org_a), {"start": "2030-01-02", "end": "2030-01-01"})

    assert [event["id"] for event in body["results"]] == [by_bob.pk]
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "end"


def test_members_admins_and_outsiders_get_404(client_for, alice, bob, charlie, org_a):
    for person in (bob, charlie):
        response = client_for(person).get(url(org_a))
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    Membership.objects.filter(user=bob, organization=org_a).update(role=Role.ADMIN)
    assert client_for(bob).get(url(org_a)).status_code == 404


def test_keys_are_refused(client, alice, org_a, project_a, charlie, org_b, project_b):
    own = make_key(alice, org_a, project_a, ["chat", "read"])
    other = make_key(charlie, org_b, project_b, ["chat", "read"])

    mine = client.get(url(org_a), HTTP_AUTHORIZATION=f"Bearer {own}")
    theirs = client.get(url(org_a), HTTP_AUTHORIZATION=f"Bearer {other}")

    assert (mine.status_code, mine.json()["error"]["code"]) == (403, "keys_not_allowed")
    assert (theirs.status_code, theirs.json()["error"]["code"]) == (401, "invalid_api_key")


def test_an_anonymous_caller_gets_401(client, org_a):
    response = client.get(url(org_a))

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_it_is_read_only(client_for, alice, org_a):
    response = client_for(alice).post(url(org_a), {}, content_type="application/json")

    assert response.status_code == 405


def test_it_is_in_the_schema(client_for, alice):
    document = client_for(alice).get(reverse("api-schema"), {"format": "json"}).json()

    operation = document["paths"]["/api/v1/organizations/{organization_id}/audit-events/"]
    assert set(operation) == {"get"}
    names = {parameter["name"] for parameter in operation["get"]["parameters"]}
    assert {"action", "actor", "project", "start", "end", "page"} <= names
    assert {"200", "401", "403", "404"} <= set(operation["get"]["responses"])
