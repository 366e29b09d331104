"""Filters for people: durations in words, amounts of money rounded for display."""

from datetime import timedelta
from decimal import Decimal

from django import template
from django.utils.translation import ngettext

from core import money

register = template.Library()


@register.filter
def durationminutes(value: timedelta) -> str:
    """'15 minutes', '1 minute', '2 hours' — how long a lockout lasts, for people."""
    minutes = max(1, round(value.total_seconds() / 60))
    if minutes % 60 == 0:
        hours = minutes // 60
        return ngettext("%(count)d hour", "%(count)d hours", hours) % {"count": hours}
    return ngettext("%(count)d minute", "%(count)d minutes", minutes) % {"count": minutes}


@register.filter
def usd(value: Decimal | None) -> str:
    """Money for people, by the one display rule (core.money)."""
    return "" if value is None else money.usd(value)
