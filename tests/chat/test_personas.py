"""Personas: the shipped ones every project starts with, tags, the pages, REST, and chats that
start as a persona.

alice owns org A (a manager), bob is a plain member of it, charlie owns org B and must see
nothing of A.
"""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from accounts.models import Project
from chat import services
from chat.actors import Actor
from chat.models import Conversation, Persona
from chat.personas import (
    PRESETS,
    normalize_tag,
    parse_mention,
    persona_create,
    personas_seed,
)
from core.errors import ServiceError
from tests.chat.conftest import fake_connection, make_key, serve
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db

SHIPPED_TAGS = {preset.tag for preset in PRESETS}


def persona(project: Project, tag: str) -> Persona:
    return Persona.objects.for_project(project).get(tag=tag)


def page(name: str, project: Project, *args) -> str:
    return reverse(name, args=[project.organization.slug, project.slug, *args])


def api(name: str, project: Project, **kwargs) -> str:
    return reverse(name, kwargs={"project_id": project.pk, **kwargs})


def form_data(**fields) -> dict:
    """A persona form as the browser sends it (unticked boxes are left out)."""
    data = {
        "name": "Poet",
        "tag": "@Poet",
        "avatar": "🪶",
        "color": "#aa3366",
        "description": "Answers in verse.",
        "system_prompt": "Answer every question as a short poem.",
        "model": "",
        "sampling": "",
        "temperature": "",
        "top_p": "",
        "presence_penalty": "",
        "frequency_penalty": "",
        "max_tokens": "",
        "enabled": "on",
        **fields,
    }
    return {name: value for name, value in data.items() if value is not None}


def edit_data(existing: Persona, **fields) -> dict:
    """The edit form as the page shows it for ``existing``, with ``fields`` changed."""
    values = {
        "name": existing.name,
        "tag": existing.tag,
        "avatar": existing.avatar,
        "color": existing.color,
        "description": existing.description,
        "system_prompt": existing.system_prompt,
        "model": existing.model,
        "sampling": "",
        "temperature": "" if existing.temperature is None else existing.temperature,
        "top_p": "" if existing.top_p is None else existing.top_p,
        "presence_penalty": "",
        "frequency_penalty": "",
        "max_tokens": "" if existing.max_tokens is None else existing.max_tokens,
        "json_mode": "on" if existing.json_mode else None,
        "enabled": "on" if existing.enabled else None,
        **fields,
    }
    return {name: value for name, value in values.items() if value is not None}


# --- the shipped personas ----------------------------------------------------------------------


def test_it_gives_a_new_project_the_shipped_personas(project_a):
    tags = set(Persona.objects.for_project(project_a).values_list("tag", flat=True))

    assert tags == SHIPPED_TAGS
    assert {"chatbot", "summary", "요약", "translate", "번역", "json"} <= tags
    assert persona(project_a, "요약").enabled
    assert persona(project_a, "json").json_mode


def test_seeding_twice_adds_nothing(project_a):
    before = Persona.objects.for_project(project_a).count()

    assert personas_seed(project_a) == 0
    assert Persona.objects.for_project(project_a).count() == before


def test_seeding_again_brings_back_a_deleted_one_and_leaves_changes_alone(project_a):
    chatbot = persona(project_a, "chatbot")
    chatbot.name = "Our helper"
    chatbot.save()
    persona(project_a, "pirate").delete()

    assert personas_seed(project_a) == 1
    assert persona(project_a, "chatbot").name == "Our helper"
    assert persona(project_a, "pirate").preset == "pirate"


def test_each_project_has_its_own_personas(project_a, project_b):
    assert persona(project_a, "chatbot").pk != persona(project_b, "chatbot").pk
    assert not Persona.objects.for_project(ProjectFactory()).exclude(tag__in=SHIPPED_TAGS)


# --- tags ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("@ChatBot", "chatbot"),
        ("chatbot", "chatbot"),
        ("  @CHATBOT ", "chatbot"),
        # "@ChatBot" in full-width letters, as East Asian keyboards may type it.
        ("\uff20\uff23\uff48\uff41\uff54\uff22\uff4f\uff54", "chatbot"),
        ("@요약", "요약"),
        ("Straße", "strasse"),
        ("py-3_x", "py-3_x"),
    ],
)
def test_it_normalizes_tags(typed, stored):
    assert normalize_tag(typed) == stored


@pytest.mark.parametrize("typed", ["", "@", "two words", "a" * 33, "bad!tag", "@@x", 5, None])
def test_it_refuses_a_tag_that_is_not_one(typed):
    with pytest.raises(ServiceError) as refused:
        normalize_tag(typed)

    assert refused.value.param == "tag"
    assert refused.value.message


def test_a_tag_differing_only_in_case_is_taken(project_a):
    with pytest.raises(ServiceError) as refused:
        persona_create(project=project_a, changes={"name": "Another", "tag": "@ChatBot"})

    assert refused.value.code == "conflict"
    assert refused.value.param == "tag"
    assert "@chatbot" in refused.value.message


# --- mentions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("@chatbot what is a token?", "chatbot"),
        ("@ChatBot hi", "chatbot"),
        ("   @요약", "요약"),
        ("@번역 안녕하세요", "번역"),
    ],
)
def test_a_message_starting_with_a_tag_calls_its_persona(project_a, text, tag):
    found, typed = parse_mention(project=project_a, text=text)

    assert found == persona(project_a, tag)
    assert typed == tag


@pytest.mark.parametrize(
    "text",
    [
        "hello @chatbot",  # only at the start
        "mail alice@example.com about it",
        "alice@example.com",
        "@example.com is our domain",
        "@ 3pm then",
        "no tag at all",
    ],
)
def test_only_a_leading_tag_is_a_mention(project_a, text):
    assert parse_mention(project=project_a, text=text) == (None, None)


def test_an_unknown_tag_is_returned_without_a_persona(project_a):
    assert parse_mention(project=project_a, text="@Nobody are you there?") == (None, "nobody")


def test_a_mention_finds_the_persona_of_its_own_project(project_a, project_b):
    found, _ = parse_mention(project=project_b, text="@chatbot hi")

    assert found == persona(project_b, "chatbot")


# --- the pages: managers ------------------------------------------------------------------------


def test_everyone_in_the_project_sees_the_personas(client_for, alice, bob, project_a):
    for user in (alice, bob):
        response = client_for(user).get(page("personas", project_a))

        assert response.status_code == 200
        body = response.content.decode()
        assert "@chatbot" in body
        assert "@요약" in body
        assert "Balanced" in body  # the sampling preset the chatbot's numbers match


def test_a_manager_adds_a_persona(client_for, alice, project_a):
    response = client_for(alice).post(
        page("persona_new", project_a), form_data(sampling="creative", temperature="0.2")
    )

    assert response.status_code == 302
    assert response.url == page("personas", project_a)
    poet = persona(project_a, "poet")
    assert (poet.name, poet.avatar, poet.color) == ("Poet", "🪶", "#aa3366")
    # The preset picked wins over the numbers below it (the page's script fills them in).
    assert (poet.temperature, poet.top_p) == (1.1, 1.0)
    assert poet.enabled
    assert poet.preset == ""


def test_a_persona_can_have_its_own_sampling_numbers(client_for, alice, project_a):
    client_for(alice).post(
        page("persona_new", project_a),
        form_data(temperature="0.45", top_p="0.8", max_tokens="300", json_mode="on"),
    )

    poet = persona(project_a, "poet")
    assert (poet.temperature, poet.top_p, poet.max_tokens, poet.json_mode) == (
        0.45,
        0.8,
        300,
        True,
    )


def test_the_form_shows_what_was_wrong_and_keeps_what_was_typed(client_for, alice, project_a):
    response = client_for(alice).post(
        page("persona_new", project_a), form_data(tag="two words", name="Verse maker")
    )

    assert response.status_code == 400
    body = response.content.decode()
    assert "letters, digits" in body  # the tag's refusal, next to the field
    assert 'value="Verse maker"' in body
    assert "Answer every question as a short poem." in body
    assert not Persona.objects.for_project(project_a).filter(name="Verse maker").exists()


def test_a_duplicate_tag_is_shown_on_the_form(client_for, alice, project_a):
    response = client_for(alice).post(
        page("persona_new", project_a), form_data(tag="@ChatBot", name="Second bot")
    )

    assert response.status_code == 400
    body = response.content.decode()
    assert "already has a persona called @chatbot" in body
    assert 'value="Second bot"' in body
    assert Persona.objects.for_project(project_a).filter(tag="chatbot").count() == 1


def test_out_of_range_numbers_are_refused_on_their_field(client_for, alice, project_a):
    response = client_for(alice).post(page("persona_new", project_a), form_data(temperature="7"))

    assert response.status_code == 400
    assert "less than or equal to 2" in response.content.decode()


def test_a_manager_edits_a_persona(client_for, alice, project_a):
    chatbot = persona(project_a, "chatbot")

    response = client_for(alice).post(
        page("persona_edit", project_a, chatbot.pk),
        edit_data(chatbot, description="Our team's helper.", sampling="precise"),
    )

    assert response.status_code == 302
    chatbot.refresh_from_db()
    assert chatbot.description == "Our team's helper."
    assert (chatbot.temperature, chatbot.top_p) == (0.1, 0.9)


def test_the_edit_page_shows_the_persona(client_for, alice, project_a):
    summary = persona(project_a, "요약")

    response = client_for(alice).get(page("persona_edit", project_a, summary.pk))

    body = response.content.decode()
    assert response.status_code == 200
    assert 'value="요약"' in body
    assert '<option value="summary" selected' in body  # its numbers match the preset
    assert 'data-temperature="0.3"' in body


def test_a_model_the_project_dropped_does_not_block_other_changes(client_for, alice, project_a):
    chatbot = persona(project_a, "chatbot")
    Persona.objects.filter(pk=chatbot.pk).update(model="retired-model")
    chatbot.refresh_from_db()

    response = client_for(alice).post(
        page("persona_edit", project_a, chatbot.pk), edit_data(chatbot, name="Helper")
    )

    assert response.status_code == 302
    chatbot.refresh_from_db()
    assert (chatbot.name, chatbot.model) == ("Helper", "retired-model")


def test_a_model_the_project_does_not_offer_cannot_be_picked(client_for, alice, project_a):
    chatbot = persona(project_a, "chatbot")

    response = client_for(alice).post(
        page("persona_edit", project_a, chatbot.pk),
        edit_data(chatbot, name="Helper", model="no-such-model"),
    )

    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    chatbot.refresh_from_db()
    assert (chatbot.name, chatbot.model) == ("Chatbot", "")


def test_a_manager_turns_a_persona_off_and_on(client_for, alice, project_a):
    pirate = persona(project_a, "pirate")
    client = client_for(alice)
    url = page("persona_set_enabled", project_a, pirate.pk)

    response = client.post(url, {"enabled": "0"}, follow=True)
    pirate.refresh_from_db()
    assert not pirate.enabled
    assert "@pirate is off" in response.content.decode()

    client.post(url, {"enabled": "1"})
    pirate.refresh_from_db()
    assert pirate.enabled


def test_a_manager_deletes_a_persona(client_for, alice, project_a):
    pirate = persona(project_a, "pirate")
    client = client_for(alice)
    url = page("persona_delete", project_a, pirate.pk)

    confirm = client.get(url)
    assert confirm.status_code == 200
    assert "Delete Pirate coder?" in confirm.content.decode()

    response = client.post(url)
    assert response.status_code == 302
    assert not Persona.objects.filter(pk=pirate.pk).exists()


def test_another_projects_persona_is_a_404(client_for, alice, project_a, org_a):
    other = ProjectFactory(organization=org_a, name="Other", slug="other")

    response = client_for(alice).get(page("persona_edit", project_a, persona(other, "chatbot").pk))

    assert response.status_code == 404


# --- the pages: members and outsiders ----------------------------------------------------------


def test_a_member_sees_no_controls(client_for, bob, project_a):
    body = client_for(bob).get(page("personas", project_a)).content.decode()

    assert "New persona" not in body
    assert "Turn off" not in body
    assert page("persona_edit", project_a, persona(project_a, "chatbot").pk) not in body


def test_a_member_cannot_change_personas(client_for, bob, project_a):
    client = client_for(bob)
    chatbot = persona(project_a, "chatbot")

    assert client.get(page("persona_new", project_a)).status_code == 403
    assert client.post(page("persona_new", project_a), form_data()).status_code == 403
    edit = page("persona_edit", project_a, chatbot.pk)
    assert client.post(edit, edit_data(chatbot, name="Mine")).status_code == 403
    switch = page("persona_set_enabled", project_a, chatbot.pk)
    assert client.post(switch, {"enabled": "0"}).status_code == 403
    assert client.post(page("persona_delete", project_a, chatbot.pk)).status_code == 403

    chatbot.refresh_from_db()
    assert (chatbot.name, chatbot.enabled) == ("Chatbot", True)
    assert not Persona.objects.filter(tag="poet").exists()


def test_an_outsider_gets_404_on_every_persona_page(client_for, charlie, project_a):
    client = client_for(charlie)
    chatbot = persona(project_a, "chatbot")
    urls = [
        page("personas", project_a),
        page("persona_new", project_a),
        page("persona_edit", project_a, chatbot.pk),
        page("persona_delete", project_a, chatbot.pk),
    ]

    for url in urls:
        assert client.get(url).status_code == 404, url
        assert client.post(url, form_data()).status_code == 404, url
    assert client.post(page("persona_set_enabled", project_a, chatbot.pk)).status_code == 404
    assert Persona.objects.filter(pk=chatbot.pk, enabled=True).exists()


# --- a new chat as a persona --------------------------------------------------------------------


@pytest.fixture
def served(project_a, fake_upstream):
    serve(project_a, fake_upstream, "fake-gpt")
    return project_a


def test_a_new_chat_copies_the_personas_settings(alice, served):
    tutor = persona(served, "tutor")
    tutor.model = "fake-gpt"
    tutor.presence_penalty, tutor.frequency_penalty, tutor.max_tokens = 0.5, -0.5, 200
    tutor.save()

    conversation = services.conversation_create(
        actor=Actor(user=alice), project=served, persona=tutor
    )

    assert conversation.persona == tutor
    assert conversation.model == "fake-gpt"
    assert conversation.system_prompt == tutor.system_prompt
    assert (conversation.temperature, conversation.top_p) == (0.7, 1.0)
    assert (conversation.presence_penalty, conversation.frequency_penalty) == (0.5, -0.5)
    assert conversation.max_tokens == 200
    # Copied, not linked: changing the persona later leaves the chat as it started.
    tutor.system_prompt = "Changed."
    tutor.save()
    conversation.refresh_from_db()
    assert conversation.system_prompt != "Changed."


def test_a_persona_without_a_model_uses_the_projects_default(alice, served):
    conversation = services.conversation_create(
        actor=Actor(user=alice), project=served, persona=persona(served, "chatbot")
    )

    assert conversation.model == "smollm2-135m-instruct"


def test_a_model_asked_for_wins_over_the_personas(alice, served, fake_upstream):
    serve(served, fake_upstream, "other-model")
    tutor = persona(served, "tutor")
    tutor.model = "fake-gpt"
    tutor.save()

    conversation = services.conversation_create(
        actor=Actor(user=alice), project=served, model="other-model", persona=tutor
    )

    assert conversation.model == "other-model"


def test_a_persona_whose_model_is_gone_starts_on_the_default(alice, served):
    tutor = persona(served, "tutor")
    Persona.objects.filter(pk=tutor.pk).update(model="retired-model")
    tutor.refresh_from_db()

    conversation = services.conversation_create(
        actor=Actor(user=alice), project=served, persona=tutor
    )

    assert conversation.model == "smollm2-135m-instruct"
    assert conversation.system_prompt == tutor.system_prompt


def test_what_the_model_cannot_take_is_left_out(alice, served, fake_upstream):
    from providers.services import connection_model_add

    connection_model_add(
        actor=None,
        connection=fake_connection(served, fake_upstream),
        name="small-model",
        max_output_tokens=100,
        supports_json=False,
    )
    extract = persona(served, "extract")
    extract.model, extract.max_tokens = "small-model", 5000
    extract.save()

    conversation = services.conversation_create(
        actor=Actor(user=alice), project=served, persona=extract
    )

    assert conversation.max_tokens == 100
    assert conversation.json_mode is False


def test_json_mode_is_copied_where_the_model_has_it(alice, served):
    conversation = services.conversation_create(
        actor=Actor(user=alice), project=served, persona=persona(served, "json")
    )

    assert conversation.model == "smollm2-135m-instruct"
    assert conversation.json_mode is True


def test_a_disabled_persona_starts_no_chat(alice, served):
    pirate = persona(served, "pirate")
    pirate.enabled = False
    pirate.save()

    with pytest.raises(ServiceError) as refused:
        services.conversation_create(actor=Actor(user=alice), project=served, persona=pirate)

    assert refused.value.code == "persona_disabled"
    assert not Conversation.objects.exists()


def test_the_new_chat_form_offers_the_enabled_personas(client_for, bob, project_a):
    pirate = persona(project_a, "pirate")
    pirate.enabled = False
    pirate.save()

    body = client_for(bob).get(reverse("chat_home", args=["org-a", "project-a"])).content.decode()

    assert 'name="persona"' in body
    assert f'<option value="{persona(project_a, "chatbot").pk}">' in body
    assert f'<option value="{pirate.pk}">' not in body
    assert page("personas", project_a) in body


def test_a_member_starts_a_chat_as_a_persona(client_for, bob, served):
    translate = persona(served, "번역")

    response = client_for(bob).post(
        reverse("conversation_new", args=["org-a", "project-a"]), {"persona": translate.pk}
    )

    conversation = Conversation.objects.get()
    assert response.status_code == 302
    assert (conversation.owner, conversation.persona) == (bob, translate)
    assert conversation.system_prompt == translate.system_prompt
    assert (conversation.temperature, conversation.top_p) == (0.1, 0.9)


def test_a_chat_without_a_persona_is_as_before(client_for, bob, served):
    client_for(bob).post(reverse("conversation_new", args=["org-a", "project-a"]), {"persona": ""})

    conversation = Conversation.objects.get()
    assert conversation.persona is None
    assert conversation.temperature is None


def test_a_disabled_persona_is_refused_with_a_message(client_for, bob, served):
    pirate = persona(served, "pirate")
    pirate.enabled = False
    pirate.save()

    response = client_for(bob).post(
        reverse("conversation_new", args=["org-a", "project-a"]),
        {"persona": pirate.pk},
        follow=True,
    )

    assert "@pirate is turned off" in response.content.decode()
    assert not Conversation.objects.exists()


def test_another_projects_persona_starts_no_chat(client_for, bob, served, project_b):
    response = client_for(bob).post(
        reverse("conversation_new", args=["org-a", "project-a"]),
        {"persona": persona(project_b, "chatbot").pk},
    )

    assert response.status_code == 404
    assert not Conversation.objects.exists()


# --- REST ---------------------------------------------------------------------------------------


def post_json(client, url: str, body: dict):
    return client.post(url, data=json.dumps(body), content_type="application/json")


def patch_json(client, url: str, body: dict):
    return client.patch(url, data=json.dumps(body), content_type="application/json")


def error_of(response) -> dict:
    return response.json()["error"]


def test_a_key_reads_the_personas(client, alice, org_a, project_a):
    key = make_key(alice, org_a, project_a, ["read"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}

    listed = client.get(api("api-personas", project_a), **auth)

    assert listed.status_code == 200
    data = listed.json()
    assert data["count"] == len(PRESETS)
    chatbot = next(p for p in data["results"] if p["tag"] == "chatbot")
    assert chatbot["mention"] == "@chatbot"
    assert chatbot["sampling"] == "balanced"
    one = client.get(api("api-persona", project_a, persona_id=chatbot["id"]), **auth)
    assert one.json()["system_prompt"] == persona(project_a, "chatbot").system_prompt


def test_the_list_filters_by_enabled(client_for, bob, project_a):
    Persona.objects.filter(tag="pirate").update(enabled=False)
    client = client_for(bob)

    off = client.get(api("api-personas", project_a), {"enabled": "false"}).json()
    on = client.get(api("api-personas", project_a), {"enabled": "true"}).json()

    assert [p["tag"] for p in off["results"]] == ["pirate"]
    assert on["count"] == len(PRESETS) - 1


def test_a_key_never_writes_personas(client, alice, org_a, project_a):
    key = make_key(alice, org_a, project_a, ["chat", "read"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    chatbot = persona(project_a, "chatbot")
    one = api("api-persona", project_a, persona_id=chatbot.pk)

    created = client.post(
        api("api-personas", project_a),
        data=json.dumps({"name": "Bot", "tag": "bot"}),
        content_type="application/json",
        **auth,
    )
    changed = client.patch(
        one, data=json.dumps({"name": "X"}), content_type="application/json", **auth
    )
    deleted = client.delete(one, **auth)

    for response in (created, changed, deleted):
        assert response.status_code == 403
        assert error_of(response)["code"] == "keys_not_allowed"
    chatbot.refresh_from_db()
    assert chatbot.name == "Chatbot"


def test_a_member_reads_but_does_not_write(client_for, bob, project_a):
    client = client_for(bob)
    chatbot = persona(project_a, "chatbot")
    one = api("api-persona", project_a, persona_id=chatbot.pk)

    assert client.get(one).status_code == 200
    created = post_json(client, api("api-personas", project_a), {"name": "Bot", "tag": "bot"})
    assert created.status_code == 403
    assert error_of(created)["code"] == "forbidden"
    assert patch_json(client, one, {"enabled": False}).status_code == 403
    assert client.delete(one).status_code == 403
    assert Persona.objects.filter(pk=chatbot.pk, enabled=True).exists()


def test_a_manager_creates_updates_and_deletes_a_persona(client_for, alice, project_a):
    client = client_for(alice)

    created = post_json(
        client,
        api("api-personas", project_a),
        {"name": "Poet", "tag": "@Poet", "sampling": "creative", "max_tokens": 120},
    )
    assert created.status_code == 201, created.content
    data = created.json()
    assert (data["tag"], data["mention"], data["project"]) == ("poet", "@poet", project_a.pk)
    assert (data["temperature"], data["top_p"], data["sampling"]) == (1.1, 1.0, "creative")
    one = api("api-persona", project_a, persona_id=data["id"])

    changed = patch_json(client, one, {"temperature": 0.5, "enabled": False, "color": "#ABCDEF"})
    assert changed.status_code == 200, changed.content
    assert changed.json()["temperature"] == 0.5
    assert changed.json()["sampling"] is None
    assert changed.json()["enabled"] is False
    assert changed.json()["color"] == "#abcdef"
    assert changed.json()["name"] == "Poet"  # what was not sent is left alone

    assert client.delete(one).status_code == 204
    assert client.get(one).status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "Bot", "tag": "two words"}, "tag"),
        ({"name": "Bot", "tag": "a" * 40}, "tag"),
        ({"tag": "bot"}, "name"),
        ({"name": "Bot"}, "tag"),
        ({"name": "Bot", "tag": "bot", "temperature": 3}, "temperature"),
        ({"name": "Bot", "tag": "bot", "top_p": -1}, "top_p"),
        ({"name": "Bot", "tag": "bot", "max_tokens": 0}, "max_tokens"),
        ({"name": "Bot", "tag": "bot", "color": "red"}, "color"),
        ({"name": "Bot", "tag": "bot", "sampling": "wild"}, "sampling"),
        ({"name": "Bot", "tag": "bot", "temprature": 0.5}, "temprature"),
        ({"name": "Bot", "tag": "bot", "json_mode": "maybe"}, "json_mode"),
    ],
)
def test_invalid_input_names_its_field(client_for, alice, project_a, body, param):
    response = post_json(client_for(alice), api("api-personas", project_a), body)

    assert response.status_code == 400, response.content
    assert error_of(response)["param"] == param
    assert error_of(response)["message"]
    assert not Persona.objects.filter(tag="bot").exists()


def test_a_duplicate_tag_is_a_conflict(client_for, alice, project_a):
    client = client_for(alice)
    response = post_json(client, api("api-personas", project_a), {"name": "X", "tag": "ChatBot"})

    assert response.status_code == 409
    assert (error_of(response)["code"], error_of(response)["param"]) == ("conflict", "tag")

    summary = persona(project_a, "summary")
    renamed = patch_json(
        client, api("api-persona", project_a, persona_id=summary.pk), {"tag": "@요약"}
    )
    assert renamed.status_code == 409
    summary.refresh_from_db()
    assert summary.tag == "summary"


def test_a_model_the_project_does_not_allow_is_refused(client_for, alice, project_a):
    response = post_json(
        client_for(alice),
        api("api-personas", project_a),
        {"name": "Bot", "tag": "bot", "model": "no-such-model"},
    )

    assert response.status_code == 404
    assert error_of(response)["code"] == "model_not_found"


def test_another_projects_persona_is_a_404_over_rest(client_for, alice, org_a, project_a):
    other = ProjectFactory(organization=org_a, name="Other", slug="other")
    theirs = api("api-persona", project_a, persona_id=persona(other, "chatbot").pk)
    client = client_for(alice)

    assert client.get(theirs).status_code == 404
    assert patch_json(client, theirs, {"name": "X"}).status_code == 404
    assert client.delete(theirs).status_code == 404
    assert persona(other, "chatbot").name == "Chatbot"


def test_an_outsider_gets_404_over_rest(client_for, charlie, project_a):
    client = client_for(charlie)
    one = api("api-persona", project_a, persona_id=persona(project_a, "chatbot").pk)

    for response in (
        client.get(api("api-personas", project_a)),
        post_json(client, api("api-personas", project_a), {"name": "X", "tag": "x"}),
        client.get(one),
        patch_json(client, one, {"name": "X"}),
        client.delete(one),
    ):
        assert response.status_code == 404
        assert error_of(response)["code"] == "not_found"


def test_a_conversation_started_over_rest_copies_its_persona(
    client_for, alice, project_a, project_b, fake_upstream
):
    serve(project_a, fake_upstream)
    pirate = persona(project_a, "pirate")
    url = f"/api/v1/projects/{project_a.pk}/conversations/"
    client = client_for(alice)

    made = client.post(url, {"persona": pirate.pk}, content_type="application/json")

    assert made.status_code == 201, made.json()
    body = made.json()
    assert body["persona"] == pirate.pk
    assert body["system_prompt"] == pirate.system_prompt
    assert body["temperature"] == pirate.temperature
    other = persona(project_b, "pirate")
    refused = client.post(url, {"persona": other.pk}, content_type="application/json")
    assert refused.status_code == 404
    assert refused.json()["error"]["param"] == "persona"
    changed = client.patch(
        f"{url}{body['id']}/", {"persona": pirate.pk}, content_type="application/json"
    )
    assert changed.status_code == 400
    assert changed.json()["error"]["param"] == "persona"
