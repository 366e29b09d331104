"""Moderation's pages and REST: the organization's owners and admins see and change a project's
moderation and what it flagged; a member is refused (403); an outsider finds nothing (404); a
key is refused whatever its scopes."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from accounts.models import Project
from chat import moderation
from chat.models import ChatSettings, ModerationFlag
from tests.chat.conftest import fake_connection, make_key, serve
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db

VERDICT = moderation.Verdict(
    flagged=True, categories=["violence"], checked_by="connection:omni-moderation-latest"
)


def page(name: str, project: Project) -> str:
    return reverse(name, args=[project.organization.slug, project.slug])


def api(name: str, project: Project) -> str:
    return reverse(name, kwargs={"project_id": project.pk})


def patch_json(client, url: str, body: dict):
    return client.patch(url, data=json.dumps(body), content_type="application/json")


def flag(project: Project, text: str = "I will kill him", **fields) -> ModerationFlag:
    return moderation.flag_record(
        project_id=project.pk,
        source=fields.pop("source", ModerationFlag.Source.CHAT),
        target=ModerationFlag.Target.INPUT,
        verdict=VERDICT,
        text=text,
        **fields,
    )


# --- the settings page -------------------------------------------------------------------------


def test_a_manager_sees_who_checks_each_model(client_for, alice, project_a, fake_upstream):
    fake_connection(project_a, fake_upstream, supports_moderation=False)
    serve(project_a, fake_upstream, "fake-gpt")

    response = client_for(alice).get(page("moderation_settings", project_a))

    assert response.status_code == 200
    body = response.content.decode()
    assert "<td>fake-gpt</td>" in body
    # fake-gpt's connection and the built-in model's: neither has /v1/moderations.
    assert "The connections of 2 of this project's models have no /v1/moderations" in body
    assert "The list is empty: nothing would be flagged for those models." in body
    assert "violence: \\b(kill|murder|stab)\\w*" in body  # the example in the help text


def test_a_connection_with_moderations_checks_its_models(
    client_for, alice, project_a, fake_upstream
):
    fake_connection(project_a, fake_upstream, supports_moderation=True)
    serve(project_a, fake_upstream, "fake-gpt")

    body = client_for(alice).get(page("moderation_settings", project_a)).content.decode()

    assert "the connection's /v1/moderations (<code>omni-moderation-latest</code>" in body
    # Only the built-in model's connection is left to the pattern list.
    assert "The connection of 1 of this project's models has no /v1/moderations" in body


def test_a_manager_turns_moderation_on_with_a_pattern_list(client_for, alice, project_a):
    response = client_for(alice).post(
        page("moderation_settings", project_a),
        {"enabled": "on", "patterns": "# ours\nspam: \\bbuy now\\b\n"},
    )

    assert response.status_code == 302
    saved = ChatSettings.objects.get(project=project_a)
    assert (saved.moderation_enabled, saved.moderation_check_replies) == (True, False)
    assert saved.moderation_patterns == "# ours\nspam: \\bbuy now\\b"
    config = moderation.config_for(project_a.pk)
    assert config.enabled
    assert [rule.category for rule in config.rules] == ["spam"]


def test_a_bad_pattern_is_shown_with_its_line_and_nothing_is_saved(client_for, alice, project_a):
    response = client_for(alice).post(
        page("moderation_settings", project_a),
        {"enabled": "on", "patterns": "spam: buy now\nhate: (unclosed"},
    )

    assert response.status_code == 400
    body = response.content.decode()
    assert "Line 2: not a valid regular expression" in body
    assert "hate: (unclosed" in body  # what was typed stays, to be fixed
    assert not ChatSettings.objects.filter(project=project_a).exists()


def test_a_member_is_refused_and_changes_nothing(client_for, bob, project_a):
    client = client_for(bob)

    assert client.get(page("moderation_settings", project_a)).status_code == 403
    assert client.get(page("moderation_flags", project_a)).status_code == 403
    posted = client.post(page("moderation_settings", project_a), {"enabled": "on"})
    assert posted.status_code == 403
    assert not ChatSettings.objects.filter(project=project_a).exists()


def test_an_outsider_finds_neither_page(client_for, charlie, project_a):
    flag(project_a)
    client = client_for(charlie)

    assert client.get(page("moderation_settings", project_a)).status_code == 404
    assert client.get(page("moderation_flags", project_a)).status_code == 404
    assert client.post(page("moderation_settings", project_a), {"enabled": "on"}).status_code == 404
    assert not ChatSettings.objects.filter(project=project_a).exists()


# --- the flags page ----------------------------------------------------------------------------


def test_the_flags_page_lists_what_was_flagged_newest_first(client_for, alice, bob, project_a):
    flag(project_a, "first words", user_id=bob.pk)
    flag(project_a, "<b>second</b> words", source=ModerationFlag.Source.GATEWAY)
    flag(ProjectFactory(organization=project_a.organization), "another project's words")

    response = client_for(alice).get(page("moderation_flags", project_a))

    assert response.status_code == 200
    body = response.content.decode()
    assert body.index("&lt;b&gt;second&lt;/b&gt; words") < body.index("first words")
    assert 'Bob<div class="muted">bob@example.com</div>' in body
    assert "/v1 API" in body  # the source, in words
    assert "violence" in body
    assert "omni-moderation-latest" in body
    assert "another project" not in body


def test_the_flags_page_is_paginated(client_for, alice, project_a):
    for n in range(51):
        flag(project_a, f"flag number {n}.")

    client = client_for(alice)
    first = client.get(page("moderation_flags", project_a)).content.decode()
    second = client.get(page("moderation_flags", project_a), {"page": 2}).content.decode()

    assert "flag number 50." in first
    assert "flag number 1." in first
    assert "flag number 0." not in first
    assert "flag number 0." in second
    assert "Page 2 of 2" in second


# --- REST ----------------------------------------------------------------------------------------


def test_a_manager_reads_and_changes_the_settings(client_for, alice, project_a, fake_upstream):
    serve(project_a, fake_upstream, "fake-gpt")
    client = client_for(alice)

    before = client.get(api("api-moderation", project_a))
    changed = patch_json(
        client, api("api-moderation", project_a), {"enabled": True, "patterns": "spam: buy now"}
    )
    partly = patch_json(client, api("api-moderation", project_a), {"check_replies": True})

    assert before.status_code == 200
    assert before.json()["enabled"] is False
    assert before.json()["moderation_model"] == "omni-moderation-latest"
    assert {"model": "fake-gpt", "connection": "Fake upstream", "checked_by": "patterns"} in (
        before.json()["models"]
    )
    assert changed.status_code == 200
    assert (changed.json()["enabled"], changed.json()["patterns"]) == (True, "spam: buy now")
    assert partly.json() | {"models": None} == {
        "enabled": True,
        "check_replies": True,
        "patterns": "spam: buy now",
        "moderation_model": "omni-moderation-latest",
        "models": None,
    }
    assert moderation.config_for(project_a.pk).check_replies is True


def test_a_bad_list_or_an_unknown_field_is_refused_naming_it(client_for, alice, project_a):
    client = client_for(alice)

    bad = patch_json(client, api("api-moderation", project_a), {"patterns": "ok: x\nbad: ["})
    unknown = patch_json(client, api("api-moderation", project_a), {"enable": True})

    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "patterns"
    assert bad.json()["error"]["message"].startswith("Line 2: not a valid regular expression")
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "enable"
    assert not ChatSettings.objects.filter(project=project_a).exists()


def test_a_manager_lists_the_flags(client_for, alice, bob, project_a):
    flag(project_a, "older", user_id=bob.pk)
    newest = flag(project_a, "newest", source=ModerationFlag.Source.GATEWAY)

    response = client_for(alice).get(api("api-moderation-flags", project_a))

    assert response.status_code == 200
    data = response.json()
    assert data["count"] == 2
    first = data["results"][0]
    assert (first["id"], first["source"], first["excerpt"]) == (newest.pk, "gateway", "newest")
    assert (first["categories"], first["checked_by"]) == (
        ["violence"],
        "connection:omni-moderation-latest",
    )
    assert data["results"][1]["user"] == bob.pk


def test_members_keys_and_outsiders_are_refused(
    client, client_for, alice, bob, charlie, org_a, project_a
):
    flag(project_a)
    key = make_key(alice, org_a, project_a, ["chat", "read"])
    urls = [api("api-moderation", project_a), api("api-moderation-flags", project_a)]

    for url in urls:
        member = client_for(bob).get(url)
        outsider = client_for(charlie).get(url)
        keyed = client.get(url, HTTP_AUTHORIZATION=f"Bearer {key}")
        assert member.status_code == 403
        assert member.json()["error"]["code"] == "forbidden"
        assert outsider.status_code == 404
        assert keyed.status_code == 403
        assert keyed.json()["error"]["code"] == "keys_not_allowed"
    refused = patch_json(client_for(bob), urls[0], {"enabled": True})
    assert refused.status_code == 403
    assert patch_json(client_for(charlie), urls[0], {"enabled": True}).status_code == 404
    assert not ChatSettings.objects.filter(project=project_a).exists()


# --- the admin ---------------------------------------------------------------------------------


@pytest.fixture
def staff(client):
    from tests.factories import UserFactory

    client.force_login(UserFactory(email="staff@example.com", is_staff=True, is_superuser=True))
    return client


def test_staff_read_flags_but_never_add_or_change_them(staff, project_a):
    flagged = flag(project_a, "staff may read this")

    listing = staff.get(reverse("admin:chat_moderationflag_changelist"), {"source": "chat"})
    change = staff.get(reverse("admin:chat_moderationflag_change", args=[flagged.pk]))
    searched = staff.get(reverse("admin:chat_moderationflag_changelist"), {"q": "read this"})

    assert listing.status_code == 200
    assert "staff may read this" in change.content.decode()
    assert 'name="_save"' not in change.content.decode()  # a view, not a form
    assert "1 moderation flag" in searched.content.decode()
    assert staff.get(reverse("admin:chat_moderationflag_add")).status_code == 403


def test_the_admin_refuses_a_bad_pattern_list(staff, project_a):
    response = staff.post(
        reverse("admin:chat_chatsettings_add"),
        {"project": project_a.pk, "moderation_enabled": "on", "moderation_patterns": "x: ("},
    )

    assert response.status_code == 200  # the form again, with the error
    assert "Line 1: not a valid regular expression" in response.content.decode()
    assert not ChatSettings.objects.exists()


def test_the_admin_never_shows_a_tool_servers_headers(staff, project_a):
    from chat.models import ToolServer
    from providers.crypto import encrypt

    token = encrypt(json.dumps({"Authorization": "Bearer s3cret-header"}))
    server = ToolServer.objects.create(
        project=project_a,
        name="Weather",
        url="https://tools.example.com/mcp",
        headers_encrypted=token,
        header_names="Authorization",
    )

    body = staff.get(reverse("admin:chat_toolserver_change", args=[server.pk])).content.decode()

    assert "Authorization" in body
    assert token not in body
    assert "s3cret-header" not in body
