"""Long-context price tiers, and gemini-2.5-pro's.

Source: https://ai.google.dev/gemini-api/docs/pricing (Standard; read 2026-12-06):
gemini-2.5-pro costs $1.25 in / $10.00 out per 1M tokens for prompts up to 200,000 tokens and
$2.50 in / $15.00 out for longer ones; context caching is a tenth of the input price ($0.125,
$0.25). Batch mode is half of each tier. Billing 0013 could say only the first tier, so long
prompts were under-priced; a call is charged one tier for all its tokens, as Google bills it.
"""

from decimal import Decimal

import django.core.validators
from django.db import migrations, models

SOURCE = (
    "https://ai.google.dev/gemini-api/docs/pricing (Standard and Batch; text, image and video "
    "input; prompts up to 200k tokens, and over 200k at the long-context rates; read 2026-12-06)"
)


def tier(apps, schema_editor):
    ModelPrice = apps.get_model("billing", "ModelPrice")
    ModelPrice.objects.filter(model="gemini-2.5-pro", long_context_threshold=None).update(
        long_context_threshold=200_000,
        long_input_per_million=Decimal("2.50"),
        long_cached_input_per_million=Decimal("0.25"),
        long_output_per_million=Decimal("15.00"),
        source=SOURCE,
    )


def untier(apps, schema_editor):
    pass  # the fields go with the migration's own reversal


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0013_catalog_prices'),
    ]

    operations = [
        migrations.AddField(
            model_name='modelprice',
            name='long_cached_input_per_million',
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(0)]),
        ),
        migrations.AddField(
            model_name='modelprice',
            name='long_context_threshold',
            field=models.PositiveIntegerField(blank=True, help_text='Prompt tokens above which the long-context rates apply to the whole call.', null=True),
        ),
        migrations.AddField(
            model_name='modelprice',
            name='long_input_per_million',
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(0)]),
        ),
        migrations.AddField(
            model_name='modelprice',
            name='long_output_per_million',
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(0)]),
        ),
        migrations.RunPython(tier, untier),
    ]
