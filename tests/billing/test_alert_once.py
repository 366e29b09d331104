"""A budget alert's e-mail goes once per language even when its task runs again (a worker that
died is delivered the message anew): the languages sent are marked on the alert's row, so the
mark outlives the worker and its cache."""

from datetime import UTC, datetime

import pytest
from django.core import mail
from django.core.cache import cache

from accounts.models import User
from billing.models import Budget, BudgetAlert
from billing.tasks import send_budget_alert
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def test_a_redelivered_alert_task_sends_nothing_twice(alice, org_a):
    minji = User.objects.create_user(email="minji@example.com", password="x" * 12, language="ko")
    MembershipFactory(user=minji, organization=org_a, role="admin")
    budget = Budget.objects.create(organization=org_a, scope="organization", limit_usd="10")
    alert = BudgetAlert.objects.create(
        budget=budget, threshold=80, period_start=datetime(2026, 12, 1, tzinfo=UTC)
    )

    send_budget_alert(budget.pk, 80)
    cache.clear()  # a restarted worker of the embedded profile: its memory cache is empty
    send_budget_alert(budget.pk, 80)

    assert sorted(tuple(message.to) for message in mail.outbox) == [
        ("alice@example.com",),
        ("minji@example.com",),
    ]
    alert.refresh_from_db()
    assert sorted(alert.sent_languages) == ["en", "ko"]


def test_a_language_not_yet_sent_still_goes(alice, org_a):
    budget = Budget.objects.create(organization=org_a, scope="organization", limit_usd="10")
    BudgetAlert.objects.create(
        budget=budget,
        threshold=80,
        period_start=datetime(2026, 12, 1, tzinfo=UTC),
        sent_languages=["ko"],  # the worker died after the Korean e-mail, before the English
    )

    send_budget_alert(budget.pk, 80)

    assert [tuple(message.to) for message in mail.outbox] == [("alice@example.com",)]
