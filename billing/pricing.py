"""Prices and costs. Exact Decimal arithmetic; see the rounding rule in billing/models.py."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.db.models import BigIntegerField, F, Sum, Value
from django.db.models.functions import Cast, Round

from core.config_cache import cached
from providers.llm.catalog import base_name

from .models import MONEY, PER_MILLION, ModelPrice


def price_table() -> list[ModelPrice]:
    """Every price row, newest first: read once, kept until a price changes."""
    return cached(("prices",), lambda: list(ModelPrice.objects.order_by("-effective_from", "-pk")))


def price_by_id(pk: int) -> ModelPrice | None:
    for price in price_table():
        if price.pk == pk:
            return price
    return ModelPrice.objects.filter(pk=pk).first()  # changed a moment ago: the row itself


def price_for(model: str, *, on: date) -> ModelPrice | None:
    """The price in force on ``on``: an exact name beats the longest matching prefix.

    The name is read as the catalog reads it: without the fake upstream's fault markers
    (``fake-gpt@500``) and the ``models/`` a Gemini endpoint lists its models under."""
    base = base_name(model)
    candidates = [
        p
        for p in price_table()
        if p.effective_from <= on
        and (p.model == base or (p.is_prefix and base.startswith(p.model[:-1])))
    ]
    if not candidates:
        return None
    exact = [p for p in candidates if not p.is_prefix]
    if exact:
        return exact[0]  # the latest exact row
    return max(candidates, key=lambda p: (len(p.model), p.effective_from))


def is_priced(model: str, *, on: date) -> bool:
    """Whether ``model`` has a price on ``on``. Every call is charged at the price in force
    when it is made (``quota_reserve``), so a model without one on the last day of a range had
    none on any day of it: all its ledger rows of the range are unpriced (``price`` empty)."""
    return price_for(model, on=on) is not None


def unpriced_models(models: Iterable[str], *, on: date) -> set[str]:
    """Those of ``models`` with no price on ``on``: the ones whose cost a page shows as
    "unpriced" rather than $0 (the local model has a price of 0: it is priced, and free)."""
    return {model for model in models if not is_priced(model, on=on)}


# --- costs -------------------------------------------------------------------------------------

BATCH_DISCOUNT = Decimal("0.5")  # OpenAI's Batch API and Gemini's batch mode: half the price


@dataclass(frozen=True)
class Rates:
    """USD per 1M tokens a call is charged at: normal or, for a batch line, batch rates."""

    input: Decimal
    cached_input: Decimal
    output: Decimal


def long_context(price: ModelPrice, prompt_tokens: int) -> bool:
    """Whether a prompt of ``prompt_tokens`` is charged at the price's long-context tier."""
    threshold = price.long_context_threshold
    return threshold is not None and prompt_tokens > threshold


def rates(price: ModelPrice, *, batch: bool = False, prompt_tokens: int = 0) -> Rates:
    """The rates of ``price`` for a normal call, or for a batch line: the batch prices where
    the row has them, else half the normal ones. Cached input in a batch is half the cached
    price (as OpenAI's batch prices list it), never more than the batch input price. A prompt
    longer than the row's long-context threshold is charged its long rates (a batch line:
    half of them) for every token of the call."""
    if long_context(price, prompt_tokens):
        tier = Rates(
            input=_or(price.long_input_per_million, price.input_per_million),
            cached_input=_or(price.long_cached_input_per_million, price.cached_input_per_million),
            output=_or(price.long_output_per_million, price.output_per_million),
        )
        if not batch:
            return tier
        return Rates(
            input=tier.input * BATCH_DISCOUNT,
            cached_input=tier.cached_input * BATCH_DISCOUNT,
            output=tier.output * BATCH_DISCOUNT,
        )
    if not batch:
        return Rates(
            input=price.input_per_million,
            cached_input=price.cached_input_per_million,
            output=price.output_per_million,
        )
    batch_input = price.batch_input_per_million
    if batch_input is None:
        batch_input = price.input_per_million * BATCH_DISCOUNT
    batch_output = price.batch_output_per_million
    if batch_output is None:
        batch_output = price.output_per_million * BATCH_DISCOUNT
    return Rates(
        input=batch_input,
        cached_input=min(price.cached_input_per_million * BATCH_DISCOUNT, batch_input),
        output=batch_output,
    )


def _or(value: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if value is None else value


def cost_of(
    price: ModelPrice | None,
    *,
    prompt_tokens: int,
    cached_tokens: int,
    completion_tokens: int,
    batch: bool = False,
    tier_tokens: int | None = None,
) -> Decimal:
    """Exact cost: uncached prompt tokens at the input price, cached ones at the cached price;
    a batch line at the batch rates, a long prompt at the long-context rates (``rates``; the
    tier chosen by ``tier_tokens``, the prompt by default). No price: nothing (an unpriced
    call)."""
    if price is None:
        return Decimal(0)
    tier = prompt_tokens if tier_tokens is None else tier_tokens
    rate = rates(price, batch=batch, prompt_tokens=tier)
    cached = min(cached_tokens, prompt_tokens)
    return (
        (prompt_tokens - cached) * rate.input
        + cached * rate.cached_input
        + completion_tokens * rate.output
    ) / PER_MILLION


def tier_estimate(prompt_tokens: int) -> int:
    """The prompt size that picks the tier of a call not yet made: our count of the prompt is
    an estimate (another tokenizer than the upstream's), so one within a quarter of a
    long-context threshold is held at the long rates, as the reply is held with a margin."""
    return -(-prompt_tokens * 5 // 4)


def worst_case(
    price: ModelPrice | None, *, prompt_tokens: int, max_tokens: int, batch: bool = False
) -> Decimal:
    """What a call may cost at most: the prompt (an estimate) uncached and every allowed reply
    token, at the tier a prompt of that estimate may turn out to be in."""
    return cost_of(
        price, prompt_tokens=prompt_tokens, cached_tokens=0, completion_tokens=max_tokens,
        batch=batch, tier_tokens=tier_estimate(prompt_tokens),
    )  # fmt: skip


# --- exact sums in the database ----------------------------------------------------------------

COST_PLACES: int = MONEY["decimal_places"]
COST_SCALE = 10**COST_PLACES


def cost_units_sum(field_name: str = "cost") -> Sum:
    """Sum of a MONEY column in units of 1e-12 USD, exactly.

    SQLite keeps decimals as floating point and sums them as floats; each stored cost rounds
    back to its exact 12-place value, and integer sums are exact on SQLite (up to 9.2e18 units,
    $9.2M per group) and PostgreSQL (numeric, unbounded).
    """
    return Sum(Cast(Round(F(field_name) * Value(COST_SCALE)), BigIntegerField()))


def units_to_cost(units: int | Decimal | None) -> Decimal:
    """Integer 1e-12 USD units back to the exact Decimal, with the ledger's 12 places."""
    return Decimal(units or 0).scaleb(-COST_PLACES)
