"""Prices of the models the source documents name (providers.llm.catalog.DOCUMENTED_MODELS),
in USD per 1M tokens, from the providers' published price lists, with their batch prices.

Each row says where its figures come from (``source``) and applies from the day they were read
(``EFFECTIVE_FROM``): rows already there are left as they are, and older rows keep pricing the
calls made before that day (``billing.pricing.price_for``: the latest exact name wins, then the
longest prefix).

- OpenAI, Standard and Batch tiers (the Batch API is half the price; cached input in a batch
  is half the cached price, as that page lists it). Besides the exact names, a ``<name>-20*``
  row prices the dated snapshots (``gpt-4.1-2025-04-14``, ``o3-2025-04-16``) at the same
  figures without pricing siblings such as ``o3-pro`` or ``gpt-5-pro``, which cost more. The
  gpt-4o family keeps the ``gpt-4o*`` rows of billing 0002 for its snapshots.
- Google, Gemini Developer API, Standard and Batch (half the price): the text / image / video
  input price; context caching is a tenth of the input price. gemini-2.5-pro's figures are
  those of prompts up to 200,000 tokens (a longer prompt costs $2.50 in / $15.00 out, which
  one row per model cannot say).
- Embedding models have no output and no cached-input price: the input price stands for both.
- OpenAI's moderation models are free (billing 0011 prices them by prefix; this row names the
  one ``settings.MODERATION_MODEL`` defaults to, with its source).
"""

from datetime import date
from decimal import Decimal

from django.db import migrations

EFFECTIVE_FROM = date(2026, 12, 6)
OPENAI = "https://platform.openai.com/docs/pricing (Standard and Batch, read 2026-12-06)"
GOOGLE = (
    "https://ai.google.dev/gemini-api/docs/pricing (Standard and Batch; text, image and video "
    "input{}; read 2026-12-06)"
)

# model (a prefix ends in *), input, cached input, output, batch input, batch output, source
PRICES = [
    ("gpt-5", "1.25", "0.125", "10.00", "0.625", "5.00", OPENAI),
    ("gpt-5-mini", "0.25", "0.025", "2.00", "0.125", "1.00", OPENAI),
    ("gpt-5-nano", "0.05", "0.005", "0.40", "0.025", "0.20", OPENAI),
    ("gpt-4.1", "2.00", "0.50", "8.00", "1.00", "4.00", OPENAI),
    ("gpt-4.1-mini", "0.40", "0.10", "1.60", "0.20", "0.80", OPENAI),
    ("gpt-4.1-nano", "0.10", "0.025", "0.40", "0.05", "0.20", OPENAI),
    ("gpt-4o", "2.50", "1.25", "10.00", "1.25", "5.00", OPENAI),
    ("gpt-4o-mini", "0.15", "0.075", "0.60", "0.075", "0.30", OPENAI),
    ("o3", "2.00", "0.50", "8.00", "1.00", "4.00", OPENAI),
    ("o4-mini", "1.10", "0.275", "4.40", "0.55", "2.20", OPENAI),
    ("text-embedding-3-small", "0.02", "0.02", "0", "0.01", "0", OPENAI),
    ("text-embedding-3-large", "0.13", "0.13", "0", "0.065", "0", OPENAI),
    ("omni-moderation-latest", "0", "0", "0", "0", "0", OPENAI),
    ("gemini-2.5-flash", "0.30", "0.03", "2.50", "0.15", "1.25", GOOGLE.format("")),
    (
        "gemini-2.5-pro", "1.25", "0.125", "10.00", "0.625", "5.00",
        GOOGLE.format(", prompts up to 200k tokens"),
    ),
]  # fmt: skip

# Dated snapshots priced as their model (see the docstring).
SNAPSHOTS = [
    "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3",
    "o4-mini",
]  # fmt: skip


def rows():
    by_model = {row[0]: row for row in PRICES}
    yield from PRICES
    for model in SNAPSHOTS:
        yield (f"{model}-20*", *by_model[model][1:])


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("billing", "ModelPrice")
    for model, input_, cached, output, batch_input, batch_output, source in rows():
        ModelPrice.objects.get_or_create(
            model=model,
            effective_from=EFFECTIVE_FROM,
            defaults={
                "input_per_million": Decimal(input_),
                "cached_input_per_million": Decimal(cached),
                "output_per_million": Decimal(output),
                "batch_input_per_million": Decimal(batch_input),
                "batch_output_per_million": Decimal(batch_output),
                "source": source,
            },
        )


def unseed(apps, schema_editor):
    ModelPrice = apps.get_model("billing", "ModelPrice")
    models = [row[0] for row in rows()]
    ModelPrice.objects.filter(model__in=models, effective_from=EFFECTIVE_FROM).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0012_batch_prices_sources")]

    operations = [migrations.RunPython(seed, unseed)]
