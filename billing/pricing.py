"""Prices and costs. Exact Decimal arithmetic; see the rounding rule in billing/models.py."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django.db.models import BigIntegerField, F, Sum, Value
from django.db.models.functions import Cast, Round

from core.config_cache import cached

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
    """The price in force on ``on``: an exact name beats the longest matching prefix."""
    base = model.split("@", 1)[0]
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


def cost_of(
    price: ModelPrice | None, *, prompt_tokens: int, cached_tokens: int, completion_tokens: int
) -> Decimal:
    """Exact cost: uncached prompt tokens at the input price, cached ones at the cached price."""
    if price is None:
        return Decimal(0)
    cached = min(cached_tokens, prompt_tokens)
    return (
        (prompt_tokens - cached) * price.input_per_million
        + cached * price.cached_input_per_million
        + completion_tokens * price.output_per_million
    ) / PER_MILLION


def worst_case(price: ModelPrice | None, *, prompt_tokens: int, max_tokens: int) -> Decimal:
    """What a call may cost at most: the prompt uncached and every allowed reply token."""
    return cost_of(
        price, prompt_tokens=prompt_tokens, cached_tokens=0, completion_tokens=max_tokens
    )


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
