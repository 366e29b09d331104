"""Provider.embed: OpenAIProvider against the fake upstream's /v1/embeddings through the real
SDK, and LocalProvider on the bundled model in llama.cpp's embedding mode (no mocks)."""

from __future__ import annotations

import math

import llama_cpp
import pytest

from providers.llm.base import Embeddings, ErrorCode, ProviderError
from providers.llm.fake_upstream import EMBEDDING_SIZE, embedding_vector
from providers.llm.local_provider import (
    EMBEDDING_CONTEXT,
    LOCAL_MODEL_NAME,
    LocalProvider,
    local_model_path,
)
from providers.llm.tokens import count_text_tokens
from tests.providers.llm.conftest import API_KEY

CAT = "The cat sat on the mat."
CAT_AGAIN = "A cat was sitting on a rug."
TAXES = "Quarterly tax filings are due in April."


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


# --- OpenAIProvider --------------------------------------------------------------------------


async def test_it_returns_the_upstreams_vectors_in_order_with_its_count(provider, fake_upstream):
    result = await provider.embed(model="fake-embed", input=[CAT, TAXES])

    assert isinstance(result, Embeddings)
    assert result.vectors == [embedding_vector(CAT), embedding_vector(TAXES)]
    assert result.prompt_tokens == count_text_tokens(CAT) + count_text_tokens(TAXES)
    assert result.model == "fake-embed"
    # Floats asked for, whatever the SDK's own default (base64) would be.
    assert fake_upstream.requests[-1] == {
        "model": "fake-embed",
        "input": [CAT, TAXES],
        "encoding_format": "float",
    }


async def test_dimensions_are_sent_on(provider, fake_upstream):
    result = await provider.embed(model="fake-embed", input=[CAT], dimensions=8)

    assert fake_upstream.requests[-1]["dimensions"] == 8
    assert len(result.vectors[0]) == 8
    assert math.isclose(dot(result.vectors[0], result.vectors[0]), 1.0)


async def test_without_usage_the_count_is_left_to_the_caller(provider):
    result = await provider.embed(model="fake-embed@nousage", input=[CAT])

    assert result.prompt_tokens is None
    assert len(result.vectors) == 1


@pytest.mark.parametrize(
    ("marker", "code"),
    [
        ("500", ErrorCode.UPSTREAM_UNAVAILABLE),
        ("429", ErrorCode.RATE_LIMITED),
        ("quota", ErrorCode.QUOTA_EXHAUSTED),
        ("401", ErrorCode.AUTH),
        ("html", ErrorCode.UPSTREAM_UNAVAILABLE),
        ("badjson", ErrorCode.UPSTREAM_UNAVAILABLE),
    ],
)
async def test_every_failure_is_a_provider_error_without_the_key(provider, marker, code):
    with pytest.raises(ProviderError) as failed:
        await provider.embed(model=f"fake-embed@{marker}", input=[CAT])

    assert failed.value.code == code
    assert API_KEY not in failed.value.message


async def test_an_upstream_refusal_is_a_bad_request(provider):
    with pytest.raises(ProviderError) as failed:
        await provider.embed(model="fake-embed", input=[CAT], dimensions=EMBEDDING_SIZE + 1)

    assert (failed.value.code, failed.value.status) == (ErrorCode.BAD_REQUEST, 400)
    assert "dimensions" in failed.value.message


async def test_an_unknown_model_is_not_found(provider):
    with pytest.raises(ProviderError) as failed:
        await provider.embed(model="nope-embed", input=[CAT])

    assert failed.value.code == ErrorCode.MODEL_NOT_FOUND


async def test_an_upstream_that_does_not_answer_in_time_is_a_timeout(make_provider):
    provider = make_provider(timeout=0.3)

    with pytest.raises(ProviderError) as failed:
        await provider.embed(model="fake-embed@hang", input=[CAT])

    assert failed.value.code == ErrorCode.TIMEOUT


# --- LocalProvider -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> llama_cpp.Llama:
    """SmolLM2's tokenizer and metadata on their own (vocab only), to check the provider's
    counts and sizes."""
    return llama_cpp.Llama(str(local_model_path()), vocab_only=True, verbose=False)


def native_size(tokenizer: llama_cpp.Llama) -> int:
    return int(tokenizer.metadata["llama.embedding_length"])  # 576 for SmolLM2-135M


async def test_the_local_model_puts_related_sentences_closer(tokenizer):
    result = await LocalProvider().embed(model=LOCAL_MODEL_NAME, input=[CAT, CAT_AGAIN, TAXES])

    cat, cat_again, taxes = result.vectors
    assert len({len(cat), len(cat_again), len(taxes)}) == 1
    assert len(cat) == native_size(tokenizer)
    for vector in (cat, cat_again, taxes):  # unit length: cosine similarity is the dot product
        assert math.isclose(dot(vector, vector), 1.0, rel_tol=1e-6)
    assert dot(cat, cat_again) > dot(cat, taxes) + 0.1
    assert result.prompt_tokens == sum(
        len(tokenizer.tokenize(text.encode())) for text in (CAT, CAT_AGAIN, TAXES)
    )
    assert result.model == LOCAL_MODEL_NAME


async def test_the_local_model_embeds_the_same_text_the_same_way():
    local = LocalProvider()

    first = await local.embed(model=LOCAL_MODEL_NAME, input=[CAT, TAXES])
    again = await local.embed(model=LOCAL_MODEL_NAME, input=[CAT, TAXES])

    assert first.vectors == again.vectors


async def test_the_local_model_takes_only_its_own_dimensions(tokenizer):
    local = LocalProvider()
    size = native_size(tokenizer)

    same = await local.embed(model=LOCAL_MODEL_NAME, input=[CAT], dimensions=size)
    with pytest.raises(ProviderError) as refused:
        await local.embed(model=LOCAL_MODEL_NAME, input=[CAT], dimensions=256)

    assert len(same.vectors[0]) == size
    assert (refused.value.code, refused.value.param) == (ErrorCode.BAD_REQUEST, "dimensions")
    assert str(size) in refused.value.message


async def test_the_local_model_refuses_an_input_longer_than_it_embeds():
    with pytest.raises(ProviderError) as refused:
        await LocalProvider().embed(
            model=LOCAL_MODEL_NAME, input=[CAT, "word " * EMBEDDING_CONTEXT]
        )

    assert (refused.value.code, refused.value.param) == (ErrorCode.CONTEXT_TOO_LONG, "input")
    assert refused.value.message.startswith("input[1] has ")


@pytest.mark.parametrize(
    ("model", "texts", "code"),
    [
        ("other-model", [CAT], ErrorCode.MODEL_NOT_FOUND),
        (LOCAL_MODEL_NAME, [], ErrorCode.BAD_REQUEST),
        (LOCAL_MODEL_NAME, [CAT, ""], ErrorCode.BAD_REQUEST),
    ],
)
async def test_the_local_model_refuses_what_it_cannot_embed(model, texts, code):
    with pytest.raises(ProviderError) as refused:
        await LocalProvider().embed(model=model, input=texts)

    assert refused.value.code == code
