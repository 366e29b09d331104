"""Prices and costs. Exact Decimal arithmetic; see the rounding rule in billing/models.py."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from .models import PER_MILLION, ModelPrice


def price_for(model: str, *, on: date) -> ModelPrice | None:
    """The price in force on ``on``: an exact name beats the longest matching prefix."""
    base = model.split("@", 1)[0]
    candidates = [
        p
        for p in ModelPrice.objects.filter(effective_from__lte=on).order_by("-effective_from")
        if p.model == base or (p.is_prefix and base.startswith(p.model[:-1]))
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
