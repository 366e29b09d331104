"""The quota service: reserve, settle, refuse, release; rate limits; the cost math."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import pricing, services
from billing.models import BudgetPeriod, Hold, ModelPrice, RateLimit, UsageRecord
from billing.services import CallContext, QuotaExceeded

pytestmark = pytest.mark.django_db


def context(project, user=None, model="fake-gpt") -> CallContext:
    return CallContext(
        organization_id=project.organization_id,
        project_id=project.pk,
        user_id=user.pk if user else None,
        model=model,
    )


def test_the_seeded_prices_are_the_documents(db):
    def price(model):
        p = pricing.price_for(model, on=timezone.now().date())
        return (p.input_per_million, p.output_per_million)

    assert price("gpt-4o") == (Decimal("2.50"), Decimal("10.00"))
    assert price("gpt-4o-2024-08-06") == (Decimal("2.50"), Decimal("10.00"))
    assert price("gpt-4o-mini") == (Decimal("0.15"), Decimal("0.60"))
    assert price("gpt-4-turbo") == (Decimal("10.00"), Decimal("30.00"))
    assert price("gpt-3.5-turbo") == (Decimal("0.50"), Decimal("1.50"))
    assert price("smollm2-135m-instruct") == (Decimal(0), Decimal(0))
    assert pricing.price_for("mystery-model", on=timezone.now().date()) is None


def test_a_later_price_applies_from_its_date_and_old_rows_keep_theirs(db):
    old = pricing.price_for("gpt-4o", on=datetime(2025, 1, 1).date())
    new = ModelPrice.objects.create(
        model="gpt-4o",
        input_per_million=Decimal("2.00"),
        cached_input_per_million=Decimal("1.00"),
        output_per_million=Decimal("8.00"),
        effective_from="2026-06-01",
    )

    assert pricing.price_for("gpt-4o", on=datetime(2026, 5, 31).date()) == old
    assert pricing.price_for("gpt-4o", on=datetime(2026, 6, 1).date()) == new


def test_cost_is_exact_and_cached_tokens_are_cheaper(fake_price):
    cost = pricing.cost_of(fake_price, prompt_tokens=1000, cached_tokens=400, completion_tokens=7)

    # 600 x 1000/1M + 400 x 500/1M + 7 x 2000/1M
    assert cost == Decimal("0.6") + Decimal("0.2") + Decimal("0.014")


def test_reserve_then_settle_charges_the_real_cost(fake_price, make_budget, project_a, alice):
    budget = make_budget(project_a.organization, limit=1)

    reservation = services.quota_reserve(
        context=context(project_a, alice), prompt_tokens=100, max_tokens=200
    )
    period = BudgetPeriod.objects.get(budget=budget)
    assert reservation.amount == Decimal("0.5")  # 100 x 0.001 + 200 x 0.002
    assert period.reserved == Decimal("0.5")

    record = services.quota_settle(
        reservation=reservation, status="ok", prompt_tokens=90, completion_tokens=50
    )

    period.refresh_from_db()
    assert record.cost == Decimal("0.19")
    assert (period.spent, period.reserved) == (Decimal("0.19"), Decimal(0))
    assert not Hold.objects.exists()
    assert UsageRecord.objects.count() == 1


def test_a_call_that_would_go_over_is_refused_naming_the_budget_and_reset(
    fake_price, make_budget, project_a, alice
):
    make_budget(project_a.organization, limit="0.40", scope="project", project=project_a)

    with pytest.raises(QuotaExceeded) as info:
        services.quota_reserve(context=context(project_a, alice), prompt_tokens=100, max_tokens=200)

    error = info.value
    assert error.code == "budget_exceeded"
    assert "the budget of project Project A: $0.40 a month, $0.00 spent." in error.message
    assert "It resets on " in error.message
    assert not Hold.objects.exists()
    assert UsageRecord.objects.count() == 0


def test_every_applicable_budget_must_allow_the_call(
    fake_price, make_budget, project_a, alice, bob
):
    org = project_a.organization
    make_budget(org, limit=100)
    make_budget(org, limit=100, scope="project", project=project_a)
    member = make_budget(org, limit="0.1", scope="member", project=project_a, user=alice)

    with pytest.raises(QuotaExceeded, match=r"alice@example\.com's budget in project Project A"):
        services.quota_reserve(context=context(project_a, alice), prompt_tokens=10, max_tokens=100)
    # bob's calls are not held against alice's budget
    services.quota_reserve(context=context(project_a, bob), prompt_tokens=10, max_tokens=100)
    assert not BudgetPeriod.objects.filter(budget=member, reserved__gt=0).exists()


def test_in_flight_holds_count_against_the_limit(fake_price, make_budget, project_a, alice):
    make_budget(project_a.organization, limit="1.0")
    ctx = context(project_a, alice)
    services.quota_reserve(context=ctx, prompt_tokens=100, max_tokens=200)  # 0.5
    services.quota_reserve(context=ctx, prompt_tokens=100, max_tokens=200)  # 1.0

    with pytest.raises(QuotaExceeded, match=r"\$1.00 in flight"):
        services.quota_reserve(context=ctx, prompt_tokens=100, max_tokens=200)


def test_expired_holds_are_given_back(fake_price, make_budget, project_a, alice):
    make_budget(project_a.organization, limit="0.5")
    ctx = context(project_a, alice)
    services.quota_reserve(context=ctx, prompt_tokens=100, max_tokens=200)
    Hold.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    assert services.holds_expire() == 1
    assert BudgetPeriod.objects.get().reserved == 0
    services.quota_reserve(context=ctx, prompt_tokens=100, max_tokens=200)  # fits again


def test_an_unpriced_model_cannot_run_under_a_budget(make_budget, project_a):
    make_budget(project_a.organization, limit=100)

    with pytest.raises(QuotaExceeded, match="has no price"):
        services.quota_reserve(
            context=context(project_a, model="mystery"), prompt_tokens=1, max_tokens=1
        )


def test_without_budgets_calls_pass_and_are_still_metered(fake_price, project_a):
    reservation = services.quota_reserve(
        context=context(project_a), prompt_tokens=10, max_tokens=10
    )
    record = services.quota_settle(
        reservation=reservation, status="ok", prompt_tokens=10, completion_tokens=5
    )

    assert record.cost == Decimal("0.02")


def test_a_budget_added_mid_month_starts_from_the_ledger(fake_price, make_budget, project_a):
    for _ in range(3):
        r = services.quota_reserve(context=context(project_a), prompt_tokens=100, max_tokens=0)
        services.quota_settle(reservation=r, status="ok", prompt_tokens=100, completion_tokens=0)
    budget = make_budget(project_a.organization, limit="0.35")

    with pytest.raises(QuotaExceeded, match=r"\$0.30 spent"):
        services.quota_reserve(context=context(project_a), prompt_tokens=100, max_tokens=0)
    services.quota_reserve(context=context(project_a), prompt_tokens=50, max_tokens=0)
    assert BudgetPeriod.objects.get(budget=budget).spent == Decimal("0.3")


def test_crossing_a_threshold_alerts_once(
    fake_price, make_budget, project_a, alice, mailoutbox, django_capture_on_commit_callbacks
):
    from billing.models import BudgetAlert

    make_budget(project_a.organization, limit="1.0", soft_thresholds="50,80")
    ctx = context(project_a, alice)
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(3):  # 0.3, 0.6 (crosses 50 %), 0.9 (crosses 80 %)
            r = services.quota_reserve(context=ctx, prompt_tokens=0, max_tokens=150)
            services.quota_settle(
                reservation=r, status="ok", prompt_tokens=0, completion_tokens=150
            )

    assert sorted(BudgetAlert.objects.values_list("threshold", flat=True)) == [50, 80]
    assert len(mailoutbox) == 2
    assert mailoutbox[0].to == ["alice@example.com"]
    assert "passed 50% of its limit" in mailoutbox[0].subject


def test_the_ledger_is_append_only(fake_price, project_a):
    r = services.quota_reserve(context=context(project_a), prompt_tokens=1, max_tokens=1)
    record = services.quota_settle(reservation=r, status="ok", prompt_tokens=1, completion_tokens=1)

    with pytest.raises(TypeError):
        record.save()
    with pytest.raises(TypeError):
        record.delete()
    with pytest.raises(TypeError):
        UsageRecord.objects.update(cost=0)
    with pytest.raises(TypeError):
        UsageRecord.objects.all().delete()


# --- rate limits ---------------------------------------------------------------------------


def test_requests_per_minute_are_limited_with_a_retry_after(project_a):
    RateLimit.objects.create(project=project_a, requests_per_minute=3)
    now = datetime(2026, 11, 23, 12, 0, 30, tzinfo=UTC).timestamp()
    for _ in range(3):
        services.check_rate_limits(context(project_a), tokens=1, now=now)

    with pytest.raises(QuotaExceeded) as info:
        services.check_rate_limits(context(project_a), tokens=1, now=now)

    assert info.value.code == "rate_limit_exceeded"
    assert info.value.retry_after == 30
    assert "3 requests per minute" in info.value.message
    # The window slides: 45 s into the next minute, half of the last minute's count has expired.
    services.check_rate_limits(context(project_a), tokens=1, now=now + 75)


def test_tokens_per_minute_are_limited(project_a):
    RateLimit.objects.create(project=project_a, tokens_per_minute=1000)
    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC).timestamp()
    services.check_rate_limits(context(project_a), tokens=900, now=now)

    with pytest.raises(QuotaExceeded, match="1,000 tokens per minute"):
        services.check_rate_limits(context(project_a), tokens=200, now=now + 1)


# --- the cost math, as properties -----------------------------------------------------------

prices = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False)
tokens = st.integers(min_value=0, max_value=2_000_000)


@given(
    input_price=prices,
    cached_price=prices,
    output_price=prices,
    prompt=tokens,
    cached=tokens,
    completion=tokens,
)
@settings(max_examples=200, deadline=None)
def test_cost_is_an_exact_decimal_and_never_negative(
    input_price, cached_price, output_price, prompt, cached, completion
):
    price = ModelPrice(
        model="m",
        input_per_million=input_price,
        cached_input_per_million=cached_price,
        output_per_million=output_price,
    )

    cost = pricing.cost_of(
        price, prompt_tokens=prompt, cached_tokens=cached, completion_tokens=completion
    )

    assert isinstance(cost, Decimal)
    assert cost >= 0
    assert cost.as_tuple().exponent >= -12  # fits the ledger's 12 places: nothing is rounded
    assert cost * 1_000_000 == (
        (prompt - min(cached, prompt)) * input_price
        + min(cached, prompt) * cached_price
        + completion * output_price
    )
    worst = pricing.worst_case(price, prompt_tokens=prompt, max_tokens=completion)
    if input_price >= cached_price:
        assert worst >= cost


calls = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=5000),  # prompt tokens
        st.integers(min_value=0, max_value=5000),  # completion tokens
        st.sampled_from(["alice", "bob"]),
        st.sampled_from(["ok", "error", "stopped", "incomplete"]),
    ),
    min_size=1,
    max_size=12,
)


@given(calls=calls)
# Each example starts by clearing what the previous one wrote, so sharing the fixtures is safe.
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_the_ledger_sum_equals_every_budgets_spend_exactly(
    calls, fake_price, make_budget, project_a, alice, bob, django_db_blocker
):
    from billing.models import Budget

    org = project_a.organization
    BudgetPeriod.objects.all().delete()
    Budget.objects.all().delete()
    UsageRecord.objects.all()._raw_delete(UsageRecord.objects.db)
    budgets = [
        make_budget(org, limit=10_000),
        make_budget(org, limit=10_000, scope="project", project=project_a),
        make_budget(org, limit=10_000, scope="member", project=project_a, user=alice),
    ]
    people = {"alice": alice, "bob": bob}
    for prompt, completion, who, status in calls:
        r = services.quota_reserve(
            context=context(project_a, people[who]), prompt_tokens=prompt, max_tokens=completion
        )
        services.quota_settle(
            reservation=r, status=status, prompt_tokens=prompt, completion_tokens=completion
        )

    now = timezone.now()
    for budget in budgets:
        start, end = services.period_bounds(budget.period, now)
        period = BudgetPeriod.objects.filter(budget=budget, start=start).first()
        spent, reserved = (period.spent, period.reserved) if period else (Decimal(0), Decimal(0))
        assert spent == services.ledger_spend(budget, start, end)
        assert reserved == 0
    assert not Hold.objects.exists()


def test_a_budget_disabled_mid_call_is_still_charged_for_it(
    fake_price, make_budget, project_a, alice
):
    budget = make_budget(project_a.organization, limit=1)
    reservation = services.quota_reserve(
        context=context(project_a, alice), prompt_tokens=100, max_tokens=200
    )
    budget.enabled = False
    budget.save()

    record = services.quota_settle(
        reservation=reservation, status="ok", prompt_tokens=100, completion_tokens=100
    )

    period = BudgetPeriod.objects.get(budget=budget)
    assert (period.spent, period.reserved) == (record.cost, Decimal(0))


def test_an_api_key_has_limits_of_its_own(project_a, alice, org_a):
    from accounts.api_keys import api_key_create
    from accounts.models import ApiKey, Membership

    created = api_key_create(
        actor=Membership.objects.get(user=alice, organization=org_a),
        project=project_a,
        name="bot",
        scopes=["chat"],
    )
    ApiKey.objects.filter(pk=created.key.pk).update(requests_per_minute=2)
    RateLimit.objects.create(project=project_a, requests_per_minute=100)
    by_key = CallContext(
        organization_id=project_a.organization_id,
        project_id=project_a.pk,
        user_id=None,
        model="fake-gpt",
        api_key_id=created.key.pk,
    )
    now = datetime(2026, 11, 23, 12, 0, 10, tzinfo=UTC).timestamp()
    services.check_rate_limits(by_key, tokens=1, now=now)
    services.check_rate_limits(by_key, tokens=1, now=now)

    with pytest.raises(QuotaExceeded, match="This API key is limited to 2 requests per minute"):
        services.check_rate_limits(by_key, tokens=1, now=now)
    # The web chat in the same project is not held back by the key's limit.
    services.check_rate_limits(context(project_a, alice), tokens=1, now=now)
