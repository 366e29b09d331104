"""The API reference pages work offline: /api/docs/ (Swagger UI) and /api/redoc/ load every
script, style, font and image from this server, and fetch nothing from anywhere else."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import refused, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize(
    ("path", "title"),
    [
        ("/api/docs/", ".swagger-ui .info .title"),
        ("/api/redoc/", "#redoc-container h1"),
    ],
)
def test_the_api_reference_asks_nothing_of_the_internet(open_page, alice, path, title):
    visit = open_page(user=alice)
    visit.page.goto(path)
    expect(visit.page.locator(title).first).to_contain_text("LLM Gateway API")
    visit.page.wait_for_load_state("networkidle")
    screenshot(visit.page, f"api-docs-{path.strip('/').replace('/', '-')}")
    assert visit.outside == []
    assert refused(visit.page) == []
