"""One fake upstream server per test session; each test starts with zeroed request counts."""

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from chat.llm.fake_upstream import FakeUpstream
from chat.llm.openai_provider import OpenAIProvider

API_KEY = "sk-test-5f3a9c0e1b7d"  # distinctive, so a leak into any message would be caught

MakeProvider = Callable[..., OpenAIProvider]


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def fake_upstream(fake_upstream_server: FakeUpstream) -> FakeUpstream:
    fake_upstream_server.reset()
    return fake_upstream_server


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
        )
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.aclose()


@pytest.fixture
def provider(make_provider: MakeProvider) -> OpenAIProvider:
    return make_provider()
