"""Prices and budgets the billing tests set up."""

from decimal import Decimal

import pytest

from billing.models import Budget
from tests.chat.conftest import make_conversation  # noqa: F401 - shared with the chat tests


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
