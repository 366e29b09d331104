"""A moderation check on the one metered path: held with no reply tokens, budgets and rate
limits applied, settled once with its own ledger row, whatever happens to the call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from billing import metering
from billing.models import BudgetPeriod, Hold, ModelPrice, RateLimit, UsageRecord
from billing.services import CallContext, QuotaExceeded
from providers.llm.base import ChatRequest, ErrorCode, ProviderError
from providers.llm.tokens import count_message_tokens
from providers.pool import provider_pool
from providers.specs import ProviderSpec, spec_for
from tests.chat.conftest import fake_connection, serve

pytestmark = pytest.mark.django_db

TEXT = "Is this a kind thing to say to someone"


def run(check: Callable[..., Awaitable[Any]], **kwargs: Any) -> Any:
    async def go() -> Any:
        try:
            return await check(**kwargs)
        finally:
            await provider_pool().aclose()

    return async_to_sync(go)()


@pytest.fixture
def spec(project_a, fake_upstream) -> ProviderSpec:
    fake_connection(project_a, fake_upstream, supports_moderation=True)
    serve(project_a, fake_upstream, "fake-gpt")
    return spec_for(project=project_a, model="fake-gpt")


@pytest.fixture
def context(project_a, alice, spec) -> CallContext:
    return CallContext(
        organization_id=project_a.organization_id,
        project_id=project_a.pk,
        user_id=alice.pk,
        model="fake-gpt",  # the call being checked: the check is billed as its own model
        conversation_id=None,
        connection_id=spec.connection_id,
    )


@pytest.fixture
def priced_moderation(db) -> ModelPrice:
    """A moderation model that costs something: $1,000 per 1M input tokens."""
    return ModelPrice.objects.create(
        model="paid-moderation",
        input_per_million=Decimal("1000"),
        cached_input_per_million=Decimal("1000"),
        output_per_million=Decimal("1000"),
        effective_from="2024-01-01",
    )


def prompt_estimate(text: str) -> int:
    return count_message_tokens([{"role": "user", "content": text}])


def test_a_check_is_one_ledger_row_of_its_own_billed_to_the_caller(spec, context, alice):
    result = run(
        metering.moderate_metered,
        context=context,
        spec=spec,
        text="I will kill him",
        model="omni-moderation-latest",
    )

    assert (result.flagged, result.categories) == (True, ["violence"])
    [row] = UsageRecord.objects.all()
    assert (row.source, row.model, row.status, row.user_id, row.connection_id) == (
        "moderation",
        "omni-moderation-latest",
        "ok",
        alice.pk,
        spec.connection_id,
    )
    # Moderation answers report no usage: the input as counted here, flagged as such.
    assert (row.prompt_tokens, row.completion_tokens, row.estimated) == (
        prompt_estimate("I will kill him"),
        0,
        True,
    )
    assert row.cost == Decimal(0)  # OpenAI's moderation models are free (billing 0011)


def test_a_priced_check_holds_only_its_input_and_charges_it_to_the_budget(
    spec, context, make_budget, project_a, priced_moderation, monkeypatch
):
    make_budget(project_a.organization, limit=1000)
    held: list[Decimal] = []
    real_reserve = metering.moderation_reserve

    def reserve(**kwargs: Any) -> metering.MeteredCall:
        call = real_reserve(**kwargs)
        held.append(call.reservation.amount)
        return call

    monkeypatch.setattr(metering, "moderation_reserve", reserve)

    run(metering.moderate_metered, context=context, spec=spec, text=TEXT, model="paid-moderation")

    [row] = UsageRecord.objects.all()
    tokens = prompt_estimate(TEXT)
    assert row.cost == Decimal(tokens) * Decimal("0.001")
    # The hold was the input (with the estimate's margin) and not one reply token.
    assert held == [Decimal(metering.held_prompt_tokens(tokens)) * Decimal("0.001")]
    period = BudgetPeriod.objects.get()
    assert (period.spent, period.reserved) == (row.cost, Decimal(0))
    assert not Hold.objects.exists()


def test_an_unpriced_model_under_a_budget_is_refused_and_nothing_is_sent(
    spec, context, make_budget, project_a, fake_upstream
):
    make_budget(project_a.organization, limit=1000)

    with pytest.raises(QuotaExceeded) as refused:
        run(metering.moderate_metered, context=context, spec=spec, text=TEXT, model="mystery-mod")

    assert refused.value.code == "budget_exceeded"
    assert "mystery-mod has no price" in refused.value.message
    assert sum(fake_upstream.request_counts.values()) == 0
    assert not UsageRecord.objects.exists()


def test_a_budget_that_cannot_pay_for_the_input_refuses_the_check(
    spec, context, make_budget, project_a, priced_moderation, fake_upstream
):
    make_budget(project_a.organization, limit="0.001")  # one token's worth

    with pytest.raises(QuotaExceeded) as refused:
        run(
            metering.moderate_metered,
            context=context,
            spec=spec,
            text=TEXT,
            model="paid-moderation",
        )

    assert refused.value.code == "budget_exceeded"
    assert sum(fake_upstream.request_counts.values()) == 0
    assert not UsageRecord.objects.exists()


def test_rate_limits_count_checks_like_any_call(spec, context, project_a, fake_upstream):
    RateLimit.objects.create(project=project_a, requests_per_minute=1)

    run(metering.moderate_metered, context=context, spec=spec, text=TEXT, model="omni-mod")
    with pytest.raises(QuotaExceeded) as refused:
        run(metering.moderate_metered, context=context, spec=spec, text=TEXT, model="omni-mod")

    assert refused.value.code == "rate_limit_exceeded"
    assert fake_upstream.request_counts == {"omni-mod": 1}
    assert UsageRecord.objects.count() == 1


def test_a_failed_check_is_one_error_row_and_costs_nothing(
    spec, context, make_budget, project_a, priced_moderation
):
    make_budget(project_a.organization, limit=1000)
    ModelPrice.objects.create(
        model="paid-moderation@500",  # the fault marker is not part of the price's name
        input_per_million=Decimal("1"),
        cached_input_per_million=Decimal("1"),
        output_per_million=Decimal("1"),
        effective_from="2024-01-01",
    )

    with pytest.raises(ProviderError) as failed:
        run(
            metering.moderate_metered,
            context=context,
            spec=spec,
            text=TEXT,
            model="paid-moderation@500",
        )

    assert failed.value.code == ErrorCode.UPSTREAM_UNAVAILABLE
    [row] = UsageRecord.objects.all()
    assert (row.status, row.prompt_tokens, row.cost) == ("error", 0, Decimal(0))
    period = BudgetPeriod.objects.get()
    assert (period.spent, period.reserved) == (Decimal(0), Decimal(0))
    assert not Hold.objects.exists()


def test_a_cancelled_check_is_still_settled_once(
    spec, context, make_budget, project_a, fake_upstream
):
    make_budget(project_a.organization, limit=1000)

    async def cancel_while_waiting() -> None:
        check = asyncio.ensure_future(
            metering.moderate_metered(
                context=context, spec=spec, text=TEXT, model="omni-moderation-latest@hang"
            )
        )
        async with asyncio.timeout(30):
            while True:  # until the upstream has the request (it never answers it)
                if fake_upstream.request_counts:
                    break
                await asyncio.sleep(0.01)
        check.cancel()
        with pytest.raises(asyncio.CancelledError):
            await check

    run(cancel_while_waiting)

    [row] = UsageRecord.objects.all()
    assert (row.source, row.status) == ("moderation", "incomplete")
    assert BudgetPeriod.objects.get().reserved == Decimal(0)
    assert not Hold.objects.exists()


def test_the_request_it_holds_for_is_the_input_as_one_user_message(spec, context):
    call = metering.moderation_reserve(context=context, spec=spec, text="check me")

    assert call.request == ChatRequest(
        model="fake-gpt", messages=[{"role": "user", "content": "check me"}]
    )
    assert (call.cap, call.reservation.held_reply) == (0, 0)
    assert call.prompt_tokens == prompt_estimate("check me")
