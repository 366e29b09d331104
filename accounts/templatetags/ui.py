"""Filters for people: durations in words, amounts of money rounded for display."""

from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

from django import template

register = template.Library()


@register.filter
def durationminutes(value: timedelta) -> str:
    """'15 minutes', '1 minute', '2 hours' — how long a lockout lasts, for people."""
    minutes = max(1, round(value.total_seconds() / 60))
    if minutes % 60 == 0:
        hours = minutes // 60
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


@register.filter
def usd(value: Decimal | None) -> str:
    """Money for people: cents, or 4 places for small amounts (rounded half-up, as billing says)."""
    if value is None:
        return ""
    value = Decimal(value)
    places = Decimal("0.01") if value >= 1 or value == 0 else Decimal("0.0001")
    return f"${value.quantize(places, rounding=ROUND_HALF_UP):,}"
