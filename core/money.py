"""The one way an amount of money is shown to a person (pages, refusals, e-mails, the admin).

Amounts are stored and summed exactly (billing/models.py); only display rounds: half-up to the
cent from a dollar up, and to 4 places under a dollar, where cents would show a $0.0001 budget
or a $0.0022 reply as "$0.00" (zeros past the cent dropped: $0.40, not $0.4000).
static/js/chat.js mirrors this for amounts that arrive over the socket. Here in core, not
billing, because the ``usd`` template filter lives in accounts, which may not import billing.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
SMALL = Decimal("0.0001")


def usd(amount: Decimal | int | str) -> str:
    """``$1,234.57``, ``$0.0022``, ``$0.00``; a negative amount (a refund) keeps its sign."""
    value = Decimal(amount)
    rounded = value.quantize(SMALL, rounding=ROUND_HALF_UP)
    if value == 0 or abs(rounded) >= 1:  # $0.99996 rounds up to a dollar: shown as "$1.00"
        rounded = value.quantize(CENT, rounding=ROUND_HALF_UP)
    sign = "-" if rounded < 0 else ""  # -0.00001 rounds to zero: no "-$0.00"
    text = f"{abs(rounded):,}"
    # Places past the cent only when they say something: $0.40, $0.015, $0.0022.
    while len(text) - text.index(".") > 3 and text.endswith("0"):
        text = text[:-1]
    return f"{sign}${text}"


def decimal_text(amount: Decimal | None) -> str | None:
    """An exact amount as a plain decimal string for JSON ("0.000000000000", never str()'s
    "0E-12", which scripts cannot read), or None."""
    return None if amount is None else format(amount, "f")
