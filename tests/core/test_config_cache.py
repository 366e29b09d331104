"""What every gateway call reads — budgets, prices, rate limits, model routes — is kept in memory
(core.config_cache), and a change is seen by the very next call.

Each test makes a first call (which fills the process's copy), changes something, and makes
the next call through the gateway. A change that sends no signal (``update()``,
``bulk_create()``) stands for one made by another process: it is seen once the shared version
moves, or once the copy expires, and not before — which shows the copy is really kept.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client, override_settings
from django.urls import reverse

from accounts import api_keys
from accounts.models import ApiKey
from billing.models import Budget, BudgetPeriod, RateLimit, UsageRecord
from core.config_cache import VERSION_KEY, cached, invalidate
from providers.llm.fake_upstream import FakeUpstream
from providers.models import ConnectionModel, ProviderConnection
from providers.services import connection_update, project_models_set
from tests.chat.conftest import make_key, serve
from tests.conftest import membership
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

URL = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello cache"}]


def chat(key: str, model: str = "fake-gpt", **fields: Any):
    return Client().post(
        URL,
        data=json.dumps({"model": model, "messages": HELLO, "max_tokens": 5, **fields}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def error_code(answer) -> str:
    return answer.json()["error"]["code"]


@pytest.fixture
def key(alice, org_a, project_a, fake_upstream, fake_price) -> str:
    """A chat key of project A, whose fake-gpt is served by the fake upstream and priced."""
    serve(project_a, fake_upstream)
    return make_key(alice, org_a, project_a)


def make_budget(organization, *, limit: str | int) -> Budget:
    return Budget.objects.create(
        organization=organization, scope="organization", limit_usd=Decimal(str(limit))
    )


def api_key_row(key: str) -> ApiKey:
    return ApiKey.objects.get(digest=api_keys.digest_of(key))


def exhaust(budget: Budget) -> None:
    """This period's spending reaches the limit (counters are never kept in memory)."""
    BudgetPeriod.objects.filter(budget=budget).update(spent=budget.limit_usd)


def another_process_changed_a_setting() -> None:
    """What ``invalidate()`` does in another process: the shared version moves. This
    process's own copy is not cleared."""
    try:
        cache.incr(VERSION_KEY)
    except ValueError:  # no version yet
        cache.set(VERSION_KEY, 1, timeout=None)


# --- budgets ---------------------------------------------------------------------------------


def test_a_budget_created_after_a_call_refuses_the_next_one(key, org_a):
    assert chat(key).status_code == 200

    make_budget(org_a, limit="0.000001")
    refused = chat(key)

    assert refused.status_code == 429
    assert error_code(refused) == "budget_exceeded"


def test_a_lowered_limit_refuses_the_next_call(key, org_a):
    budget = make_budget(org_a, limit=100)
    assert chat(key).status_code == 200

    budget.limit_usd = Decimal("0.000001")
    budget.save()
    refused = chat(key)

    assert refused.status_code == 429
    assert error_code(refused) == "budget_exceeded"


def test_a_disabled_budget_stops_refusing_at_once(key, org_a):
    budget = make_budget(org_a, limit=1)
    assert chat(key).status_code == 200
    exhaust(budget)
    assert chat(key).status_code == 429

    budget.enabled = False
    budget.save()

    assert chat(key).status_code == 200


def test_a_deleted_budget_stops_refusing_at_once(key, org_a):
    budget = make_budget(org_a, limit=1)
    assert chat(key).status_code == 200
    exhaust(budget)
    assert chat(key).status_code == 429

    deleted = budget.pk
    budget.delete()

    assert chat(key).status_code == 200
    assert not BudgetPeriod.objects.filter(budget_id=deleted).exists()  # nothing held on it


def test_the_admins_disable_action_is_seen_at_once(key, org_a):
    budget = make_budget(org_a, limit=1)
    assert chat(key).status_code == 200
    exhaust(budget)
    assert chat(key).status_code == 429
    staff = Client()
    staff.force_login(UserFactory(email="staff@example.com", is_staff=True, is_superuser=True))

    response = staff.post(
        reverse("admin:billing_budget_changelist"),
        {"action": "disable", "_selected_action": [budget.pk], "index": "0"},
    )

    assert response.status_code == 302
    assert chat(key).status_code == 200


# --- prices ----------------------------------------------------------------------------------


def test_a_changed_price_is_charged_from_the_next_call(key, fake_price):
    assert chat(key).status_code == 200

    fake_price.output_per_million = Decimal("4000")  # was 2000: a reply token costs $0.004
    fake_price.save()
    assert chat(key).status_code == 200

    before, after = UsageRecord.objects.order_by("id")
    assert (before.prompt_tokens, before.completion_tokens) == (
        after.prompt_tokens,
        after.completion_tokens,
    )
    assert before.completion_tokens > 0
    assert after.cost - before.cost == before.completion_tokens * Decimal("0.002")


# --- model routes ----------------------------------------------------------------------------


def test_a_model_taken_off_the_project_is_not_found_on_the_next_call(
    alice, org_a, project_a, fake_upstream, fake_price
):
    serve(project_a, fake_upstream, "fake-gpt", "fake-gpt-mini")
    gpt, mini = (ConnectionModel.objects.get(name=n) for n in ("fake-gpt", "fake-gpt-mini"))
    owner = membership(alice, org_a)
    project_models_set(
        actor=owner, project=project_a, model_ids=[gpt.pk, mini.pk], default_id=gpt.pk
    )
    key = make_key(alice, org_a, project_a)
    assert chat(key, "fake-gpt-mini").status_code == 200

    project_models_set(actor=owner, project=project_a, model_ids=[gpt.pk], default_id=gpt.pk)
    gone = chat(key, "fake-gpt-mini")

    assert gone.status_code == 404
    assert error_code(gone) == "model_not_found"
    assert chat(key, "fake-gpt").status_code == 200


def test_a_connection_moved_to_another_server_is_called_there_next(
    key, alice, org_a, project_a, fake_upstream
):
    connection = ProviderConnection.objects.get(project=project_a)
    assert chat(key).status_code == 200

    with FakeUpstream() as elsewhere:
        connection_update(
            actor=membership(alice, org_a),
            connection=connection,
            name=connection.name,
            base_url=elsewhere.base_url,
            timeout=connection.timeout,
            max_retries=connection.max_retries,
        )
        assert chat(key).status_code == 200
        moved = elsewhere.request_counts

    assert moved["fake-gpt"] == 1
    assert fake_upstream.request_counts["fake-gpt"] == 1  # the first call only


# --- rate limits -----------------------------------------------------------------------------


def test_an_api_keys_new_rate_limit_applies_from_the_next_call(key):
    cache.clear()  # no requests counted in this minute by an earlier test's key of this id
    assert [chat(key).status_code for _ in range(2)] == [200, 200]

    row = api_key_row(key)
    row.requests_per_minute = 1
    row.save()

    assert chat(key).status_code == 200  # the first one counted against the limit
    refused = chat(key)
    assert refused.status_code == 429
    assert error_code(refused) == "rate_limit_exceeded"


def test_a_projects_new_rate_limit_applies_from_the_next_call(key, project_a):
    cache.clear()
    assert [chat(key).status_code for _ in range(2)] == [200, 200]

    RateLimit.objects.create(project=project_a, requests_per_minute=1)

    assert chat(key).status_code == 200
    refused = chat(key)
    assert refused.status_code == 429
    assert error_code(refused) == "rate_limit_exceeded"


# --- another process's change ----------------------------------------------------------------


def budget_without_a_signal(organization) -> None:
    """A budget written as another process would be seen to write it: no signal here."""
    Budget.objects.bulk_create(
        [Budget(organization=organization, scope="organization", limit_usd=Decimal("0.000001"))]
    )


def test_another_process_change_is_seen_once_the_shared_version_moves(key, org_a):
    assert chat(key).status_code == 200
    budget_without_a_signal(org_a)
    assert chat(key).status_code == 200  # this process's copy is kept: it knows of no change

    another_process_changed_a_setting()

    refused = chat(key)
    assert refused.status_code == 429
    assert error_code(refused) == "budget_exceeded"


def test_the_shared_version_is_looked_at_every_check_seconds():
    seen: list[str] = []

    def compute() -> str:
        seen.append("read")
        return f"value {len(seen)}"

    with override_settings(CONFIG_CACHE_CHECK_SECONDS=0):
        assert cached("k", compute) == "value 1"
        another_process_changed_a_setting()
        assert cached("k", compute) == "value 2"
    with override_settings(CONFIG_CACHE_CHECK_SECONDS=10**9):  # looked at just now
        another_process_changed_a_setting()
        assert cached("k", compute) == "value 2"


def test_without_caching_a_change_with_no_signal_is_seen_at_once(key, org_a):
    with override_settings(CONFIG_CACHE_SECONDS=0):
        assert chat(key).status_code == 200
        budget_without_a_signal(org_a)

        refused = chat(key)

    assert refused.status_code == 429
    assert error_code(refused) == "budget_exceeded"


def test_an_invalidation_clears_this_process_and_moves_the_shared_version():
    assert cached("k", lambda: "old") == "old"
    version = cache.get(VERSION_KEY)

    invalidate()

    assert cache.get(VERSION_KEY) != version
    with override_settings(CONFIG_CACHE_CHECK_SECONDS=10**9):  # not even a look at the version
        assert cached("k", lambda: "new") == "new"


def test_a_value_read_before_a_change_is_not_kept_after_it():
    """A call reads the rows (``compute``) while another thread's change commits and
    invalidates, and a third call looks at the new version meanwhile; the first then keeps
    what it read, from before the change. The next call must not be served that."""

    def read_before_the_change() -> str:
        invalidate()  # the other thread's change commits while this read is under way
        cached("another key", lambda: "x")  # a third call meanwhile: syncs with the version
        return "from before the change"

    cached("k", read_before_the_change)

    assert cached("k", lambda: "from after the change") == "from after the change"
