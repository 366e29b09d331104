"""The audit log page in Chromium: it fits a phone (375 px) without widening the page, axe
finds nothing serious in either theme, and the Content-Security-Policy refuses nothing.
Marked ``browser``: run with ``.venv/bin/pytest -m browser tests/audit``."""

from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import Page, expect

from accounts.signals import Target
from audit.services import audit_record

# axe_script, chromium_executable and open_page: tests/browser's fixtures, made visible here
# (its conftest.py does not reach this folder); the test asks for open_page by name.
from tests.browser.conftest import (  # noqa: F401
    AXE_ROUTE,
    DESKTOP,
    PHONE,
    axe_script,
    chromium_executable,
    open_page,
    refused,
    screenshot,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def serious(page: Page) -> list[dict[str, Any]]:
    page.add_script_tag(url=AXE_ROUTE)
    results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    assert results["passes"], "axe checked nothing"
    return [v for v in results["violations"] if v["impact"] in ("serious", "critical")]


@pytest.fixture
def trail(alice, bob, org_a, project_a):
    long_prompt = "You are a careful reviewer who reads every line twice. " * 12
    audit_record(
        action="persona.updated",
        organization=org_a,
        actor=alice,
        project=project_a,
        target=Target(type="chat.persona", id="1", label="Extremely-long-persona-name-" * 3),
        changes={"system_prompt": ["", long_prompt], "enabled": [True, False]},
    )
    audit_record(
        action="connection.updated",
        organization=org_a,
        actor=alice,
        project=project_a,
        target=Target(type="providers.providerconnection", id="2", label="Team OpenAI"),
        changes={"api_key": "changed", "base_url": [None, "https://api.example.com/v1/" * 3]},
    )
    audit_record(
        action="member.role_changed",
        organization=org_a,
        actor=alice,
        target=bob,
        changes={"role": ["member", "admin"]},
    )


@pytest.mark.parametrize(
    ("viewport", "color_scheme"), [(PHONE, "light"), (DESKTOP, "dark")], ids=["phone", "desktop"]
)
def test_the_log_page_fits_and_passes_axe(request, alice, org_a, trail, viewport, color_scheme):
    page = request.getfixturevalue("open_page")(
        user=alice, viewport=viewport, color_scheme=color_scheme
    ).page

    response = page.goto(reverse("audit_log", args=[org_a.slug]))

    assert response is not None
    assert response.ok
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    expect(page.locator("[data-testid=audit-event]")).to_have_count(3)
    screenshot(page, f"audit-log-{viewport['width']}-{color_scheme}")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= viewport["width"], f"the page is {width} px wide on {viewport['width']} px"
    assert serious(page) == []
    assert refused(page) == []
