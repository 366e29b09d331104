"""A price with a long-context tier (gemini-2.5-pro: prompts over 200k tokens cost more): a call
whose prompt is over the threshold is charged the long rates for all of its tokens, a batch
line half of them; a call not yet made is held at the long rates when our estimate of its
prompt comes within a quarter of the threshold, so the hold covers the upstream's count."""

from decimal import Decimal

import pytest
from django.utils import timezone

from billing import pricing, services
from billing.models import ModelPrice, UsageRecord
from billing.services import CallContext

pytestmark = pytest.mark.django_db

MILLION = Decimal(1_000_000)


def context(project, user, *, model: str = "gemini-2.5-pro", batch: bool = False) -> CallContext:
    return CallContext(
        organization_id=project.organization_id,
        project_id=project.pk,
        user_id=user.pk,
        model=model,
        source=UsageRecord.Source.BATCH if batch else UsageRecord.Source.API,
        batch=batch,
    )


@pytest.fixture
def gemini_pro() -> ModelPrice:
    price = pricing.price_for("gemini-2.5-pro", on=timezone.now().date())
    assert price is not None
    return price


def test_the_price_table_knows_gemini_pros_long_context_tier(gemini_pro):
    assert gemini_pro.long_context_threshold == 200_000
    normal = pricing.rates(gemini_pro, prompt_tokens=200_000)
    long = pricing.rates(gemini_pro, prompt_tokens=200_001)
    assert (normal.input, normal.cached_input, normal.output) == (
        Decimal("1.25"),
        Decimal("0.125"),
        Decimal("10.00"),
    )
    assert (long.input, long.cached_input, long.output) == (
        Decimal("2.50"),
        Decimal("0.25"),
        Decimal("15.00"),
    )
    assert "over 200k" in gemini_pro.source


def test_a_prompt_over_the_threshold_pays_the_long_rates_for_every_token(gemini_pro):
    at = pricing.cost_of(gemini_pro, prompt_tokens=200_000, cached_tokens=0, completion_tokens=1000)
    over = pricing.cost_of(
        gemini_pro, prompt_tokens=200_001, cached_tokens=1, completion_tokens=1000
    )
    over_batch = pricing.cost_of(
        gemini_pro, prompt_tokens=200_001, cached_tokens=1, completion_tokens=1000, batch=True
    )

    assert at == (200_000 * Decimal("1.25") + 1000 * Decimal("10")) / MILLION
    assert (
        over == (200_000 * Decimal("2.50") + 1 * Decimal("0.25") + 1000 * Decimal("15")) / MILLION
    )
    assert over_batch * 2 == over


def test_a_model_without_a_tier_pays_one_rate_whatever_the_prompt(fake_price):
    assert fake_price.long_context_threshold is None
    assert pricing.rates(fake_price, prompt_tokens=10**9) == pricing.rates(fake_price)


def test_the_hold_near_the_threshold_is_at_the_long_rates_and_the_charge_at_the_real_tier(
    gemini_pro, project_a, alice, make_budget
):
    make_budget(project_a.organization, limit=100)  # a hold is kept against a budget
    # Our estimate: 170,000 tokens, within a quarter of 200,000 - the upstream may count more.
    near = services.quota_reserve(
        context=context(project_a, alice), prompt_tokens=170_000, max_tokens=1000
    )
    far = services.quota_reserve(
        context=context(project_a, alice), prompt_tokens=100_000, max_tokens=1000
    )

    assert near.amount == (170_000 * Decimal("2.50") + 1000 * Decimal("15")) / MILLION
    assert far.amount == (100_000 * Decimal("1.25") + 1000 * Decimal("10")) / MILLION

    charged_normal = services.quota_settle(
        reservation=near, status="ok", prompt_tokens=180_000, completion_tokens=1000
    )
    charged_long = services.quota_settle(
        reservation=far, status="ok", prompt_tokens=210_000, completion_tokens=1000
    )

    assert charged_normal.cost == (180_000 * Decimal("1.25") + 1000 * Decimal("10")) / MILLION
    assert not charged_normal.over_hold
    # The upstream counted a prompt over the threshold that we held as a short one: charged
    # what it costs, flagged for staff.
    assert charged_long.cost == (210_000 * Decimal("2.50") + 1000 * Decimal("15")) / MILLION
    assert charged_long.over_hold
