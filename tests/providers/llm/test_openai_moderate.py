"""OpenAIProvider.moderate against the fake upstream's /v1/moderations, through the real SDK."""

import pytest

from providers.llm.base import ErrorCode, ModerationResult, ProviderError
from tests.providers.llm.conftest import API_KEY


async def test_it_names_the_flagged_categories_as_openai_spells_them(provider, fake_upstream):
    result = await provider.moderate(
        model="omni-moderation-latest", input="I will kill you, you idiot"
    )

    assert isinstance(result, ModerationResult)
    assert result.flagged is True
    assert result.categories == ["harassment", "violence"]
    assert result.model == "omni-moderation-latest"
    assert (result.upstream_id or "").startswith("modr-")
    assert fake_upstream.requests[-1] == {
        "model": "omni-moderation-latest",
        "input": "I will kill you, you idiot",
    }


async def test_a_clean_text_is_not_flagged(provider):
    result = await provider.moderate(model="omni-moderation-latest", input="A lovely day")

    assert (result.flagged, result.categories) == (False, [])


@pytest.mark.parametrize(
    ("marker", "code"),
    [
        ("500", ErrorCode.UPSTREAM_UNAVAILABLE),
        ("429", ErrorCode.RATE_LIMITED),
        ("quota", ErrorCode.QUOTA_EXHAUSTED),
        ("401", ErrorCode.AUTH),
    ],
)
async def test_every_failure_is_a_provider_error_without_the_key(provider, marker, code):
    with pytest.raises(ProviderError) as failed:
        await provider.moderate(model=f"omni-moderation-latest@{marker}", input="hello")

    assert failed.value.code == code
    assert API_KEY not in failed.value.message


async def test_an_upstream_that_does_not_answer_in_time_is_a_timeout(make_provider):
    provider = make_provider(timeout=0.3)

    with pytest.raises(ProviderError) as failed:
        await provider.moderate(model="omni-moderation-latest@hang", input="hello")

    assert failed.value.code == ErrorCode.TIMEOUT
