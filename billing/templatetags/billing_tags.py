"""Exact amounts, counts and the daily chart for the usage pages (``usd`` is in ``ui``)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TypedDict

from django import template

from billing.selectors import Spend

register = template.Library()


@register.filter
def exact(amount: Decimal | None) -> str:
    """The Decimal as stored, every place kept (for titles and exports)."""
    return "" if amount is None else f"{amount:f}"


@register.filter
def thousands(number: int | None) -> str:
    return "" if number is None else f"{number:,}"


@dataclass(frozen=True)
class Bar:
    x: int
    y: float
    height: float
    day: Spend


class Chart(TypedDict):
    bars: list[Bar]
    width: int
    height: int
    peak: Decimal


CHART_HEIGHT = 100
BAR_STEP = 10


@register.simple_tag
def chart_bars(days: list[Spend]) -> Chart:
    """Geometry of the daily bars in a 0-100 tall viewBox, scaled to the busiest day."""
    peak = max((d.cost for d in days), default=Decimal(0))
    bars = []
    for n, day in enumerate(days):
        height = float(day.cost / peak * CHART_HEIGHT) if peak else 0.0
        if day.cost and height < 1:
            height = 1.0  # a day with any spend stays visible
        bars.append(Bar(x=n * BAR_STEP, y=CHART_HEIGHT - height, height=height, day=day))
    return {
        "bars": bars,
        "width": max(len(days), 1) * BAR_STEP,
        "height": CHART_HEIGHT,
        "peak": peak,
    }
