"""Prices and budgets the billing tests set up."""

from decimal import Decimal

import pytest

from billing.models import Budget, ModelPrice
from tests.chat.conftest import make_conversation  # noqa: F401 - shared with the chat tests


@pytest.fixture
def fake_price(db) -> ModelPrice:
    """fake-gpt* at $1,000 / $2,000 per 1M tokens: a token costs $0.001 in, $0.002 out."""
    return ModelPrice.objects.create(
        model="fake-gpt*",
        input_per_million=Decimal("1000"),
        cached_input_per_million=Decimal("500"),
        output_per_million=Decimal("2000"),
        effective_from="2024-01-01",
    )


@pytest.fixture
def make_budget(db):
    def make(organization, *, limit, scope="organization", project=None, user=None, **fields):
        return Budget.objects.create(
            organization=organization,
            scope=scope,
            project=project,
            user=user,
            limit_usd=Decimal(str(limit)),
            **fields,
        )

    return make
