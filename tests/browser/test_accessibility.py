"""axe-core on every main page of ours: no serious or critical violation, in the light theme and
in the dark one; and the Content-Security-Policy refuses nothing our pages do (no inline script
or style, nothing from elsewhere).

axe-core comes from the npm registry (scripts/axe.sh: pinned, integrity-checked, kept in var/)
and is served to the page from the live server's origin, so the policy lets it in like our own
scripts. Each walk visits every page with one browser and one server, and reports every page's
findings at once. Django's admin and the third-party API reference pages are not ours."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import Page, expect

from chat import rooms
from chat.actors import Actor
from tests.browser.conftest import AXE_ROUTE, conversation, refused, use_fake_models
from tests.factories import UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

IMPACTS = ("serious", "critical")


@pytest.fixture
def pages(alice, bob, org_a, project_a, fake_upstream) -> dict[str, list[str]]:
    """Who sees which pages: anonymous visitors, the owner, a member."""
    use_fake_models(project_a, fake_upstream, "fake-gpt")
    chat = conversation(alice, project_a, model="fake-gpt", title="Release notes")
    room = rooms.room_create(
        actor=Actor(user=alice),
        project=project_a,
        title="Study group",
        sharing="members",
        member_ids=[bob.pk],
        model="fake-gpt",
    )
    org, project = [org_a.slug], [org_a.slug, project_a.slug]
    return {
        "anonymous": [
            reverse("login"),
            reverse("signup"),
            reverse("password_reset"),
        ],
        "alice": [
            reverse("home"),
            reverse("chat_home", args=project),
            reverse("conversation_detail", args=[*project, chat.pk]),
            reverse("room_list", args=project),
            reverse("conversation_detail", args=[*project, room.pk]),
            reverse("personas", args=project),
            reverse("persona_new", args=project),
            reverse("chat_settings", args=project),
            reverse("tool_servers", args=project),
            reverse("tool_server_new", args=project),
            reverse("moderation_settings", args=project),
            reverse("moderation_flags", args=project),
            reverse("usage_dashboard", args=org),
            reverse("statement_list", args=org),
            reverse("budgets", args=org),
            reverse("organization_settings", args=org),
            reverse("audit_log", args=org),
            reverse("organization_create"),
            reverse("project_settings", args=project),
            reverse("project_limits", args=project),
            reverse("api_keys", args=project),
            reverse("connections", args=project),
            reverse("connection_new", args=project),
            reverse("project_models", args=project),
            reverse("two_factor"),
            reverse("password_change"),
        ],
        "bob": [
            reverse("home"),
            reverse("tool_servers", args=project),
            reverse("conversation_detail", args=[*project, room.pk]),
            reverse("usage_dashboard", args=org),
        ],
    }


def settle(page: Page) -> None:
    """A chat page is checked live (its socket open) and with an answered message in it, so
    that replies, their Markdown and their buttons are checked too."""
    if not page.locator("#chat-status").count():
        return
    expect(page.locator("#chat-status")).to_have_attribute("data-status", "online")
    if page.locator("#msgs .msg").count() or page.locator("#chat[data-room]").count():
        return
    page.get_by_label("Your message").fill("**Bold**, `code` and\n\n```python\nprint('hi')\n```")
    page.get_by_label("Your message").press("Enter")
    expect(page.locator("#msgs .msg--assistant").last).to_have_attribute("data-state", "complete")


def axe_violations(page: Page) -> list[dict[str, Any]]:
    page.add_script_tag(url=AXE_ROUTE)
    results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    assert results["passes"], "axe checked nothing"
    return [v for v in results["violations"] if v["impact"] in IMPACTS]


def describe(violation: dict[str, Any]) -> str:
    nodes = "\n".join(
        f"      {json.dumps(node['target'])}: {node['html'][:160]}"
        for node in violation["nodes"][:8]
    )
    more = len(violation["nodes"]) - 8
    return f"    {violation['impact']} {violation['id']}: {violation['help']}\n{nodes}" + (
        f"\n      … and {more} more" if more > 0 else ""
    )


def walk(open_page, pages, users, *, color_scheme: str) -> list[str]:
    findings = []
    for who, paths in pages.items():
        page = open_page(user=users.get(who), color_scheme=color_scheme).page
        for path in paths:
            response = page.goto(path)
            assert response is not None
            assert response.ok, f"{who} {path}: {response.status}"
            settle(page)
            problems = [describe(v) for v in axe_violations(page)]
            problems += [f"    CSP {line}" for line in refused(page) if color_scheme == "light"]
            if problems:
                findings.append(f"{who} {path}:\n" + "\n".join(problems))
    return findings


@pytest.mark.parametrize("color_scheme", ["light", "dark"])
def test_our_pages_pass_axe(open_page, pages, alice, bob, color_scheme):
    findings = walk(open_page, pages, {"alice": alice, "bob": bob}, color_scheme=color_scheme)

    assert not findings, f"{len(findings)} pages with findings:\n" + "\n".join(findings)


def test_the_admin_runs_under_the_policy(open_page, alice, project_a):
    """Django's admin is not ours to fix for axe, but it runs under our policy: nothing of it
    may be refused (its scripts and styles are files; the policy admits nothing inline)."""
    staff = UserFactory(email="staff@example.com", is_staff=True, is_superuser=True)
    page = open_page(user=staff).page
    for path in (
        reverse("admin:index"),
        reverse("admin:accounts_project_changelist"),
        reverse("admin:accounts_project_change", args=[project_a.pk]),
        reverse("admin:billing_budget_add"),
    ):
        response = page.goto(path)
        assert response is not None
        assert response.ok, f"{path}: {response.status}"
        expect(page.locator("#content")).to_be_visible()
        assert refused(page) == [], path
