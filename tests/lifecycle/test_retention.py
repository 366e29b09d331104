"""An owner sets how long conversations are kept; a daily task purges the older ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.files.storage import default_storage
from django.urls import reverse

from accounts.models import Membership, Role
from billing.models import UsageRecord
from chat.models import Conversation, Message
from core.errors import ServiceError
from lifecycle import services, tasks
from lifecycle.models import RetentionPolicy
from tests.conftest import membership

from .conftest import conversation, image, ledger_total, message, spend

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


@pytest.fixture
def thirty_days(alice, org_a) -> RetentionPolicy:
    policy = services.retention_set(actor=membership(alice, org_a), days=30)
    assert policy is not None
    return policy


def test_it_purges_what_is_older_than_the_period_and_nothing_else(
    thirty_days, alice, bob, charlie, project_a, project_b
):
    old = conversation(alice, project_a, title="old", last_message_at=days_ago(31))
    old_room = conversation(bob, project_a, sharing="project", last_message_at=days_ago(400))
    recent = conversation(alice, project_a, title="recent", last_message_at=days_ago(29))
    elsewhere = conversation(charlie, project_b, last_message_at=days_ago(400))  # no policy

    purged = services.retention_purge(now=NOW)

    assert purged == 2
    remaining = set(Conversation.objects.values_list("pk", flat=True))
    assert remaining == {recent.pk, elsewhere.pk}
    assert old.pk not in remaining
    assert old_room.pk not in remaining


def test_a_conversation_with_a_reply_streaming_is_never_purged(thirty_days, alice, project_a):
    busy = conversation(alice, project_a, last_message_at=days_ago(90))
    asked = message(busy, "still there?", author=alice)
    message(
        busy,
        "writing…",
        author=alice,
        role=Message.Role.ASSISTANT,
        state=Message.State.STREAMING,
        parent=asked,
    )

    assert services.retention_purge(now=NOW) == 0
    assert Conversation.objects.filter(pk=busy.pk).exists()

    Message.objects.filter(conversation=busy).update(state=Message.State.COMPLETE)
    assert services.retention_purge(now=NOW) == 1
    assert not Conversation.objects.filter(pk=busy.pk).exists()


def test_ledger_rows_stay_and_images_go(
    thirty_days, fake_price, alice, org_a, project_a, media, django_capture_on_commit_callbacks
):
    old = conversation(alice, project_a, last_message_at=days_ago(60))
    asked = message(old, "look", author=alice)
    with django_capture_on_commit_callbacks(execute=True):
        picture = image(asked, uploaded_by=alice)
    row = spend(project_a, user=alice, conversation=old)
    before = ledger_total(org_a)

    with django_capture_on_commit_callbacks(execute=True):
        services.retention_purge(now=NOW)

    assert ledger_total(org_a) == before
    kept = UsageRecord.objects.get(pk=row.pk)
    assert (kept.conversation_id, kept.user_id) == (None, alice.pk)
    assert not default_storage.exists(picture.file.name)


def test_it_is_idempotent_and_goes_in_small_batches(thirty_days, alice, project_a):
    for n in range(7):
        conversation(alice, project_a, title=f"old {n}", last_message_at=days_ago(40 + n))
    keep = conversation(alice, project_a, last_message_at=days_ago(1))

    assert services.retention_purge(now=NOW, batch_size=3) == 7
    assert services.retention_purge(now=NOW, batch_size=3) == 0
    assert list(Conversation.objects.values_list("pk", flat=True)) == [keep.pk]


def test_off_by_default_and_when_turned_off(alice, org_a, project_a, thirty_days):
    old = conversation(alice, project_a, last_message_at=days_ago(1000))
    services.retention_set(actor=membership(alice, org_a), days=None)

    assert services.retention_purge(now=NOW) == 0
    assert Conversation.objects.filter(pk=old.pk).exists()
    assert not RetentionPolicy.objects.exists()


def test_the_daily_task_purges(alice, project_a, thirty_days):
    # The task reads the clock itself: a conversation far past the period goes whenever it runs.
    conversation(alice, project_a, last_message_at=datetime(2000, 1, 1, tzinfo=UTC))

    assert tasks.purge_expired_conversations.delay().get() == 1
    assert not Conversation.objects.exists()


# --- the page -------------------------------------------------------------------------------------


def test_an_owner_sets_the_period_on_the_page(client_for, alice, org_a):
    client = client_for(alice)
    url = reverse("organization_retention", args=[org_a.slug])

    assert "Off: conversations are kept" in client.get(url).content.decode()
    saved = client.post(url, {"days": "90"})
    assert saved.status_code == 302
    assert RetentionPolicy.objects.get(organization=org_a).days == 90
    assert "deleted 90 days after" in client.get(url).content.decode()

    client.post(url, {"days": ""})
    assert not RetentionPolicy.objects.filter(organization=org_a).exists()


@pytest.mark.parametrize("days", ["29", "3651", "-1", "many"])
def test_the_period_is_a_month_to_ten_years(client_for, alice, org_a, days):
    response = client_for(alice).post(
        reverse("organization_retention", args=[org_a.slug]), {"days": days}
    )

    assert response.status_code == 400
    assert not RetentionPolicy.objects.filter(organization=org_a).exists()


def test_the_service_refuses_a_period_out_of_range(alice, org_a):
    with pytest.raises(ServiceError) as refused:
        services.retention_set(actor=membership(alice, org_a), days=10)

    assert (refused.value.code, refused.value.param) == ("invalid_days", "days")


def test_only_owners_set_it(client_for, alice, bob, org_a):
    Membership.objects.filter(user=bob, organization=org_a).update(role=Role.ADMIN)
    url = reverse("organization_retention", args=[org_a.slug])

    assert client_for(bob).get(url).status_code == 403
    assert client_for(bob).post(url, {"days": "30"}).status_code == 403
    assert not RetentionPolicy.objects.exists()


def test_an_outsider_gets_404(client_for, alice, charlie, org_a):
    url = reverse("organization_retention", args=[org_a.slug])

    assert client_for(charlie).get(url).status_code == 404
    assert client_for(charlie).post(url, {"days": "30"}).status_code == 404
    assert not RetentionPolicy.objects.exists()


def test_the_organization_page_links_it_for_owners_only(client_for, alice, bob, org_a):
    url = reverse("organization_retention", args=[org_a.slug])
    settings_url = reverse("organization_settings", args=[org_a.slug])

    assert url in client_for(alice).get(settings_url).content.decode()
    assert url not in client_for(bob).get(settings_url).content.decode()
