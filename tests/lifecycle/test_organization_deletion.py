"""An owner schedules an organization's deletion; it spends nothing during the grace, shows a
banner, may be cancelled; a daily task deletes it once its date has passed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core import mail
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from accounts.models import ApiKey, Membership, Organization, Project, Role
from billing.models import Budget, UsageRecord
from chat.models import Attachment, Conversation
from core import config_cache
from core.errors import ServiceError
from gateway.models import File as GatewayFile
from gateway.models import StoredResponse
from lifecycle import selectors, services, tasks
from lifecycle.models import OrganizationDeletion
from providers.models import ProviderConnection
from tests.conftest import membership
from tests.factories import UserFactory

from .conftest import conversation, image, ledger_total, message, spend

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def schedule(alice, org_a, *, now: datetime = NOW) -> OrganizationDeletion:
    return services.organization_deletion_request(
        actor=membership(alice, org_a), confirm_name=org_a.name, now=now
    )


# --- asking for it --------------------------------------------------------------------------------


def test_an_owner_schedules_it_by_typing_its_name(
    client_for, alice, bob, org_a, django_capture_on_commit_callbacks
):
    Membership.objects.filter(user=bob, organization=org_a).update(role=Role.ADMIN)
    client = client_for(alice)
    url = reverse("organization_delete", args=[org_a.slug])

    mistyped = client.post(url, {"name": "org a"})
    assert mistyped.status_code == 400
    assert not OrganizationDeletion.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        scheduled = client.post(url, {"name": "Org A"})

    assert scheduled.status_code == 302
    deletion = OrganizationDeletion.objects.get(organization=org_a)
    assert deletion.requested_by == alice
    assert deletion.scheduled_for - deletion.requested_at == timedelta(days=14)
    [sent] = mail.outbox
    assert set(sent.to) == {"alice@example.com", "bob@example.com"}
    assert "Org A" in sent.subject
    page = client.get(url).content.decode()
    assert "Cancel the deletion" in page


def test_the_grace_is_a_setting(settings, alice, org_a):
    settings.ORG_DELETION_GRACE_DAYS = 3

    deletion = schedule(alice, org_a)

    assert deletion.scheduled_for == NOW + timedelta(days=3)


def test_it_is_scheduled_once(alice, org_a):
    schedule(alice, org_a)

    with pytest.raises(ServiceError) as again:
        schedule(alice, org_a)

    assert again.value.code == "already_scheduled"
    assert OrganizationDeletion.objects.count() == 1


def test_a_personal_workspace_goes_with_its_account_instead(alice):
    workspace = Organization.objects.create(name="Alice's", slug="alices", is_personal=True)
    Membership.objects.create(user=alice, organization=workspace, role=Role.OWNER)

    with pytest.raises(ServiceError) as refused:
        services.organization_deletion_request(
            actor=membership(alice, workspace), confirm_name="Alice's"
        )

    assert refused.value.code == "personal_organization"
    assert not OrganizationDeletion.objects.exists()


def test_only_owners_schedule_or_cancel_it(client_for, alice, bob, org_a):
    Membership.objects.filter(user=bob, organization=org_a).update(role=Role.ADMIN)
    admin = client_for(bob)

    assert admin.get(reverse("organization_delete", args=[org_a.slug])).status_code == 403
    refused = admin.post(reverse("organization_delete", args=[org_a.slug]), {"name": "Org A"})
    assert refused.status_code == 403
    assert not OrganizationDeletion.objects.exists()

    schedule(alice, org_a)
    cancel = admin.post(reverse("organization_delete_cancel", args=[org_a.slug]))
    assert cancel.status_code == 403
    assert OrganizationDeletion.objects.filter(organization=org_a).exists()


def test_an_outsider_gets_404_on_every_page(client_for, alice, charlie, org_a):
    outsider = client_for(charlie)

    assert outsider.get(reverse("organization_delete", args=[org_a.slug])).status_code == 404
    posted = outsider.post(reverse("organization_delete", args=[org_a.slug]), {"name": "Org A"})
    assert posted.status_code == 404
    assert not OrganizationDeletion.objects.exists()

    schedule(alice, org_a)
    assert (
        outsider.post(reverse("organization_delete_cancel", args=[org_a.slug])).status_code == 404
    )
    assert OrganizationDeletion.objects.filter(organization=org_a).exists()


# --- during the grace -----------------------------------------------------------------------------


def test_it_spends_nothing_during_the_grace_and_again_once_cancelled(client_for, alice, org_a):
    services.check_organization_can_spend(org_a.pk)  # nothing scheduled: allowed

    schedule(alice, org_a)
    with pytest.raises(ServiceError) as refused:
        services.check_organization_can_spend(org_a.pk)
    assert refused.value.code == "organization_pending_deletion"
    assert refused.value.status == 403
    assert "scheduled for deletion" in refused.value.message

    client_for(alice).post(reverse("organization_delete_cancel", args=[org_a.slug]))
    services.check_organization_can_spend(org_a.pk)
    assert not OrganizationDeletion.objects.exists()


def test_the_check_reads_memory_not_the_database(alice, org_a, org_b, django_assert_num_queries):
    schedule(alice, org_a)
    with pytest.raises(ServiceError):
        services.check_organization_can_spend(org_a.pk)  # read once, then kept

    with django_assert_num_queries(0):
        services.check_organization_can_spend(org_b.pk)
        with pytest.raises(ServiceError):
            services.check_organization_can_spend(org_a.pk)


def test_a_cancel_is_seen_by_the_copy_in_memory_at_once(alice, org_a):
    deletion = schedule(alice, org_a)
    assert org_a.pk in selectors.pending_deletions().by_id

    services.organization_deletions_cancel(deletions=[deletion])

    assert org_a.pk not in selectors.pending_deletions().by_id
    config_cache.clear()
    assert org_a.pk not in selectors.pending_deletions().by_id


def test_its_pages_show_a_banner_with_the_way_to_cancel_for_owners(client_for, alice, bob, org_a):
    settings_url = reverse("organization_settings", args=[org_a.slug])
    assert "scheduled for deletion" not in client_for(alice).get(settings_url).content.decode()

    schedule(alice, org_a)

    for_owner = client_for(alice).get(settings_url).content.decode()
    for_member = client_for(bob).get(settings_url).content.decode()
    assert "Org A is scheduled for deletion on" in for_owner
    assert for_owner.count("scheduled for deletion on") == 1
    assert reverse("organization_delete", args=[org_a.slug]) in for_owner
    assert "Org A is scheduled for deletion on" in for_member
    assert reverse("organization_delete", args=[org_a.slug]) not in for_member


def test_other_organizations_pages_show_no_banner(client_for, alice, charlie, org_a, org_b):
    schedule(alice, org_a)

    page = client_for(charlie).get(reverse("organization_settings", args=[org_b.slug]))

    assert "scheduled for deletion" not in page.content.decode()


# --- carrying it out ------------------------------------------------------------------------------


@pytest.fixture
def org_a_full(fake_price, alice, bob, org_a, project_a, media, django_capture_on_commit_callbacks):
    """Org A with a conversation and its image, a /v1 file, a key, a budget, a connection and
    ledger rows."""
    chat = conversation(alice, project_a, title="To go")
    asked = message(chat, "hello", author=alice)
    with django_capture_on_commit_callbacks(execute=True):
        picture = image(asked, uploaded_by=alice)
        upload = GatewayFile(project=project_a, purpose="batch", filename="in.jsonl", bytes=2)
        upload.file.save("in.jsonl", ContentFile(b"{}"), save=False)
        upload.save()
    spend(project_a, user=alice, conversation=chat)
    spend(project_a, user=bob)
    ApiKey.objects.create(project=project_a, name="k", digest="e" * 64)
    Budget.objects.create(organization=org_a, scope="organization", limit_usd=5)
    ProviderConnection.objects.create(organization=org_a, kind="openai", name="Org's own")
    return {"chat": chat, "picture": picture, "upload": upload}


def test_the_daily_task_deletes_it_once_its_date_has_passed(
    alice, bob, org_a, project_a, org_a_full, django_capture_on_commit_callbacks
):
    deletion = schedule(alice, org_a, now=NOW)
    before = ledger_total(org_a)

    assert services.organization_deletions_carry_out(now=NOW + timedelta(days=13)) == 0
    assert Conversation.objects.filter(pk=org_a_full["chat"].pk).exists()

    with django_capture_on_commit_callbacks(execute=True):
        done = services.organization_deletions_carry_out(now=deletion.scheduled_for)

    assert done == 1
    # Its ledger must stay (PROTECT): the row stays, emptied and nameless.
    tombstone = Organization.objects.get(pk=org_a.pk)
    assert tombstone.name == services.TOMBSTONE_NAME
    assert not tombstone.memberships.exists()
    assert not Project.objects.filter(organization=tombstone).exists()
    assert not Conversation.objects.exists()
    assert not Attachment.objects.exists()
    assert not ApiKey.objects.exists()
    assert not Budget.objects.filter(organization=tombstone).exists()
    assert not ProviderConnection.objects.filter(organization=tombstone).exists()
    assert not default_storage.exists(org_a_full["picture"].file.name)
    assert not default_storage.exists(org_a_full["upload"].file.name)
    assert ledger_total(tombstone) == before
    assert UsageRecord.objects.filter(organization=tombstone, project__isnull=True).count() == 2
    assert OrganizationDeletion.objects.get(organization=tombstone).completed_at is not None
    # Done: the next run finds nothing, and the tombstone is nobody's to reach.
    assert services.organization_deletions_carry_out(now=deletion.scheduled_for) == 0
    assert not Organization.objects.for_user(alice).filter(pk=org_a.pk).exists()
    assert Organization.objects.for_user(bob).count() == 0


def test_one_that_never_spent_goes_entirely(alice, org_a, project_a, org_b):
    schedule(alice, org_a, now=NOW)

    assert services.organization_deletions_carry_out(now=NOW + timedelta(days=15)) == 1

    assert not Organization.objects.filter(pk=org_a.pk).exists()
    assert not OrganizationDeletion.objects.exists()
    assert Organization.objects.filter(pk=org_b.pk).exists()


def test_stored_responses_go_with_it(alice, org_a, project_a):
    first = StoredResponse.objects.create(project=project_a, model="fake-gpt")
    StoredResponse.objects.create(project=project_a, model="fake-gpt", previous=first)
    schedule(alice, org_a, now=NOW)

    services.organization_deletions_carry_out(now=NOW + timedelta(days=15), batch_size=1)

    assert not StoredResponse.objects.exists()


def test_one_that_fails_keeps_no_other_from_going(
    alice, charlie, org_a, org_b, monkeypatch, caplog
):
    schedule(alice, org_a, now=NOW)
    schedule(charlie, org_b, now=NOW)
    purge = services.organization_purge

    def fails_for_a(*, organization, **kwargs):
        if organization.pk == org_a.pk:
            raise RuntimeError("storage down")
        return purge(organization=organization, **kwargs)

    monkeypatch.setattr(services, "organization_purge", fails_for_a)

    assert services.organization_deletions_carry_out(now=NOW + timedelta(days=15)) == 1
    assert Organization.objects.filter(pk=org_a.pk).exists()
    assert not Organization.objects.filter(pk=org_b.pk).exists()
    assert "deleting organization" in caplog.text
    monkeypatch.setattr(services, "organization_purge", purge)
    assert services.organization_deletions_carry_out(now=NOW + timedelta(days=15)) == 1
    assert not Organization.objects.filter(pk=org_a.pk).exists()


def test_the_beat_task_runs_it(alice, org_a):
    schedule(alice, org_a, now=datetime(2000, 1, 1, tzinfo=UTC))  # long past its date

    assert tasks.delete_due_organizations.delay().get() == 1
    assert not Organization.objects.filter(pk=org_a.pk).exists()


def test_its_deletion_is_in_the_audit_trail(alice, org_a):
    from audit.models import AuditEvent

    schedule(alice, org_a, now=NOW)
    services.organization_deletions_carry_out(now=NOW + timedelta(days=15))

    event = AuditEvent.objects.get(action="organization.deleted")
    assert (event.organization_name, event.actor_id) == ("Org A", alice.pk)


# --- staff ----------------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(email="staff@example.com", is_staff=True, is_superuser=True))
    return client


def test_staff_see_scheduled_deletions_and_cancel_them(staff_client, alice, org_a):
    deletion = schedule(alice, org_a)
    changelist = reverse("admin:lifecycle_organizationdeletion_changelist")

    listed = staff_client.get(changelist)
    assert listed.status_code == 200
    assert "Org A" in listed.content.decode()
    detail = reverse("admin:lifecycle_organizationdeletion_change", args=[deletion.pk])
    assert staff_client.get(detail).status_code == 200

    staff_client.post(changelist, {"action": "cancel", ACTION_CHECKBOX_NAME: [deletion.pk]})

    assert not OrganizationDeletion.objects.exists()
    services.check_organization_can_spend(org_a.pk)


def test_staff_see_retention_policies(staff_client, alice, org_a):
    services.retention_set(actor=membership(alice, org_a), days=365)

    response = staff_client.get(reverse("admin:lifecycle_retentionpolicy_changelist"))

    assert response.status_code == 200
    assert "Org A" in response.content.decode()
