"""Rate limits count atomically: N calls at once against a limit of k let exactly k through.

Each call runs in its own thread with its own database connection, all released together; the
count is taken with one atomic increment per limit, and a refused call gives its count back.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import cache
from django.db import connection

from accounts import api_keys
from billing.models import RateLimit
from billing.services import CallContext, QuotaExceeded, check_rate_limits
from tests.conftest import membership

pytestmark = pytest.mark.django_db(transaction=True)

CALLS = 24
# The middle of a minute: the sliding window's previous minute weighs nothing then, and every
# call lands in the same bucket however long the threads take to start.
NOW = 1_800_000_030.0


def race(context: CallContext, *, tokens: int = 1) -> list[bool]:
    """Whether each of CALLS concurrent calls passed; every refusal is a rate limit."""
    start = threading.Barrier(CALLS, timeout=30)

    def one(_: int) -> QuotaExceeded | None:
        try:
            start.wait()
            check_rate_limits(context, tokens=tokens, now=NOW)
        except QuotaExceeded as error:
            return error
        finally:
            connection.close()
        return None

    with ThreadPoolExecutor(max_workers=CALLS) as pool:
        refusals = list(pool.map(one, range(CALLS)))
    assert {(r.code, r.retry_after is not None) for r in refusals if r} <= {
        ("rate_limit_exceeded", True)
    }
    return [refusal is None for refusal in refusals]


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()
    yield
    cache.clear()


def test_it_lets_exactly_k_of_n_concurrent_requests_through(project_a):
    RateLimit.objects.create(project=project_a, requests_per_minute=7)
    context = CallContext(
        organization_id=project_a.organization_id,
        project_id=project_a.pk,
        user_id=None,
        model="fake-gpt",
    )

    assert race(context).count(True) == 7
    # The refused ones gave their count back: the window holds exactly the 7 that passed.
    with pytest.raises(QuotaExceeded):
        check_rate_limits(context, tokens=1, now=NOW)


def test_tokens_per_minute_hold_under_concurrency_too(project_a):
    RateLimit.objects.create(project=project_a, tokens_per_minute=1_000)
    context = CallContext(
        organization_id=project_a.organization_id,
        project_id=project_a.pk,
        user_id=None,
        model="fake-gpt",
    )

    assert race(context, tokens=300).count(True) == 3


def test_a_call_refused_by_the_key_is_not_counted_by_the_project(alice, org_a, project_a):
    RateLimit.objects.create(project=project_a, requests_per_minute=100)
    created = api_keys.api_key_create(
        actor=membership(alice, org_a), project=project_a, name="k", scopes=["chat"]
    )
    created.key.requests_per_minute = 4
    created.key.save()
    context = CallContext(
        organization_id=project_a.organization_id,
        project_id=project_a.pk,
        user_id=None,
        model="fake-gpt",
        api_key_id=created.key.pk,
    )

    assert race(context).count(True) == 4
    # 20 refused by the key gave back what they had taken from the project: 96 remain there.
    other = CallContext(
        organization_id=project_a.organization_id,
        project_id=project_a.pk,
        user_id=None,
        model="fake-gpt",
    )
    for _ in range(96):
        check_rate_limits(other, tokens=1, now=NOW)
    with pytest.raises(QuotaExceeded):
        check_rate_limits(other, tokens=1, now=NOW)
