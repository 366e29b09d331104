"""A reply whose process died mid-call is still metered once, and its hold is given back."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import BudgetPeriod, Hold, UsageRecord
from chat import services
from chat.actors import Actor
from chat.models import Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def orphan(make_conversation, alice, project_a, fake_price, make_budget) -> Message:
    """A reply started (reserved, streaming, half written) whose process then died."""
    make_budget(project_a.organization, limit=100, scope="project", project=project_a)
    conversation = make_conversation(alice, project_a)
    pending = services.reply_start(
        actor=Actor(user=alice), conversation_id=conversation.pk, content="hello"
    )
    services.reply_flush(message_id=pending.assistant_message_id, content="Echo: hel")
    assert Hold.objects.count() == 1
    return Message.objects.get(pk=pending.assistant_message_id)


def test_a_stale_reply_is_closed_and_metered_once(orphan, settings):
    Message.objects.filter(pk=orphan.pk).update(updated_at=timezone.now() - timedelta(hours=1))

    assert services.streams_expire_stale() == 1
    assert services.streams_expire_stale() == 0

    orphan.refresh_from_db()
    [row] = UsageRecord.objects.all()
    assert (orphan.state, row.status, row.estimated) == ("incomplete", "incomplete", True)
    assert row.request_id == orphan.request_id
    assert row.completion_tokens == orphan.completion_tokens > 0
    assert row.prompt_tokens == orphan.prompt_tokens > 0
    assert row.cost > 0
    assert not Hold.objects.exists()
    assert BudgetPeriod.objects.get().reserved == Decimal(0)
    assert BudgetPeriod.objects.get().spent == row.cost


def test_stopping_an_orphan_meters_it_too(orphan, alice, settings):
    settings.CHAT_ORPHAN_GRACE = 0
    closed = services.reply_close_orphan(
        actor=Actor(user=alice), conversation_id=orphan.conversation_id
    )

    [row] = UsageRecord.objects.all()
    assert (closed.state, row.status) == ("stopped", "stopped")
    assert closed.cost == row.cost > 0
    assert not Hold.objects.exists()


def test_a_late_finish_of_an_orphan_keeps_one_row(orphan, alice):
    from billing.services import CallContext, Reservation, quota_settle

    Message.objects.filter(pk=orphan.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    services.streams_expire_stale()
    first = UsageRecord.objects.get()

    again = quota_settle(
        reservation=Reservation(
            request_id=orphan.request_id,
            # As the reply's own process has it when it finishes after all.
            context=CallContext(
                organization_id=first.organization_id,
                project_id=first.project_id,
                user_id=first.user_id,
                model=first.model,
            ),
            amount=Decimal(0),
            price_id=None,
            prompt_tokens_estimate=0,
        ),
        status="ok",
        prompt_tokens=1,
        completion_tokens=1,
    )

    assert again.pk == first.pk
    assert UsageRecord.objects.count() == 1
