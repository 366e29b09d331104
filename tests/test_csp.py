"""The Content-Security-Policy: sent on every page, with no 'unsafe-inline' or 'unsafe-eval', and
templates that need neither (no inline script, event handler or style), so a page keeps working
under it. The browser side is checked by scripts/browser/csp_pages.py."""

import re
from decimal import Decimal
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.test import Client
from django.urls import reverse

from billing.admin import usage_bar
from billing.models import Budget
from chat.markdown import render_markdown
from chat.models import Message, Persona
from tests.chat.conftest import make_conversation  # noqa: F401 - a fixture used below
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

HEADER = "Content-Security-Policy"

COMMENT = re.compile(r"\{#.*?#\}|\{%\s*comment\s*%\}.*?\{%\s*endcomment\s*%\}", re.S)
SCRIPT_TAG = re.compile(r"<script\b([^>]*)>", re.I)
STYLE_ELEMENT = re.compile(r"<style\b", re.I)
# An attribute inside a tag: an event handler (onclick=…) or a style="…".
HANDLER_ATTRIBUTE = re.compile(r"<[a-z][^>]*?\son[a-z]+\s*=", re.I)
STYLE_ATTRIBUTE = re.compile(r"<[a-z][^>]*?\sstyle\s*=", re.I)
JAVASCRIPT_URL = re.compile(r"""(?:href|src|action)\s*=\s*["']?\s*javascript:""", re.I)


def inline_code(html: str) -> list[str]:
    """What in this HTML (or template) the policy would refuse: inline script, event handler,
    style element or attribute, javascript: URL. Script data (json_script) is not run: allowed."""
    html = COMMENT.sub("", html)
    found = []
    for match in SCRIPT_TAG.finditer(html):
        attributes = match.group(1)
        if not re.search(r"\ssrc\s*=", attributes) and not re.search(
            r"""\stype\s*=\s*["']?application/json""", attributes
        ):
            found.append(f"inline <script>: {match.group(0)}")
    for pattern, what in (
        (STYLE_ELEMENT, "<style> element"),
        (HANDLER_ATTRIBUTE, "event handler attribute"),
        (STYLE_ATTRIBUTE, "style attribute"),
        (JAVASCRIPT_URL, "javascript: URL"),
    ):
        for match in pattern.finditer(html):
            line = html.count("\n", 0, match.start()) + 1
            found.append(f"{what} on line {line}: {match.group(0)[-80:]}")
    return found


def template_files() -> list[Path]:
    """templates/ and the template folders of the project's own apps (not installed packages)."""
    base = Path(settings.BASE_DIR)
    folders = [base / "templates"]
    for app in apps.get_app_configs():
        path = Path(app.path)
        if path.is_relative_to(base) and ".venv" not in path.parts:
            folders.append(path / "templates")
    return sorted(file for folder in folders if folder.is_dir() for file in folder.rglob("*.html"))


def directives(response) -> dict[str, list[str]]:
    policy = response[HEADER]
    parsed = {}
    for part in policy.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


def assert_strict(response) -> None:
    policy = directives(response)
    assert "'unsafe-inline'" not in response[HEADER]
    assert "'unsafe-eval'" not in response[HEADER]
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'self'"]
    assert policy["form-action"] == ["'self'"]


def test_it_finds_what_the_policy_would_refuse():
    refused = [
        "<script>alert(1)</script>",
        '<SCRIPT type="module">x()</SCRIPT>',
        '<button onclick="go()">',
        "<style>p { color: red }</style>",
        '<span class="a" style="--persona: #fff">',
        '<a href="javascript:alert(1)">',
    ]
    allowed = [
        '<script src="/static/js/chat.js" defer></script>',
        '<script id="tags" type="application/json">["chatbot"]</script>',
        '<span data-persona-color="#fff">',
        "<p>Turn it on=off, in style=plain prose</p>",
        "{# <style> in a comment #}",
    ]

    assert [html for html in refused if not inline_code(html)] == []
    assert [html for html in allowed if inline_code(html)] == []


def test_no_template_has_inline_script_handler_or_style():
    files = template_files()
    assert any(file.name == "base.html" for file in files)

    found = {
        str(file.relative_to(settings.BASE_DIR)): problems
        for file in files
        if (problems := inline_code(file.read_text()))
    }

    assert found == {}


def test_the_policy_allows_no_inline_code():
    policy = settings.CONTENT_SECURITY_POLICY["DIRECTIVES"]
    everything = [value for values in policy.values() for value in values]

    assert "'unsafe-inline'" not in everything
    assert "'unsafe-eval'" not in everything
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert "csp.middleware.CSPMiddleware" in settings.MIDDLEWARE


def test_it_is_sent_on_the_login_page():
    response = Client().get(reverse("login"))

    assert response.status_code == 200
    assert_strict(response)
    assert directives(response)["style-src"] == ["'self'"]
    assert inline_code(response.content.decode()) == []


@pytest.mark.parametrize(
    "name",
    ["home", "chat_home", "room_list", "personas", "persona_new", "usage_dashboard"],
)
def test_it_is_sent_on_the_pages_and_they_carry_no_inline_code(client_for, alice, project_a, name):
    org, project = project_a.organization.slug, project_a.slug
    args = {"home": [], "usage_dashboard": [org]}.get(name, [org, project])
    Budget.objects.create(organization=project_a.organization, scope="organization", limit_usd=1)
    Persona.objects.update_or_create(
        project=project_a, tag="pirate", defaults={"name": "Pirate", "color": "#92400e"}
    )

    response = client_for(alice).get(reverse(name, args=args))

    assert response.status_code == 200
    assert_strict(response)
    assert directives(response)["style-src"] == ["'self'"]
    assert inline_code(response.content.decode()) == []


def test_a_conversation_page_carries_colours_and_alignment_without_inline_style(
    client_for,
    alice,
    project_a,
    make_conversation,  # noqa: F811 - the fixture imported above
):
    conversation = make_conversation(alice, project_a)
    persona, _ = Persona.objects.update_or_create(
        project=project_a, tag="pirate", defaults={"name": "Pirate", "color": "#92400e"}
    )
    Message.objects.create(
        conversation=conversation,
        role="assistant",
        persona=persona,
        content="| left | middle | right |\n|:--|:-:|--:|\n| 1 | 2 | 3 |",
    )
    page = reverse(
        "conversation_detail", args=[project_a.organization.slug, project_a.slug, conversation.pk]
    )

    response = client_for(alice).get(page)
    body = response.content.decode()

    assert_strict(response)
    assert inline_code(body) == []
    assert 'data-persona-color="#92400e"' in body
    assert "/static/js/persona-color.js" in body  # which sets it as --persona
    assert '<th class="align-center">middle</th>' in body
    assert '<td class="align-right">3</td>' in body


def test_the_admin_carries_no_inline_code(client, project_a):
    Budget.objects.create(
        organization=project_a.organization, scope="organization", limit_usd=Decimal(10)
    )
    client.force_login(UserFactory(email="staff@example.com", is_staff=True, is_superuser=True))

    for page in (
        reverse("admin:index"),
        reverse("admin:billing_budget_changelist"),
        reverse("admin:billing_budget_add"),
        reverse("admin:accounts_organization_change", args=[project_a.organization.pk]),
    ):
        response = client.get(page)
        assert response.status_code == 200, page
        assert_strict(response)
        assert inline_code(response.content.decode()) == [], page


def test_the_admin_usage_bar_is_drawn_without_style():
    bar = usage_bar(Decimal("85.2"))

    assert inline_code(bar) == []
    assert 'width="85%"' in bar
    assert "85% of the limit spent" in bar


def test_table_alignment_is_a_class_not_a_style():
    html = render_markdown("| a | b |\n|:-:|--:|\n| 1 | 2 |")

    assert inline_code(html) == []
    assert '<th class="align-center">a</th>' in html
    assert '<td class="align-right">2</td>' in html


def test_the_swagger_page_loads_its_start_up_script_from_a_file(client):
    response = client.get(reverse("api-docs"))
    script = client.get(reverse("api-docs"), {"script": ""})

    assert response.status_code == 200
    assert_strict(response)
    assert directives(response)["style-src"] == ["'self'"]
    assert inline_code(response.content.decode()) == []
    assert '<script src="/api/docs/?script="></script>' in response.content.decode()
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle(" in script.content.decode()


def test_the_redoc_page_lets_in_only_its_nonced_and_hashed_styles(client):
    response = client.get(reverse("api-redoc"))
    body = response.content.decode()
    style_src = directives(response)["style-src"]

    assert response.status_code == 200
    assert_strict(response)  # scripts still from our origin only
    assert inline_code(body) == []
    assert "fonts.googleapis.com" not in body
    nonce = re.search(r'src="/static/js/redoc-init.js" nonce="([^"]+)"', body)
    assert nonce is not None
    assert style_src[:2] == ["'self'", f"'nonce-{nonce.group(1)}'"]
    assert all(value.startswith("'sha256-") for value in style_src[2:])
    assert directives(response)["worker-src"] == ["'self'", "blob:"]
