"""The owners' audit log page and its CSV: their organization's events only, filtered, newest
first, paged; everyone else gets 404."""

import csv
import io
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts import api_keys
from accounts.models import Membership, Role
from accounts.signals import Target
from audit.models import AuditEvent
from audit.selectors import PER_PAGE
from audit.services import audit_record
from tests.audit.conftest import only
from tests.conftest import membership

pytestmark = pytest.mark.django_db


def log_url(org, **query) -> str:
    url = reverse("audit_log", args=[org.slug])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def csv_url(org) -> str:
    return reverse("audit_export", args=[org.slug])


def shown(response) -> list[AuditEvent]:
    return list(response.context["page"])


def rows(response) -> list[list[str]]:
    text = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(text)))


def test_an_owner_sees_their_organizations_events_newest_first(
    client_for, alice, charlie, org_a, org_b, project_a
):
    older = audit_record(
        action="budget.updated",
        organization=org_a,
        actor=alice,
        project=project_a,
        changes={"limit_usd": ["10", "20"]},
    )
    newer = audit_record(action="member.invited", organization=org_a, actor=alice)
    audit_record(action="budget.updated", organization=org_b, actor=charlie)  # not A's
    audit_record(action="price.changed", organization=None)  # global: staff's only

    response = client_for(alice).get(log_url(org_a))

    assert response.status_code == 200
    assert shown(response) == [newer, older]
    body = response.content.decode()
    assert "Budget changed" in body
    assert "alice@example.com" in body
    assert "<code>limit_usd</code>" in body
    assert '>10</span> → <span title="20">20</span>' in body
    assert "charlie" not in body


@pytest.mark.parametrize("url", [log_url, csv_url])
def test_members_admins_and_outsiders_get_404(client_for, alice, bob, charlie, org_a, url):
    audit_record(action="member.invited", organization=org_a, actor=alice)

    assert client_for(bob).get(url(org_a)).status_code == 404  # a member
    assert client_for(charlie).get(url(org_a)).status_code == 404  # an outsider
    Membership.objects.filter(user=bob, organization=org_a).update(role=Role.ADMIN)
    assert client_for(bob).get(url(org_a)).status_code == 404  # an admin too: owners only


def test_an_anonymous_visitor_is_sent_to_log_in(client, org_a):
    response = client.get(log_url(org_a))

    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_the_settings_page_links_to_the_log_for_owners_only(client_for, alice, bob, org_a):
    settings_url = reverse("organization_settings", args=[org_a.slug])

    assert log_url(org_a) in client_for(alice).get(settings_url).content.decode()
    assert log_url(org_a) not in client_for(bob).get(settings_url).content.decode()


@pytest.fixture
def mixed(alice, bob, org_a, project_a):
    """Events by alice and bob, in and out of project A, today and ten days ago."""
    made = {
        "key": audit_record(
            action="api_key.created", organization=org_a, actor=alice, project=project_a
        ),
        "role": audit_record(action="member.role_changed", organization=org_a, actor=alice),
        "bob": audit_record(action="persona.created", organization=org_a, actor=bob),
        "old": audit_record(action="budget.created", organization=org_a, actor=alice),
    }
    AuditEvent._base_manager.filter(pk=made["old"].pk).update(
        created_at=timezone.now() - timedelta(days=10)
    )
    return made


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"action": "member.role_changed"}, ["role"]),
        ({"actor": "bob@example.com"}, ["bob"]),
        ({"project": "PROJECT"}, ["key"]),
        ({"start": "DAYS_AGO_3"}, ["bob", "role", "key"]),
        ({"end": "DAYS_AGO_3"}, ["old"]),
        ({"action": "api_key.created", "actor": "bob@example.com"}, []),
    ],
)
def test_the_filters(client_for, alice, org_a, project_a, mixed, query, expected):
    today = timezone.now().date()
    values = {"PROJECT": project_a.pk, "DAYS_AGO_3": (today - timedelta(days=3)).isoformat()}
    query = {k: values.get(v, v) for k, v in query.items()}

    response = client_for(alice).get(log_url(org_a, **query))

    assert response.status_code == 200
    assert shown(response) == [mixed[name] for name in expected]
    csv_rows = rows(client_for(alice).get(csv_url(org_a), query))
    assert [row[1] for row in csv_rows[1:]] == [mixed[name].action for name in expected]


def test_a_filter_that_is_not_valid_is_said_and_left_out(client_for, alice, org_a, mixed):
    response = client_for(alice).get(log_url(org_a, start="yesterday", action="no.such"))

    assert response.status_code == 200
    assert len(shown(response)) == 4
    assert response.context["form"].errors.keys() == {"start", "action"}
    assert "YYYY-MM-DD" in response.content.decode()


def test_pages_keep_the_filters(client_for, alice, org_a):
    for _ in range(PER_PAGE + 1):
        audit_record(action="budget.updated", organization=org_a, actor=alice)
    audit_record(action="member.invited", organization=org_a, actor=alice)

    first = client_for(alice).get(log_url(org_a, action="budget.updated"))
    second = client_for(alice).get(log_url(org_a, action="budget.updated", page=2))

    assert len(shown(first)) == PER_PAGE
    assert len(shown(second)) == 1
    assert "?action=budget.updated&amp;page=2" in first.content.decode()
    assert {event.action for event in [*shown(first), *shown(second)]} == {"budget.updated"}


def test_the_csv_has_every_row_and_no_cell_a_spreadsheet_would_run(
    client_for, alice, org_a, project_a
):
    audit_record(
        action="persona.created",
        organization=org_a,
        actor=alice,
        project=project_a,
        target=Target(type="chat.persona", id="7", label='=HYPERLINK("http://evil")'),
        changes={"name": [None, "+cmd"]},
    )
    for label in ("-2+3", "@SUM(A1)"):
        audit_record(
            action="budget.updated",
            organization=org_a,
            actor_label=label,
            target=Target(type="billing.budget", id="1", label="\tx"),
        )

    response = client_for(alice).get(csv_url(org_a))

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert 'filename="audit-org-a.csv"' in response["Content-Disposition"]
    header, *lines = rows(response)
    assert header[:4] == ["time_utc", "action", "description", "actor"]
    assert len(lines) == 3
    cells = [cell for line in lines for cell in line]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t")]
    assert '\'=HYPERLINK("http://evil")' in cells
    assert {"'-2+3", "'@SUM(A1)"} <= set(cells)
    persona = next(line for line in lines if line[1] == "persona.created")
    assert persona[4] == "Project A"
    assert persona[8] == '{"name": [null, "+cmd"]}'  # JSON: starts with "{", never a formula


def test_a_change_made_on_a_page_is_on_the_log_with_its_address(
    client_for, alice, org_a, project_a, with_request_context
):
    key = api_keys.api_key_create(
        actor=membership(alice, org_a), project=project_a, name="CI", scopes=["chat"]
    ).key
    client = client_for(alice)

    client.post(
        reverse("api_key_revoke", args=[org_a.slug, project_a.slug, key.pk]),
        REMOTE_ADDR="198.51.100.7",
    )

    event = only(org_a, action="api_key.revoked")
    assert (event.actor, event.ip) == (alice, "198.51.100.7")
    assert event in shown(client.get(log_url(org_a)))


def test_a_service_not_told_who_acts_records_the_person_the_request_is_from(
    client_for, alice, org_a, project_a, with_request_context
):
    response = client_for(alice).post(
        reverse("api-personas", args=[project_a.pk]),
        {"name": "Lawyer", "tag": "law"},
        content_type="application/json",
    )

    assert response.status_code == 201
    event = only(org_a, action="persona.created")
    assert (event.actor, event.actor_label, event.ip) == (alice, "alice@example.com", "127.0.0.1")
