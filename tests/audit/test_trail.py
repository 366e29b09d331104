"""The trail itself: append-only, written in the change's transaction, never a secret, kept
after what it names is gone, and forgetting a person who deleted their account."""

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.test import RequestFactory

from accounts.models import Organization, Project
from accounts.signals import SECRET, Target, changed, diff, record_change
from audit.models import DELETED_USER, SYSTEM, AuditEvent
from audit.services import audit_forget_actor, audit_record, record_received
from tests.audit.conftest import events, only
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def record(organization, **fields) -> AuditEvent:
    return audit_record(action="budget.updated", organization=organization, **fields)


def test_it_refuses_to_change_or_delete_an_event(org_a, alice):
    event = record(org_a, actor=alice, changes={"limit_usd": ["10", "20"]})

    event.actor_label = "someone else"
    with pytest.raises(TypeError, match="append-only"):
        event.save()
    with pytest.raises(TypeError, match="append-only"):
        event.delete()
    with pytest.raises(TypeError, match="append-only"):
        AuditEvent.objects.filter(pk=event.pk).update(actor_label="someone else")
    with pytest.raises(TypeError, match="append-only"):
        AuditEvent.objects.filter(pk=event.pk).delete()
    # bulk_update's own transaction (no savepoint) is spoiled by the refusal: ours keeps it.
    with pytest.raises(TypeError, match="append-only"), transaction.atomic():
        AuditEvent.objects.bulk_update([event], ["actor_label"])

    assert AuditEvent.objects.get(pk=event.pk).actor_label == "alice@example.com"


def rename(organization, *, action: str, then_fail: bool) -> None:
    """Rename the organization and record it, in one transaction; fail after, if asked."""
    with transaction.atomic():
        organization.name = "Renamed"
        organization.save()
        record_change(action=action, organization=organization, changes={"name": ["a", "b"]})
        if then_fail:
            raise RuntimeError("the change fails after it was recorded")


def test_a_change_rolled_back_leaves_no_event(org_a):
    with pytest.raises(RuntimeError):
        rename(org_a, action="budget.updated", then_fail=True)

    assert events() == []
    assert Organization.objects.get(pk=org_a.pk).name == "Org A"


def test_an_event_that_cannot_be_written_rolls_the_change_back(org_a):
    with pytest.raises(ValueError, match="Unknown audit action"):
        rename(org_a, action="budget.misspelled", then_fail=False)

    assert Organization.objects.get(pk=org_a.pk).name == "Org A"
    assert events() == []


def test_a_change_that_stands_has_its_event(org_a):
    rename(org_a, action="budget.updated", then_fail=False)

    assert only(org_a).changes == {"name": ["a", "b"]}


def test_with_no_receiver_connected_recording_raises(org_a):
    assert changed.disconnect(dispatch_uid="audit.record")
    try:
        with pytest.raises(ImproperlyConfigured):
            record_change(action="budget.updated", organization=org_a)
    finally:
        changed.connect(record_received, dispatch_uid="audit.record")


def test_an_edit_that_changed_nothing_records_nothing(org_a, alice):
    record_change(
        action="budget.updated", organization=org_a, actor=alice, changes=diff({"a": 1}, {"a": 1})
    )

    assert events() == []


def test_secrets_are_never_stored_whatever_the_caller_passes(org_a, alice):
    event = record(
        org_a,
        actor=alice,
        changes={
            "api_key": ["sk-old-secret", "sk-new-secret"],
            "digest": [None, "ab12cd"],
            "name": ["old", "new"],
        },
    )

    assert event.changes == {"api_key": SECRET, "digest": SECRET, "name": ["old", "new"]}
    assert "secret" not in str(AuditEvent.objects.values_list("changes", flat=True)[0])


def test_diff_shows_a_secret_only_as_changed():
    assert diff({"key": "a", "name": "x"}, {"key": "b", "name": "x"}, secret=["key"]) == {
        "key": "changed"
    }


def test_it_names_the_actor_and_snapshots_the_names(org_a, project_a, alice):
    event = record(org_a, actor=alice, project=project_a, target=project_a)

    assert (event.actor, event.actor_label) == (alice, "alice@example.com")
    assert (event.organization_name, event.project_name) == ("Org A", "Project A")
    assert (event.target_type, event.target_id) == ("accounts.project", str(project_a.pk))
    assert event.target_label == str(project_a)


def test_without_an_actor_or_a_request_it_is_the_system(org_a):
    assert record(org_a).actor_label == SYSTEM


def test_it_keeps_the_address_of_the_request(org_a, alice):
    request = RequestFactory().post("/", REMOTE_ADDR="203.0.113.9")

    assert record(org_a, actor=alice, request=request).ip == "203.0.113.9"
    assert record(org_a, actor=alice, request=RequestFactory().post("/", REMOTE_ADDR="")).ip is None


def test_the_trail_outlives_the_organization_and_project(org_a, project_a, alice):
    event = record(org_a, actor=alice, project=project_a)

    Project.objects.filter(pk=project_a.pk).delete()
    org_a.delete()

    event = AuditEvent.objects.get(pk=event.pk)
    assert (event.organization, event.project) == (None, None)
    assert (event.organization_name, event.project_name) == ("Org A", "Project A")


def test_forgetting_a_person_keeps_what_they_did_but_not_who(org_a, alice, bob):
    by_bob = record(org_a, actor=bob, changes={"limit_usd": ["1", "2"]})
    about_bob = audit_record(
        action="member.role_changed",
        organization=org_a,
        actor=alice,
        target=bob,
        changes={"role": ["member", "admin"]},
    )
    by_alice = record(org_a, actor=alice)

    assert audit_forget_actor(user_id=bob.pk) == 2

    by_bob, about_bob, by_alice = (
        AuditEvent.objects.get(pk=e.pk) for e in (by_bob, about_bob, by_alice)
    )
    assert (by_bob.actor, by_bob.actor_label) == (None, DELETED_USER)
    assert by_bob.changes == {"limit_usd": ["1", "2"]}
    assert (about_bob.actor, about_bob.actor_label) == (alice, "alice@example.com")
    assert about_bob.target_label == DELETED_USER
    assert (by_alice.actor, by_alice.actor_label) == (alice, "alice@example.com")
    assert audit_forget_actor(user_id=bob.pk) == 0  # nothing left naming bob


def test_forgetting_a_person_takes_their_address_out_of_every_event(org_a, alice, bob):
    invited = audit_record(
        action="member.invited",
        organization=org_a,
        actor=alice,
        target=Target("accounts.invitation", "7", "Bob@Example.com"),
        changes={"email": [None, "bob@example.com"], "role": [None, "member"]},
    )
    budget = record(org_a, actor=alice, changes={"user": [None, "bob@example.com"]})
    other = record(org_a, actor=alice, changes={"user": [None, "carol@example.com"]})

    assert audit_forget_actor(user_id=bob.pk, email=bob.email) == 2

    invited, budget, other = (AuditEvent.objects.get(pk=e.pk) for e in (invited, budget, other))
    assert invited.target_label == DELETED_USER
    assert invited.changes == {"email": [None, DELETED_USER], "role": [None, "member"]}
    assert budget.changes == {"user": [None, DELETED_USER]}
    assert other.changes == {"user": [None, "carol@example.com"]}
    assert audit_forget_actor(user_id=bob.pk, email=bob.email) == 0


def test_a_deleted_account_is_unlinked_even_before_it_is_forgotten(org_a):
    someone = UserFactory(email="gone@example.com")
    event = record(org_a, actor=someone)

    someone.delete()

    assert AuditEvent.objects.get(pk=event.pk).actor is None
    assert only(org_a).actor_label == "gone@example.com"  # until audit_forget_actor runs
