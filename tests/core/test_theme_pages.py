"""What every page gives a keyboard and a phone: the skip link first (to the message box on a
chat), the landmarks, and the chat drawer's toggle with the controls it needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from tests.chat.conftest import make_conversation  # noqa: F401 - a fixture used below

DRAWER_JS = Path(settings.BASE_DIR) / "static" / "js" / "drawer.js"


def first_focusable(html: str) -> str:
    body = html[html.index("<body") :]
    return re.search(r"<(?:a|button|input|select|textarea)\b[^>]*>", body).group(0)


@pytest.mark.django_db
def test_the_skip_link_comes_first_and_leads_to_main(client_for, alice, org_a):
    html = (
        client_for(alice).get(reverse("organization_settings", args=[org_a.slug])).content.decode()
    )

    assert first_focusable(html) == '<a class="skip-link" href="#main">'
    assert '<main id="main"' in html
    assert re.search(r'<header class="topbar">.*?<nav aria-label="Account">', html, re.S)


@pytest.mark.django_db
def test_on_a_chat_the_skip_link_leads_to_the_message_box(
    client_for,
    alice,
    project_a,
    make_conversation,  # noqa: F811 - the fixture imported above
):
    conversation = make_conversation(alice, project_a)
    page = reverse("conversation_detail", args=["org-a", "project-a", conversation.pk])

    html = client_for(alice).get(page).content.decode()
    earlier = client_for(alice).get(page, {"before": 10**9}).content.decode()

    assert first_focusable(html) == '<a class="skip-link" href="#composer">'
    assert "Skip to message box</a>" in html
    assert '<form class="composer" id="composer"' in html
    # Reading earlier messages there is no message box: the link goes to the page instead.
    assert first_focusable(earlier) == '<a class="skip-link" href="#main">'


@pytest.mark.django_db
def test_the_drawer_toggle_controls_the_sidebar(
    client_for,
    alice,
    project_a,
    make_conversation,  # noqa: F811 - the fixture imported above
):
    conversation = make_conversation(alice, project_a)

    for page in (
        reverse("conversation_detail", args=["org-a", "project-a", conversation.pk]),
        reverse("room_list", args=["org-a", "project-a"]),
    ):
        html = client_for(alice).get(page).content.decode()

        toggle = re.search(r'<button type="button" class="[^"]*drawer-toggle"([^>]*)>', html)
        assert toggle, page
        # Hidden until drawer.js runs: without scripts the sidebar stays above the chat.
        assert 'aria-controls="chat-sidebar" aria-expanded="false" hidden' in toggle.group(1)
        sidebar = html[html.index('<aside class="chat-sidebar" id="chat-sidebar"') :]
        # The drawer's own way out, first in it (touch screens have no Escape key).
        close = r'<aside[^>]*>\s*<button type="button" class="[^"]*drawer-close" hidden>'
        assert re.match(close, sidebar)
        assert '<script src="/static/js/drawer.js" defer></script>' in html

    drawer = DRAWER_JS.read_text()
    assert '"Escape"' in drawer
    assert 'setAttribute("aria-expanded"' in drawer
