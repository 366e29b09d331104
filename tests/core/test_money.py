"""One display rule for money (core.money): half-up to the cent from a dollar up, to 4 places
under it (zeros past the cent dropped); the pages, the budget refusal and the admin all say
amounts the same way."""

from decimal import Decimal

import pytest
from django.template import Context, Template

from billing import services
from billing.models import Budget, ModelPrice
from billing.services import CallContext, QuotaExceeded
from core.money import decimal_text, usd


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        ("0", "$0.00"),
        ("0.0001", "$0.0001"),
        ("0.0022", "$0.0022"),
        ("0.00015", "$0.0002"),  # half-up, not to even
        ("0.00004", "$0.00"),  # under the last place shown
        ("0.4", "$0.40"),  # zeros past the cent say nothing
        ("0.015", "$0.015"),
        ("0.0100", "$0.01"),
        ("0.99994", "$0.9999"),
        ("0.99995", "$1.00"),  # rounds up to a dollar: then cents
        ("1", "$1.00"),
        ("2.005", "$2.01"),
        ("1234567.891", "$1,234,567.89"),
        ("-2.5", "-$2.50"),
        ("-0.00001", "$0.00"),  # rounds to zero: no minus sign
        ("-0.25", "-$0.25"),
    ],
)
def test_it_rounds_half_up_to_the_cent_or_to_4_places_under_a_dollar(amount, shown):
    assert usd(Decimal(amount)) == shown


def test_the_template_filter_is_the_same_rule():
    template = Template("{% load ui %}{{ a|usd }} {{ b|usd }} [{{ none|usd }}]")

    html = template.render(Context({"a": Decimal("0.0022"), "b": Decimal("12.345"), "none": None}))

    assert html == "$0.0022 $12.35 []"


@pytest.mark.django_db
def test_the_budget_refusal_shows_the_real_figures(project_a, alice):
    # $100 per 1M tokens in: 22 prompt tokens cost $0.0022, which cents would show as "$0.00".
    ModelPrice.objects.create(
        model="tiny-gpt",
        input_per_million=Decimal("100"),
        cached_input_per_million=Decimal("50"),
        output_per_million=Decimal("100"),
        effective_from="2024-01-01",
    )
    context = CallContext(
        organization_id=project_a.organization_id,
        project_id=project_a.pk,
        user_id=alice.pk,
        model="tiny-gpt",
    )
    spent = services.quota_reserve(context=context, prompt_tokens=22, max_tokens=0)
    services.quota_settle(reservation=spent, status="ok", prompt_tokens=22, completion_tokens=0)
    Budget.objects.create(
        organization=project_a.organization,
        scope="project",
        project=project_a,
        limit_usd=Decimal("0.0001"),
    )

    with pytest.raises(QuotaExceeded) as refused:
        services.quota_reserve(context=context, prompt_tokens=1, max_tokens=0)

    assert "$0.0001 a month, $0.0022 spent." in refused.value.message
    assert "$0.00 " not in refused.value.message


def test_amounts_go_to_scripts_as_plain_decimal_strings():
    assert decimal_text(Decimal("0E-12")) == "0.000000000000"  # str() would say "0E-12"
    assert decimal_text(Decimal("0.002200000000")) == "0.002200000000"
    assert decimal_text(None) is None
