"""Staff's changes in the Django admin are recorded too (shown to owners as "staff (admin)"),
and staff read every organization's trail there, read only."""

from decimal import Decimal

import pytest
from django import forms
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts import api_keys
from accounts.models import Organization, Role
from accounts.signals import audit_scope
from audit.models import AuditEvent
from audit.services import audit_record
from billing.models import Budget, ModelPrice
from providers import services as provider_services
from tests.audit.conftest import events, only
from tests.conftest import membership
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

STAFF = "staff (admin)"


@pytest.fixture
def staff(db):
    return UserFactory(email="staff@example.com", is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def _posted(form: forms.BaseForm) -> dict:
    """What a browser sends for the form as shown (unchanged)."""
    data: dict = {}
    for name, field in form.fields.items():
        value, key = form[name].value(), form.add_prefix(name)
        if isinstance(field, forms.SplitDateTimeField):
            data[f"{key}_0"] = value.date().isoformat() if value else ""
            data[f"{key}_1"] = value.time().isoformat() if value else ""
        elif isinstance(value, bool):
            if value:
                data[key] = "on"
        elif isinstance(value, list | tuple):
            data[key] = [str(item) for item in value]
        else:
            data[key] = "" if value is None else str(value)
    return data


def change_page(client, url: str) -> dict:
    """The POST data of an admin change page as it stands, inlines included."""
    response = client.get(url)
    assert response.status_code == 200
    data = _posted(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        data.update(_posted(inline.formset.management_form))
        for form in inline.formset.initial_forms:
            data.update(_posted(form))
    return data


def budget(organization, limit, **fields) -> Budget:
    return Budget.objects.create(
        organization=organization, scope="organization", limit_usd=Decimal(limit), **fields
    )


def test_a_role_changed_on_the_organization_page_is_recorded_as_staff(
    staff_client, staff, org_a, alice, bob
):
    url = reverse("admin:accounts_organization_change", args=[org_a.pk])
    data = change_page(staff_client, url)
    index = next(
        key.split("-")[1]
        for key, value in data.items()
        if key.startswith("memberships-") and key.endswith("-id")
        and value == str(membership(bob, org_a).pk)
    )  # fmt: skip
    data[f"memberships-{index}-role"] = Role.ADMIN

    response = staff_client.post(url, data)

    assert response.status_code == 302
    event = only(org_a)
    assert (event.action, event.actor, event.actor_label) == ("member.role_changed", staff, STAFF)
    assert (event.target_label, event.changes) == ("bob@example.com", {"role": ["member", "admin"]})
    assert event.ip == "127.0.0.1"


def test_the_two_factor_requirement_set_by_staff_is_recorded(staff_client, org_a, alice):
    url = reverse("admin:accounts_organization_change", args=[org_a.pk])
    data = change_page(staff_client, url)
    data["require_two_factor"] = "on"
    data["name"] = "Org A renamed"  # not money nor access: not shown

    assert staff_client.post(url, data).status_code == 302

    event = only(org_a)
    assert (event.action, event.changes) == (
        "organization.two_factor_changed",
        {"require_two_factor": [False, True]},
    )


def test_an_unchanged_save_records_nothing(staff_client, org_a, alice, bob):
    url = reverse("admin:accounts_organization_change", args=[org_a.pk])

    assert staff_client.post(url, change_page(staff_client, url)).status_code == 302

    assert events() == []


def test_deleting_an_organization_keeps_its_event(staff_client, org_b, charlie):
    response = staff_client.post(
        reverse("admin:accounts_organization_delete", args=[org_b.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert not Organization.objects.filter(pk=org_b.pk).exists()
    event = only(action="organization.deleted")
    assert (event.organization, event.organization_name, event.actor_label) == (
        None,
        "Org B",
        STAFF,
    )


PRICE = {
    "model": "new-model",
    "input_per_million": "2.5",
    "cached_input_per_million": "1.25",
    "output_per_million": "10",
    "effective_from": "2030-01-01",
}


def test_prices_added_changed_and_deleted_by_staff_are_recorded(staff_client, staff):
    assert staff_client.post(reverse("admin:billing_modelprice_add"), PRICE).status_code == 302
    price = ModelPrice.objects.get(model="new-model")
    change = reverse("admin:billing_modelprice_change", args=[price.pk])
    assert staff_client.post(change, {**PRICE, "output_per_million": "12"}).status_code == 302
    delete = reverse("admin:billing_modelprice_delete", args=[price.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 302

    added, changed, deleted = events()
    assert [e.action for e in (added, changed, deleted)] == [
        "price.created",
        "price.changed",
        "price.deleted",
    ]
    assert {e.organization_name for e in (added, changed, deleted)} == {""}  # global
    assert added.changes["input_per_million"] == [None, "2.5"]
    assert changed.changes == {"output_per_million": ["10", "12"]}
    assert (deleted.actor, deleted.target_label) == (staff, "new-model from 2030-01-01")


def test_a_form_staff_got_wrong_records_nothing(staff_client):
    response = staff_client.post(
        reverse("admin:billing_modelprice_add"), {**PRICE, "input_per_million": "-1"}
    )

    assert response.status_code == 200  # the form again, with the error
    assert events() == []


def test_budget_changes_by_staff_are_recorded(staff_client, org_a, alice):
    chosen = budget(org_a, "10")
    budgets = reverse("admin:billing_budget_changelist")

    change = reverse("admin:billing_budget_change", args=[chosen.pk])
    data = change_page(staff_client, change)
    assert staff_client.post(change, {**data, "limit_usd": "15"}).status_code == 302
    raised = staff_client.post(
        budgets,
        {"action": "raise_limit", "_selected_action": [chosen.pk], "apply": "1", "amount": "5"},
    )
    disabled = staff_client.post(
        budgets, {"action": "disable", "_selected_action": [chosen.pk], "index": "0"}
    )

    assert (raised.status_code, disabled.status_code) == (302, 302)
    assert [e.changes for e in events(org_a, action="budget.updated")] == [
        {"limit_usd": ["10", "15"]},
        {"limit_usd": ["15", "20"]},
        {"enabled": [True, False]},
    ]
    assert {e.actor_label for e in events(org_a)} == {STAFF}


def test_budgets_deleted_from_the_list_are_recorded_one_by_one(staff_client, org_a, org_b):
    first, second = budget(org_a, "1"), budget(org_b, "2")

    response = staff_client.post(
        reverse("admin:billing_budget_changelist"),
        {"action": "delete_selected", "_selected_action": [first.pk, second.pk], "post": "yes"},
    )

    assert response.status_code == 302
    assert not Budget.objects.exists()
    assert sorted((e.action, e.organization_name) for e in events()) == [
        ("budget.deleted", "Org A"),
        ("budget.deleted", "Org B"),
    ]


def test_a_budget_added_on_the_project_page_is_recorded(staff_client, org_a, project_a):
    url = reverse("admin:accounts_project_change", args=[project_a.pk])
    data = change_page(staff_client, url)
    data.update(
        {
            "budgets-TOTAL_FORMS": "1",
            "budgets-0-scope": "project",
            "budgets-0-period": "month",
            "budgets-0-limit_usd": "7",
            "budgets-0-soft_thresholds": "50",
            "budgets-0-enabled": "on",
        }
    )

    assert staff_client.post(url, data).status_code == 302

    event = only(org_a)
    assert (event.action, event.project) == ("budget.created", project_a)
    assert event.target_id == str(Budget.objects.get().pk)
    assert event.changes["limit_usd"] == [None, "7"]


def test_keys_revoked_by_staff_are_recorded(staff_client, alice, org_a, project_a):
    owner = membership(alice, org_a)
    active, revoked = (
        api_keys.api_key_create(actor=owner, project=project_a, name=name, scopes=["chat"]).key
        for name in ("active", "revoked")
    )
    api_keys.api_key_revoke(actor=owner, key=revoked)
    before = len(events())

    response = staff_client.post(
        reverse("admin:accounts_apikey_changelist"),
        {"action": "revoke", "_selected_action": [active.pk, revoked.pk], "index": "0"},
    )

    assert response.status_code == 302
    event = events()[before:]
    assert [(e.action, e.target_id, e.actor_label) for e in event] == [
        ("api_key.revoked", str(active.pk), STAFF)
    ]


def test_a_key_revoked_on_its_admin_page_is_recorded_as_revoked(
    staff_client, alice, org_a, project_a
):
    key = api_keys.api_key_create(
        actor=membership(alice, org_a), project=project_a, name="k", scopes=["chat"]
    ).key
    url = reverse("admin:accounts_apikey_change", args=[key.pk])
    data = change_page(staff_client, url)
    data.update({"revoked_at_0": "2030-01-02", "revoked_at_1": "03:04:05"})

    assert staff_client.post(url, data).status_code == 302

    event = only(org_a, action="api_key.revoked")
    assert event.changes == {"revoked_at": [None, "2030-01-02T03:04:05+00:00"]}


def test_granting_staff_rights_is_recorded(staff_client, bob):
    url = reverse("admin:accounts_user_change", args=[bob.pk])
    data = change_page(staff_client, url)
    data["is_staff"] = "on"

    assert staff_client.post(url, data).status_code == 302

    event = only(action="user.access_changed")
    assert (event.organization, event.target_label) == (None, "bob@example.com")
    assert event.changes == {"is_staff": [False, True]}


# --- reading the trail -------------------------------------------------------------------------


def test_staff_read_every_event_and_can_change_none(staff_client, org_a, org_b, alice, charlie):
    mine = audit_record(action="budget.created", organization=org_a, actor=alice)
    audit_record(action="budget.created", organization=org_b, actor=charlie)
    changelist = reverse("admin:audit_auditevent_changelist")

    listed = staff_client.get(changelist)
    searched = staff_client.get(changelist, {"q": "charlie"})
    filtered = staff_client.get(changelist, {"action__exact": "budget.created"})
    page = staff_client.get(reverse("admin:audit_auditevent_change", args=[mine.pk]))

    assert listed.status_code == searched.status_code == filtered.status_code == 200
    assert listed.context["cl"].result_count == 2
    assert searched.context["cl"].result_count == 1
    assert page.status_code == 200
    assert page.context["adminform"].form.fields == {}  # nothing to edit
    assert staff_client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    delete = reverse("admin:audit_auditevent_delete", args=[mine.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    assert "delete_selected" not in listed.context["cl"].model_admin.get_actions(
        listed.wsgi_request
    )
    assert AuditEvent.objects.count() == 2


def test_people_who_are_not_staff_are_sent_to_the_admin_login(client_for, alice):
    response = client_for(alice).get(reverse("admin:audit_auditevent_changelist"))

    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


def test_the_admin_list_costs_the_same_queries_for_one_event_or_many(staff_client, org_a, alice):
    changelist = reverse("admin:audit_auditevent_changelist")

    def queries_with(count: int) -> int:
        for _ in range(count):
            audit_record(action="budget.created", organization=org_a, actor=alice)
        with CaptureQueriesContext(connection) as captured:
            assert staff_client.get(changelist).status_code == 200
        return len(captured)

    assert queries_with(1) == queries_with(30)


def test_a_row_of_a_tenants_row_is_scoped_as_its_parent(alice, org_a, project_a):
    owner = membership(alice, org_a)
    connection = provider_services.connection_create(
        actor=owner, project=project_a, kind="openai", name="Team", api_key="sk-test-12345678"
    )
    model = provider_services.connection_model_add(actor=owner, connection=connection, name="m")
    price = ModelPrice.objects.create(
        model="m",
        input_per_million=1,
        cached_input_per_million=1,
        output_per_million=1,
        effective_from="2030-01-01",
    )

    assert audit_scope(model) == (org_a, project_a)
    assert audit_scope(budget(org_a, "1")) == (org_a, None)
    assert audit_scope(price) == (None, None)
    assert audit_scope(alice) == (None, None)
