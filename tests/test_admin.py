"""The Django admin: every model registered, staff only."""

import pytest
from django.contrib import admin
from django.urls import reverse

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, alice, bob, charlie, project_a):
    client.force_login(UserFactory(email="staff@example.com", is_staff=True, is_superuser=True))
    return client


OUR_APPS = {"accounts", "audit", "billing", "chat", "gateway", "lifecycle", "providers"}


def test_every_model_is_registered():
    from django.apps import apps

    ours = [m for m in apps.get_models() if m._meta.app_label in OUR_APPS]
    assert ours
    assert [m for m in ours if m not in admin.site._registry] == []


@pytest.mark.parametrize(
    "model",
    [m for m in admin.site._registry if m._meta.app_label in OUR_APPS],
)
def test_staff_can_list_search_and_filter(staff_client, model):
    opts = model._meta
    changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")

    assert staff_client.get(changelist).status_code == 200
    assert staff_client.get(changelist, {"q": "alice"}).status_code == 200
    obj = model._default_manager.first()
    if obj is not None:
        change = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
        assert staff_client.get(change).status_code == 200


def test_organization_admin_shows_members_and_projects(staff_client, org_a):
    response = staff_client.get(reverse("admin:accounts_organization_change", args=[org_a.pk]))

    body = response.content.decode()
    assert "alice@example.com" in body
    assert "Project A" in body


def test_non_staff_are_sent_to_the_admin_login(client_for, alice):
    response = client_for(alice).get(reverse("admin:accounts_organization_changelist"))

    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))
