"""The model catalog (windows, longest replies, capabilities) and the price table billing 0013
seeds for the models the source documents name."""

from datetime import date
from decimal import Decimal

import pytest

from accounts.models import Membership
from billing import pricing
from billing.models import ModelPrice
from providers import services as provider_services
from providers.llm import catalog
from providers.llm.catalog import (
    DOCUMENTED_MODELS,
    capabilities,
    context_window,
    max_output_tokens,
    takes_max_completion_tokens,
)

SEEDED = date(2026, 12, 6)  # the day billing 0013's figures were read
LATER = date(2027, 1, 1)

NOTHING = {
    "supports_vision": False,
    "supports_tools": False,
    "supports_json": False,
    "supports_embeddings": False,
}
CHAT = {**NOTHING, "supports_vision": True, "supports_tools": True, "supports_json": True}


@pytest.mark.parametrize(
    ("model", "window", "longest"),
    [
        ("gpt-5", 400_000, 128_000),
        ("gpt-5-mini", 400_000, 128_000),
        ("gpt-5-nano-2025-08-07", 400_000, 128_000),
        ("gpt-4.1", 1_047_576, 32_768),
        ("gpt-4.1-nano", 1_047_576, 32_768),
        ("gpt-4o", 128_000, 16_384),
        ("gpt-4o-mini", 128_000, 16_384),
        ("o3", 200_000, 100_000),
        ("o4-mini-2025-04-16", 200_000, 100_000),
        ("gemini-2.5-flash", 1_048_576, 65_536),
        ("gemini-2.5-pro", 1_048_576, 65_536),
        ("models/gemini-2.5-pro", 1_048_576, 65_536),  # as Gemini's endpoint lists it
        ("text-embedding-3-small", 8_191, None),
        ("text-embedding-3-large", 8_191, None),
    ],
)
def test_it_knows_the_published_window_and_longest_reply(model, window, longest):
    assert (context_window(model), max_output_tokens(model)) == (window, longest)


def test_it_keeps_the_figures_it_had_for_the_names_it_knew():
    assert (context_window("gpt-4-turbo"), max_output_tokens("gpt-4-turbo")) == (128_000, 4_096)
    assert (context_window("gpt-3.5-turbo"), max_output_tokens("gpt-3.5-turbo")) == (16_385, 4_096)
    assert context_window("fake-gpt@500") == 4_096
    assert context_window(catalog.LOCAL_MODEL_NAME) == 8_192
    assert context_window("mystery-model") == catalog.DEFAULT_CONTEXT_WINDOW
    assert max_output_tokens("mystery-model") is None


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-5-nano", CHAT),
        ("gpt-4.1-mini", CHAT),
        ("o3", CHAT),
        ("gemini-2.5-flash", CHAT),
        ("models/gemini-2.5-pro", CHAT),
        ("gpt-3.5-turbo-0125", {**NOTHING, "supports_tools": True, "supports_json": True}),
        ("text-embedding-3-small", {**NOTHING, "supports_embeddings": True}),
        ("gemini-embedding-001", {**NOTHING, "supports_embeddings": True}),
        ("omni-moderation-latest", NOTHING),
        ("fake-gpt@tool", NOTHING),
    ],
)
def test_it_knows_what_each_model_can_do(model, expected):
    assert capabilities(model) == expected


def test_reasoning_models_take_max_completion_tokens():
    assert takes_max_completion_tokens("gpt-5-mini")
    assert takes_max_completion_tokens("o4-mini@500")
    assert not takes_max_completion_tokens("gpt-4.1")
    assert not takes_max_completion_tokens("gemini-2.5-pro")


@pytest.mark.django_db
def test_a_model_added_by_name_gets_the_catalogs_figures_and_embeddings_flag(
    alice, org_a, project_a
):
    owner = Membership.objects.get(user=alice, organization=org_a)
    connection = provider_services.connection_create(
        actor=owner, project=project_a, kind="openai", name="OpenAI", api_key="sk-test-123456"
    )

    embedding = provider_services.connection_model_add(
        actor=owner, connection=connection, name="text-embedding-3-large"
    )
    chat = provider_services.connection_model_add(actor=owner, connection=connection, name="o3")
    told = provider_services.connection_model_add(
        actor=owner, connection=connection, name="house-embedder", supports_embeddings=True
    )

    assert (embedding.context_window, embedding.supports_embeddings) == (8_191, True)
    assert (embedding.supports_vision, embedding.supports_tools) == (False, False)
    assert (chat.context_window, chat.max_output_tokens, chat.supports_embeddings) == (
        200_000,
        100_000,
        False,
    )
    assert chat.supports_vision
    assert chat.supports_tools
    assert chat.supports_json
    assert told.supports_embeddings


# --- the price table --------------------------------------------------------------------------


def prices(model: str, on: date = LATER) -> tuple[Decimal, ...]:
    price = pricing.price_for(model, on=on)
    assert price is not None, model
    return (
        price.input_per_million,
        price.cached_input_per_million,
        price.output_per_million,
        price.batch_input_per_million,
        price.batch_output_per_million,
    )


def figures(*values: str) -> tuple[Decimal, ...]:
    return tuple(Decimal(value) for value in values)


@pytest.mark.django_db
def test_every_documented_model_has_a_price_with_its_source_and_batch_prices():
    for model in DOCUMENTED_MODELS:
        price = pricing.price_for(model, on=SEEDED)
        assert price is not None, model
        assert price.model == model  # its own row, not a family's
        assert price.effective_from == SEEDED
        assert price.source.startswith("https://"), model
        assert "read 2026-12-06" in price.source
        assert price.batch_input_per_million is not None
        assert price.batch_output_per_million is not None


@pytest.mark.django_db
def test_the_prices_are_the_published_ones():
    assert prices("gpt-5") == figures("1.25", "0.125", "10.00", "0.625", "5.00")
    assert prices("gpt-5-mini") == figures("0.25", "0.025", "2.00", "0.125", "1.00")
    assert prices("gpt-4.1-nano") == figures("0.10", "0.025", "0.40", "0.05", "0.20")
    assert prices("o4-mini") == figures("1.10", "0.275", "4.40", "0.55", "2.20")
    assert prices("gpt-4o-mini") == figures("0.15", "0.075", "0.60", "0.075", "0.30")
    assert prices("text-embedding-3-small") == figures("0.02", "0.02", "0", "0.01", "0")
    assert prices("omni-moderation-latest") == figures("0", "0", "0", "0", "0")
    assert prices("gemini-2.5-flash") == figures("0.30", "0.03", "2.50", "0.15", "1.25")
    assert prices("models/gemini-2.5-pro") == figures("1.25", "0.125", "10.00", "0.625", "5.00")
    assert "ai.google.dev" in pricing.price_for("gemini-2.5-pro", on=LATER).source
    assert "200k" in pricing.price_for("gemini-2.5-pro", on=LATER).source
    assert "openai.com" in pricing.price_for("o3", on=LATER).source


@pytest.mark.django_db
def test_dated_snapshots_cost_what_their_model_costs_and_pricier_siblings_are_not_guessed():
    assert prices("gpt-4.1-2025-04-14") == prices("gpt-4.1")
    assert prices("o3-2025-04-16") == prices("o3")
    assert prices("gpt-5-mini-2025-08-07") == prices("gpt-5-mini")
    # o3-pro and gpt-5-pro cost many times more: no row of o3's or gpt-5's prices them.
    assert pricing.price_for("o3-pro", on=LATER) is None
    assert pricing.price_for("gpt-5-pro", on=LATER) is None


@pytest.mark.django_db
def test_the_older_rows_stay_and_price_what_came_before():
    old = pricing.price_for("gpt-4o", on=date(2026, 12, 5))
    new = pricing.price_for("gpt-4o", on=SEEDED)

    assert (old.model, old.effective_from, old.source) == ("gpt-4o*", date(2024, 1, 1), "")
    assert (new.model, new.effective_from) == ("gpt-4o", SEEDED)
    assert (old.input_per_million, old.output_per_million) == (
        new.input_per_million,
        new.output_per_million,
    )
    assert ModelPrice.objects.filter(model="gpt-4o-mini*", effective_from="2024-01-01").exists()
    local = pricing.price_for(catalog.LOCAL_MODEL_NAME, on=LATER)
    assert (local.input_per_million, local.output_per_million) == (0, 0)
