"""Providers against the session's fake upstream (started in tests/conftest.py)."""

from collections.abc import AsyncIterator, Callable

import pytest

from providers.addresses import LOOPBACK_NETWORKS, AddressPolicy
from providers.llm.fake_upstream import FakeUpstream
from providers.llm.openai_provider import OpenAIProvider

API_KEY = "sk-test-5f3a9c0e1b7d"  # distinctive, so a leak into any message would be caught
# The fake upstream listens on 127.0.0.1, which the default policy refuses.
LOOPBACK = AddressPolicy.allowing(LOOPBACK_NETWORKS)

MakeProvider = Callable[..., OpenAIProvider]


@pytest.fixture
async def make_provider(fake_upstream: FakeUpstream) -> AsyncIterator[MakeProvider]:
    """Providers against the fake upstream, closed after the test. Retries are off unless a
    test asks, so request counts and timings stay exact."""
    providers: list[OpenAIProvider] = []

    def make(*, api_key: str = API_KEY, timeout: float = 2, max_retries: int = 0) -> OpenAIProvider:
        provider = OpenAIProvider(
            base_url=fake_upstream.base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            address_policy=LOOPBACK,
        )
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.aclose()


@pytest.fixture
def provider(make_provider: MakeProvider) -> OpenAIProvider:
    return make_provider()
