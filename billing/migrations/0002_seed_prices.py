"""Seed the prices of the source documents (USD per 1M tokens); the local model is free."""

from datetime import date
from decimal import Decimal

from django.db import migrations

SEED = [
    # model (prefix patterns end in *), input, cached input, output
    ("gpt-4o*", "2.50", "1.25", "10.00"),
    ("gpt-4o-mini*", "0.15", "0.075", "0.60"),
    ("gpt-4-turbo*", "10.00", "10.00", "30.00"),
    ("gpt-3.5-turbo*", "0.50", "0.50", "1.50"),
    ("smollm2-135m-instruct", "0", "0", "0"),
]
EFFECTIVE_FROM = date(2024, 1, 1)


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("billing", "ModelPrice")
    for model, input_, cached, output in SEED:
        ModelPrice.objects.get_or_create(
            model=model,
            effective_from=EFFECTIVE_FROM,
            defaults={
                "input_per_million": Decimal(input_),
                "cached_input_per_million": Decimal(cached),
                "output_per_million": Decimal(output),
            },
        )


def unseed(apps, schema_editor):
    ModelPrice = apps.get_model("billing", "ModelPrice")
    for model, *_ in SEED:
        ModelPrice.objects.filter(model=model, effective_from=EFFECTIVE_FROM).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
