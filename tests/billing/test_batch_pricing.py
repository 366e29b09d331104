"""A batch line (``CallContext.batch``) is held and charged at the model's batch price: the row's
batch prices where it has them, else half the normal ones."""

from dataclasses import replace
from decimal import Decimal

import pytest

from billing import pricing, services
from billing.models import BudgetPeriod, Hold, ModelPrice, UsageRecord
from billing.services import CallContext, QuotaExceeded

pytestmark = pytest.mark.django_db


def context(project, user, *, model: str = "fake-gpt", batch: bool = False) -> CallContext:
    return CallContext(
        organization_id=project.organization_id,
        project_id=project.pk,
        user_id=user.pk,
        model=model,
        source=UsageRecord.Source.BATCH if batch else UsageRecord.Source.API,
        batch=batch,
    )


def call(ctx: CallContext, *, prompt: int, cached: int = 0, completion: int, max_tokens: int):
    reservation = services.quota_reserve(context=ctx, prompt_tokens=prompt, max_tokens=max_tokens)
    record = services.quota_settle(
        reservation=reservation,
        status="ok",
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
    )
    return reservation, record


def test_the_same_call_costs_exactly_half_in_a_batch(fake_price, project_a, alice):
    normal_hold, normal = call(
        context(project_a, alice), prompt=1000, cached=400, completion=77, max_tokens=100
    )
    batch_hold, batch = call(
        context(project_a, alice, batch=True), prompt=1000, cached=400, completion=77,
        max_tokens=100,
    )  # fmt: skip

    # 600 x $0.001 + 400 x $0.0005 + 77 x $0.002, then the same at half
    assert normal.cost == Decimal("0.954")
    assert batch.cost == Decimal("0.477")
    assert batch.cost * 2 == normal.cost
    assert batch_hold.amount * 2 == normal_hold.amount  # held at half too
    assert (batch.price, normal.price) == (fake_price, fake_price)  # the row it was charged at
    assert batch.source == "batch"


def test_a_rows_own_batch_prices_are_used_where_it_has_them(project_a, alice):
    price = ModelPrice.objects.create(
        model="fake-gpt",
        input_per_million=Decimal("1000"),
        cached_input_per_million=Decimal("100"),
        output_per_million=Decimal("2000"),
        batch_input_per_million=Decimal("300"),
        batch_output_per_million=Decimal("700"),
        effective_from="2024-01-01",
    )

    hold, record = call(
        context(project_a, alice, batch=True), prompt=100, cached=40, completion=10, max_tokens=20
    )

    # 60 x $0.0003 + 40 x $0.00005 (half the cached price) + 10 x $0.0007
    assert record.cost == Decimal("0.018") + Decimal("0.002") + Decimal("0.007")
    assert hold.amount == 100 * Decimal("0.0003") + 20 * Decimal("0.0007")
    assert record.price == price


def test_batch_cached_input_never_costs_more_than_batch_input():
    price = ModelPrice(
        model="x",
        input_per_million=Decimal("10"),
        cached_input_per_million=Decimal("10"),  # no caching discount
        output_per_million=Decimal("10"),
        batch_input_per_million=Decimal("2"),
    )

    rates = pricing.rates(price, batch=True)

    assert (rates.input, rates.cached_input, rates.output) == (2, 2, 5)
    assert pricing.rates(price) == pricing.Rates(Decimal(10), Decimal(10), Decimal(10))


def test_a_budget_affords_twice_the_reply_for_a_batch_line(
    fake_price, make_budget, project_a, alice
):
    # $0.10 left: 100 prompt tokens cost $0.10 normally; with the prompt at $0.05 in a batch,
    # the other $0.05 pays 50 reply tokens at $0.001 each.
    make_budget(project_a.organization, limit="0.1")
    normal, batch = context(project_a, alice), context(project_a, alice, batch=True)

    with pytest.raises(QuotaExceeded) as refused:
        services.quota_reserve(context=normal, prompt_tokens=100, max_tokens=None, output_limit=10)
    reservation = services.quota_reserve(
        context=batch, prompt_tokens=100, max_tokens=None, output_limit=1000
    )

    assert refused.value.code == "budget_exceeded"
    assert reservation.cap == 50
    assert reservation.amount == Decimal("0.1")
    assert BudgetPeriod.objects.get().reserved == Decimal("0.1")
    services.quota_settle(
        reservation=reservation, status="ok", prompt_tokens=100, completion_tokens=50
    )
    assert BudgetPeriod.objects.get().spent == Decimal("0.1")
    assert not Hold.objects.exists()


def test_a_documented_models_batch_line_costs_half_at_the_seeded_prices(project_a, alice):
    normal = context(project_a, alice, model="gpt-4.1-nano")
    _, full = call(normal, prompt=2_000_000, completion=1_000_000, max_tokens=1_000_000)
    _, half = call(
        replace(normal, batch=True), prompt=2_000_000, completion=1_000_000, max_tokens=1_000_000
    )

    # 2M in at $0.10 + 1M out at $0.40; the batch tier's $0.05 and $0.20
    assert (full.cost, half.cost) == (Decimal("0.6"), Decimal("0.3"))
    assert full.price == half.price
    assert full.price.model == "gpt-4.1-nano"
