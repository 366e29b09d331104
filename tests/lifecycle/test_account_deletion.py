"""A person deletes their account: what goes, what stays without their name, and what has to be
settled first (organizations only they own)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.contrib.sessions.models import Session
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiKey, Invitation, Membership, Organization, Role, User
from accounts.services import user_sign_up
from audit.models import AuditEvent
from audit.services import audit_record
from billing.models import Budget, UsageRecord, UsageRollup
from billing.selectors import DateRange, UsageScope, usage_dashboard
from chat.models import Attachment, Conversation, Folder, Message, RoomMember
from lifecycle import services
from lifecycle.models import OrganizationDeletion
from tests.accounts.test_two_factor import (
    app_code,
    lock_passes,
    turn_on,
    verified_client,
    wrong_code,
)
from tests.conftest import membership
from tests.factories import PASSWORD, MembershipFactory, UserFactory

from .conftest import conversation, image, ledger_total, message, spend

pytestmark = pytest.mark.django_db


def delete(client: Client, **form: str):
    return client.post(reverse("account_delete"), {"password": PASSWORD, **form})


def gone(user: User) -> bool:
    # By address: a deleted instance's pk is None, and a filter on it would find nothing anyway.
    return not User.objects.filter(email=user.email).exists()


def organization_total(organization: Organization) -> tuple[int, Decimal]:
    """What the usage dashboard shows for the whole organization this month."""
    today = timezone.now().date()
    dashboard = usage_dashboard(
        scope=UsageScope(organization=organization),
        date_range=DateRange(start=date(today.year, today.month, 1), end=today),
    )
    return dashboard.total.calls, dashboard.total.cost


# --- confirming it --------------------------------------------------------------------------------


def test_a_wrong_password_deletes_nothing(client_for, bob):
    response = delete(client_for(bob), password="not my password")

    assert response.status_code == 400
    assert "That is not your password." in response.content.decode()
    assert not gone(bob)


def test_with_two_factor_it_takes_a_current_code_too(bob):
    device, _codes = turn_on(bob)
    client = verified_client(bob)

    without = delete(client)
    wrong = delete(client, code=wrong_code(device))

    assert without.status_code == wrong.status_code == 400
    assert not gone(bob)
    lock_passes(bob)  # the wait a wrong code brings is over
    assert delete(client, code=app_code(device)).status_code == 302
    assert gone(bob)


def test_wrong_passwords_are_limited_per_minute(client_for, bob):
    client = client_for(bob)
    for _ in range(services.PASSWORD_TRIES_PER_MINUTE):
        assert delete(client, password="guess").status_code == 400

    refused = delete(client)  # even the right one, until the minute is over

    assert "per minute" in refused.content.decode()
    assert not gone(bob)


# --- organizations only they own ------------------------------------------------------------------


def test_the_only_owner_of_an_organization_is_refused_and_shown_what_to_do(
    client_for, alice, bob, org_a
):
    client = client_for(alice)

    page = client.get(reverse("account_delete")).content.decode()
    refused = delete(client)

    assert "Org A" in page
    assert reverse("account_delete_transfer", args=[org_a.slug]) in page
    assert reverse("organization_delete", args=[org_a.slug]) in page
    assert refused.status_code == 400
    assert "You are the only owner of Org A" in refused.content.decode()
    assert not gone(alice)


def test_once_another_member_is_made_owner_the_account_can_go(client_for, alice, bob, org_a):
    client = client_for(alice)

    moved = client.post(
        reverse("account_delete_transfer", args=[org_a.slug]),
        {"member": membership(bob, org_a).pk},
    )
    deleted = delete(client)

    assert moved.status_code == 302
    assert deleted.status_code == 302
    assert gone(alice)
    assert membership(bob, org_a).role == Role.OWNER
    assert Organization.objects.filter(pk=org_a.pk).exists()


def test_once_the_organization_is_scheduled_for_deletion_the_account_can_go(
    client_for, alice, org_a
):
    client = client_for(alice)
    client.post(reverse("organization_delete", args=[org_a.slug]), {"name": "Org A"})

    assert delete(client).status_code == 302

    assert gone(alice)
    deletion = OrganizationDeletion.objects.get(organization=org_a)
    assert deletion.requested_by is None
    assert deletion.is_pending


def test_an_organization_with_another_owner_does_not_hold_anyone_back(alice, bob, org_a):
    Membership.objects.filter(user=bob, organization=org_a).update(role=Role.OWNER)

    services.account_delete(user=alice, password=PASSWORD)

    assert gone(alice)


def test_only_members_of_the_organization_can_be_made_owner(
    client_for, alice, charlie, org_a, org_b
):
    outsider = membership(charlie, org_b)

    response = client_for(alice).post(
        reverse("account_delete_transfer", args=[org_a.slug]), {"member": outsider.pk}
    )

    assert response.status_code == 404
    assert membership(charlie, org_b).role == Role.OWNER
    assert not Membership.objects.filter(user=charlie, organization=org_a).exists()


def test_only_an_owner_makes_owners(client_for, alice, bob, org_a):
    third = MembershipFactory(organization=org_a, role=Role.ADMIN)
    Membership.objects.filter(user=bob, organization=org_a).update(role=Role.ADMIN)

    response = client_for(bob).post(
        reverse("account_delete_transfer", args=[org_a.slug]), {"member": third.pk}
    )

    assert response.status_code == 403
    assert Membership.objects.get(pk=third.pk).role == Role.ADMIN


def test_an_outsider_gets_404_on_the_transfer(client_for, alice, bob, charlie, org_a):
    response = client_for(charlie).post(
        reverse("account_delete_transfer", args=[org_a.slug]),
        {"member": membership(bob, org_a).pk},
    )

    assert response.status_code == 404
    assert membership(bob, org_a).role == Role.MEMBER


# --- what goes, and what stays without their name -------------------------------------------------


@pytest.fixture
def bobs_world(fake_price, alice, bob, org_a, project_a, media, django_capture_on_commit_callbacks):
    """bob, a member of org A: his chat with an image, his words in alice's room, his calls in
    the ledger, a member budget, a folder, a key he created, an audit event he made."""
    chat = conversation(bob, project_a, title="Bob's chat")
    asked = message(chat, "bob asks", author=bob)
    reply = message(chat, "an answer", author=bob, role=Message.Role.ASSISTANT, parent=asked)
    with django_capture_on_commit_callbacks(execute=True):
        picture = image(asked, uploaded_by=bob)
    room = conversation(alice, project_a, title="Alice's room", sharing="members")
    RoomMember.objects.create(conversation=room, user=bob)
    in_room = message(room, "bob says hi in the room", author=bob)
    rows = [
        spend(project_a, user=bob, conversation=chat, reply=reply),
        spend(project_a, user=bob, conversation=room),
        spend(project_a, user=alice, conversation=room),
    ]
    budget = Budget.objects.create(
        organization=org_a,
        project=project_a,
        user=bob,
        scope=Budget.Scope.MEMBER,
        limit_usd=Decimal("5"),
    )
    Folder.objects.create(project=project_a, owner=bob, name="Bob's folder")
    key = ApiKey.objects.create(
        project=project_a, created_by=bob, name="bob's integration", digest="d" * 64
    )
    event = audit_record(
        action="member.invited", organization=org_a, actor=bob, target=Organization(pk=org_a.pk)
    )
    return {
        "chat": chat,
        "picture": picture,
        "room": room,
        "in_room": in_room,
        "rows": rows,
        "budget": budget,
        "key": key,
        "event": event,
    }


def test_his_conversations_and_their_files_go(bob, bobs_world, django_capture_on_commit_callbacks):
    picture = bobs_world["picture"]
    assert default_storage.exists(picture.file.name)

    with django_capture_on_commit_callbacks(execute=True):
        services.account_delete(user=bob, password=PASSWORD)

    assert gone(bob)
    assert not Conversation.objects.filter(pk=bobs_world["chat"].pk).exists()
    assert not Attachment.objects.filter(pk=picture.pk).exists()
    assert not default_storage.exists(picture.file.name)
    assert not Folder.objects.filter(name="Bob's folder").exists()


def test_his_ledger_rows_stay_without_his_name_and_the_totals_do_not_move(bob, org_a, bobs_world):
    before = ledger_total(org_a), organization_total(org_a)
    ids = sorted(row.pk for row in bobs_world["rows"])
    bob_id = bob.pk
    assert UsageRollup.objects.filter(user_id=bob_id).exists()

    services.account_delete(user=bob, password=PASSWORD)

    assert (ledger_total(org_a), organization_total(org_a)) == before
    assert before[0][0] == 3
    assert before[0][1] > 0
    rows = UsageRecord.objects.filter(pk__in=ids).order_by("pk")
    assert [row.pk for row in rows] == ids
    assert [row.user_id for row in rows][:2] == [None, None]
    assert rows[0].conversation_id is None
    assert rows[0].message_id is None
    assert not UsageRollup.objects.filter(user_id=bob_id).exists()


def test_his_words_in_others_rooms_stay_without_his_name(bob, bobs_world):
    services.account_delete(user=bob, password=PASSWORD)

    said = Message.objects.get(pk=bobs_world["in_room"].pk)
    assert said.content == "bob says hi in the room"
    assert said.author_id is None
    assert Conversation.objects.filter(pk=bobs_world["room"].pk).exists()
    assert not RoomMember.objects.filter(conversation=bobs_world["room"]).exists()


def test_his_member_budget_goes_and_keys_he_made_keep_working(bob, bobs_world):
    services.account_delete(user=bob, password=PASSWORD)

    assert not Budget.objects.filter(pk=bobs_world["budget"].pk).exists()
    key = ApiKey.objects.get(pk=bobs_world["key"].pk)
    assert key.created_by_id is None
    assert key.is_active


def test_the_audit_trail_forgets_who_he_was(bob, bobs_world):
    services.account_delete(user=bob, password=PASSWORD)

    event = AuditEvent.objects.get(pk=bobs_world["event"].pk)
    assert event.actor_id is None
    assert "bob@example.com" not in event.actor_label


def test_he_is_logged_out_everywhere(client_for, bob, org_a):
    elsewhere = client_for(bob)
    here = client_for(bob)
    assert elsewhere.get(reverse("account")).status_code == 200

    response = delete(here)

    assert response.status_code == 302
    assert response.url == reverse("login")
    assert elsewhere.get(reverse("account")).status_code == 302
    assert here.get(reverse("account")).status_code == 302
    assert not [
        s for s in Session.objects.all() if s.get_decoded().get("_auth_user_id") == str(bob.pk)
    ]
    assert "Your account and your data are deleted." in here.get(reverse("login")).content.decode()


def test_invitations_he_accepted_go_and_those_he_sent_stay(alice, bob, org_a, org_b):
    accepted = Invitation.objects.create(
        organization=org_a,
        email=bob.email,
        token_digest="a" * 64,
        expires_at=timezone.now(),
        accepted_at=timezone.now(),
    )
    sent = Invitation.objects.create(
        organization=org_a,
        email="dave@example.com",
        invited_by=bob,
        token_digest="b" * 64,
        expires_at=timezone.now(),
    )

    services.account_delete(user=bob, password=PASSWORD)

    assert not Invitation.objects.filter(pk=accepted.pk).exists()
    assert Invitation.objects.get(pk=sent.pk).invited_by_id is None


# --- the personal workspace -----------------------------------------------------------------------


def test_the_personal_workspace_goes_with_the_account_and_its_ledger_stays(fake_price):
    dave = user_sign_up(email="dave@example.com", password=PASSWORD, name="Dave")
    workspace = Organization.objects.get(memberships__user=dave, is_personal=True)
    project = workspace.projects.get()
    chat = conversation(dave, project, title="Dave's notes")
    row = spend(project, user=dave, conversation=chat)
    before = ledger_total(workspace)

    services.account_delete(user=dave, password=PASSWORD)

    tombstone = Organization.objects.get(pk=workspace.pk)  # the ledger points at it
    assert tombstone.name == services.TOMBSTONE_NAME
    assert "dave" not in tombstone.slug
    assert not tombstone.memberships.exists()
    assert not tombstone.projects.exists()
    assert ledger_total(tombstone) == before
    assert UsageRecord.objects.get(pk=row.pk).user_id is None
    assert OrganizationDeletion.objects.get(organization=tombstone).completed_at is not None


def test_a_personal_workspace_with_no_spending_goes_entirely():
    erin = user_sign_up(email="erin@example.com", password=PASSWORD)
    workspace = Organization.objects.get(memberships__user=erin, is_personal=True)

    services.account_delete(user=erin, password=PASSWORD)

    assert not Organization.objects.filter(pk=workspace.pk).exists()


def test_the_page_lists_the_personal_workspace_as_going_with_the_account(client_for):
    frank = user_sign_up(email="frank@example.com", password=PASSWORD, name="Frank")

    page = client_for(frank).get(reverse("account_delete")).content.decode()

    assert "Frank&#x27;s workspace" in page
    assert "personal workspace" in page


def test_someone_elses_personal_workspace_only_loses_him(alice, bob):
    grace = UserFactory(email="grace@example.com")
    workspace = Organization.objects.create(name="Grace's", slug="graces", is_personal=True)
    MembershipFactory(user=grace, organization=workspace, role=Role.OWNER)
    MembershipFactory(user=bob, organization=workspace, role=Role.MEMBER)

    services.account_delete(user=bob, password=PASSWORD)

    assert Organization.objects.get(pk=workspace.pk).name == "Grace's"
    assert list(workspace.memberships.values_list("user__email", flat=True)) == [grace.email]
