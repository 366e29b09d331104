"""A conversation's and a persona's JSON schema and tools: set on the settings form, the persona
form and over REST, checked by the services (valid JSON Schema of an object; tools the project
offers; a model that can use them), and disabled with the reason where the model cannot."""

from __future__ import annotations

import html
import json

import pytest
from django.urls import reverse

from chat import personas, services
from chat.actors import Actor
from chat.forms import ConversationSettingsForm, PersonaForm
from chat.models import Conversation, Persona
from providers.models import ConnectionModel
from tests.chat.conftest import make_key, serve

pytestmark = pytest.mark.django_db

CITY = {
    "name": "city",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    },
}


def can(project, model: str, *, json: bool = False, tools: bool = False) -> None:
    """Mark what ``model`` can do (saved, so what is kept in memory of it is dropped)."""
    row = ConnectionModel.objects.get(name=model, connection__project=project)
    row.supports_json, row.supports_tools = json, tools
    row.save()


@pytest.fixture
def served(project_a, fake_upstream):
    """fake-gpt can answer in JSON and call tools; plain-gpt can do neither."""
    serve(project_a, fake_upstream, "fake-gpt", "plain-gpt")
    can(project_a, "fake-gpt", json=True, tools=True)
    return project_a


def chat_of(user, project, model: str = "fake-gpt") -> Conversation:
    return services.conversation_create(actor=Actor(user=user), project=project, model=model)


def conversation_api(project, pk: int | None = None) -> str:
    if pk is None:
        return reverse("api-conversations", kwargs={"project_id": project.pk})
    return reverse("api-conversation", kwargs={"project_id": project.pk, "conversation_id": pk})


def persona_api(project, pk: int | None = None) -> str:
    if pk is None:
        return reverse("api-personas", kwargs={"project_id": project.pk})
    return reverse("api-persona", kwargs={"project_id": project.pk, "persona_id": pk})


def send(client, method: str, url: str, body: dict, **extra):
    return getattr(client, method)(
        url, data=json.dumps(body), content_type="application/json", **extra
    )


# --- REST: conversations ----------------------------------------------------------------------


def test_rest_sets_a_schema_and_tools_and_shows_them(served, alice, org_a, client):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {make_key(alice, org_a, served, ['chat', 'read'])}"}
    created = send(client, "post", conversation_api(served), {"model": "fake-gpt"}, **auth)
    assert created.json()["json_schema"] is None
    assert created.json()["tools"] == []

    patched = send(
        client,
        "patch",
        conversation_api(served, created.json()["id"]),
        {"json_schema": CITY, "tools": ["calculator", "convert_units", "calculator"]},
        **auth,
    )

    assert patched.status_code == 200, patched.content
    assert patched.json()["json_schema"] == CITY
    assert patched.json()["tools"] == ["calculator", "convert_units"]  # once each, in order
    stored = Conversation.objects.get(pk=created.json()["id"])
    assert (stored.json_schema, stored.tools) == (CITY, ["calculator", "convert_units"])
    shown = client.get(conversation_api(served, stored.pk), **auth).json()
    assert (shown["json_schema"], shown["tools"]) == (CITY, ["calculator", "convert_units"])

    cleared = send(
        client, "patch", conversation_api(served, stored.pk), {"json_schema": None}, **auth
    )
    assert cleared.json()["json_schema"] is None
    assert cleared.json()["tools"] == ["calculator", "convert_units"]  # left alone


def test_rest_starts_a_conversation_with_a_schema(served, alice, client_for):
    created = send(
        client_for(alice),
        "post",
        conversation_api(served),
        {"model": "fake-gpt", "json_schema": CITY, "tools": ["current_datetime"]},
    )

    assert created.status_code == 201, created.content
    assert created.json()["json_schema"] == CITY
    assert created.json()["tools"] == ["current_datetime"]


@pytest.mark.parametrize(
    ("change", "param", "code", "words"),
    [
        (
            {"json_schema": {"name": "city", "schema": {"type": 12}}},
            "json_schema",
            "invalid_json_schema",
            "Not valid JSON Schema at $.type",
        ),
        (
            {"json_schema": {"name": "city", "schema": {"type": "array"}}},
            "json_schema",
            "invalid_json_schema",
            "must describe an object",
        ),
        (
            {"json_schema": {"name": "no spaces please", "schema": CITY["schema"]}},
            "json_schema",
            "invalid_json_schema",
            "needs a name",
        ),
        ({"json_schema": "{not json"}, "json_schema", "invalid_json_schema", "not valid JSON"),
        ({"tools": ["rm_rf"]}, "tools", "invalid_tools", "Unknown tool 'rm_rf'"),
    ],
)
def test_rest_refuses_a_bad_schema_or_tool_naming_it(
    served, alice, client_for, change, param, code, words
):
    conversation = chat_of(alice, served)

    refused = send(client_for(alice), "patch", conversation_api(served, conversation.pk), change)

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert words in error["message"]
    conversation.refresh_from_db()
    assert (conversation.json_schema, conversation.tools) == (None, [])


def test_a_model_without_json_refuses_a_schema_and_one_without_tools_refuses_tools(
    served, alice, client_for
):
    conversation = chat_of(alice, served, "plain-gpt")
    client = client_for(alice)

    schema = send(client, "patch", conversation_api(served, conversation.pk), {"json_schema": CITY})
    tools = send(
        client, "patch", conversation_api(served, conversation.pk), {"tools": ["calculator"]}
    )

    assert schema.status_code == 400
    assert schema.json()["error"]["code"] == "invalid_json_schema"
    assert schema.json()["error"]["param"] == "json_schema"
    assert "plain-gpt cannot answer in JSON" in schema.json()["error"]["message"]
    assert tools.status_code == 400
    assert tools.json()["error"]["code"] == "tools_not_supported"
    assert tools.json()["error"]["param"] == "tools"


def test_tools_must_be_a_list(served, alice, client_for):
    refused = send(
        client_for(alice), "post", conversation_api(served), {"model": "fake-gpt", "tools": "all"}
    )

    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "tools"


def test_an_outsider_cannot_reach_the_conversation(served, alice, charlie, client_for):
    conversation = chat_of(alice, served)

    answer = send(
        client_for(charlie), "patch", conversation_api(served, conversation.pk), {"tools": []}
    )

    assert answer.status_code == 404


# --- the settings form ------------------------------------------------------------------------


def settings_form(project, conversation: Conversation, data: dict | None = None):
    return ConversationSettingsForm(
        data,
        models=["fake-gpt", "plain-gpt"],
        project=project,
        conversation=conversation,
    )


def form_data(**fields) -> dict:
    return {"model": "fake-gpt", "system_prompt": "", **fields}


def test_the_form_shows_the_schema_pretty_printed_and_the_projects_tools(served, alice):
    conversation = chat_of(alice, served)
    conversation.json_schema, conversation.tools = CITY, ["calculator"]
    conversation.save()

    form = settings_form(served, conversation)

    textarea = html.unescape(str(form["json_schema"]))
    shown = textarea[textarea.index(">") + 1 : textarea.rindex("</textarea>")].strip()
    assert json.loads(shown) == CITY
    assert '\n  "schema": {\n    "type": "object",' in shown  # pretty-printed, indent 2
    choices = dict(form.fields["tools"].choices)
    assert list(choices) == [
        "calculator",
        "current_datetime",
        "search_conversations",
        "convert_units",
    ]
    assert choices["calculator"].startswith("Calculator: Arithmetic")
    assert 'value="calculator" checked' in str(form["tools"]).replace('id="id_tools_0" ', "")
    assert not form.fields["tools"].disabled
    assert not form.fields["json_schema"].disabled


def test_the_form_saves_a_schema_typed_as_json_and_the_tools_ticked(served, alice):
    conversation = chat_of(alice, served)
    form = settings_form(
        served,
        conversation,
        form_data(json_schema=json.dumps(CITY), tools=["convert_units", "calculator"]),
    )

    assert form.is_valid(), form.errors
    services.conversation_update(conversation=conversation, changes=form.cleaned_data)

    conversation.refresh_from_db()
    assert conversation.json_schema == CITY
    assert conversation.tools == ["convert_units", "calculator"]


def test_the_form_shows_what_is_wrong_with_the_schema_on_its_field(served, alice):
    conversation = chat_of(alice, served)
    bad = {"name": "city", "schema": {"type": "object", "properties": {"a": {"type": 3}}}}

    form = settings_form(served, conversation, form_data(json_schema=json.dumps(bad)))

    assert not form.is_valid()
    assert form.errors["json_schema"] == [
        "Not valid JSON Schema at $.properties.a.type: 3 is not valid under any of the given "
        "schemas"
    ]


def test_the_form_refuses_a_tool_the_project_does_not_offer(served, alice):
    form = settings_form(served, chat_of(alice, served), form_data(tools=["mcp:999"]))

    assert not form.is_valid()
    assert "tools" in form.errors


def test_what_the_model_cannot_use_is_disabled_with_the_reason(served, alice):
    conversation = chat_of(alice, served, "plain-gpt")

    form = settings_form(served, conversation)

    for name in ("json_mode", "json_schema"):
        assert form.fields[name].disabled
        assert form.fields[name].help_text == (
            "plain-gpt cannot answer in JSON: pick a model that can, in the model menu."
        )
    assert form.fields["tools"].disabled
    assert form.fields["tools"].help_text == (
        "plain-gpt cannot call tools: pick a model that can, in the model menu."
    )
    assert "disabled" in str(form["json_schema"])


def test_the_built_in_model_says_why_it_calls_no_tools(served, alice):
    from providers.llm.catalog import LOCAL_MODEL_NAME

    conversation = chat_of(alice, served, LOCAL_MODEL_NAME)

    form = ConversationSettingsForm(
        models=[LOCAL_MODEL_NAME], project=served, conversation=conversation
    )

    assert form.fields["tools"].disabled
    assert form.fields["tools"].help_text == (
        "The built-in model is too small to call tools reliably: pick a larger model, in the "
        "model menu."
    )
    assert not form.fields["json_schema"].disabled  # grammars make it answer in JSON


def test_a_disabled_setting_is_saved_empty_whatever_is_posted(served, alice):
    conversation = chat_of(alice, served, "plain-gpt")
    # Set before the model lost its abilities: the model cannot use them now.
    Conversation.objects.filter(pk=conversation.pk).update(
        json_schema=CITY, tools=["calculator"], json_mode=True
    )
    conversation.refresh_from_db()

    form = settings_form(
        served,
        conversation,
        form_data(
            model="plain-gpt", json_schema=json.dumps(CITY), tools=["calculator"], json_mode="on"
        ),
    )

    assert form.is_valid(), form.errors
    assert (form.cleaned_data["json_schema"], form.cleaned_data["tools"]) == (None, [])
    services.conversation_update(conversation=conversation, changes=form.cleaned_data)
    conversation.refresh_from_db()
    assert (conversation.json_schema, conversation.tools, conversation.json_mode) == (
        None,
        [],
        False,
    )


def test_a_tool_the_project_no_longer_offers_stays_listed_to_untick(served, alice):
    conversation = chat_of(alice, served)
    Conversation.objects.filter(pk=conversation.pk).update(tools=["mcp:404"])
    conversation.refresh_from_db()

    form = settings_form(served, conversation)

    assert dict(form.fields["tools"].choices)["mcp:404"] == "mcp:404 (no longer available)"


def test_the_settings_page_saves_a_schema(served, alice, client_for):
    conversation = chat_of(alice, served)
    url = reverse(
        "conversation_settings", args=[served.organization.slug, served.slug, conversation.pk]
    )

    client_for(alice).post(url, form_data(json_schema=json.dumps(CITY, indent=2)))

    conversation.refresh_from_db()
    assert conversation.json_schema == CITY


# --- personas ---------------------------------------------------------------------------------


def test_a_persona_takes_a_schema_and_tools_over_rest(served, alice, client_for):
    client = client_for(alice)

    created = send(
        client,
        "post",
        persona_api(served),
        {
            "name": "Census",
            "tag": "census",
            "model": "fake-gpt",
            "json_schema": CITY,
            "tools": ["calculator"],
        },
    )

    assert created.status_code == 201, created.content
    assert (created.json()["json_schema"], created.json()["tools"]) == (CITY, ["calculator"])
    changed = send(client, "patch", persona_api(served, created.json()["id"]), {"tools": []})
    assert changed.json()["tools"] == []
    assert changed.json()["json_schema"] == CITY


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "plain-gpt", "json_schema": CITY}, "json_schema", "invalid_json_schema"),
        ({"model": "plain-gpt", "tools": ["calculator"]}, "tools", "tools_not_supported"),
        ({"json_schema": {"name": "x", "schema": {"type": "nope"}}}, "json_schema", None),
        ({"tools": ["calculator", "teleport"]}, "tools", "invalid_tools"),
    ],
)
def test_a_persona_is_refused_what_its_model_cannot_use(
    served, alice, client_for, body, param, code
):
    created = send(
        client_for(alice), "post", persona_api(served), {"name": "P", "tag": "p", **body}
    )

    assert created.status_code == 400
    assert created.json()["error"]["param"] == param
    if code is not None:
        assert created.json()["error"]["code"] == code
    assert not Persona.objects.filter(project=served, tag="p").exists()


def test_a_persona_on_the_default_model_may_ask_for_anything(served):
    persona = personas.persona_create(
        project=served,
        changes={"name": "P", "tag": "p", "json_schema": CITY, "tools": ["calculator"]},
    )

    assert (persona.json_schema, persona.tools) == (CITY, ["calculator"])


def test_moving_a_persona_to_a_model_that_cannot_is_refused(served):
    persona = personas.persona_create(
        project=served,
        changes={"name": "P", "tag": "p", "model": "fake-gpt", "tools": ["calculator"]},
    )

    with pytest.raises(services.ServiceError) as caught:
        personas.persona_update(persona=persona, changes={"model": "plain-gpt"})

    assert caught.value.code == "tools_not_supported"
    assert Persona.objects.get(pk=persona.pk).model == "fake-gpt"


def page(name: str, project, *args) -> str:
    return reverse(name, args=[project.organization.slug, project.slug, *args])


def edit_data(persona: Persona, **fields) -> dict:
    data = {
        "name": persona.name,
        "tag": persona.tag,
        "avatar": persona.avatar,
        "color": persona.color,
        "description": persona.description,
        "system_prompt": persona.system_prompt,
        "model": persona.model,
        "sampling": "",
        "enabled": "on",
        **fields,
    }
    return {name: value for name, value in data.items() if value is not None}


def test_the_persona_page_sets_a_schema_and_tools(served, alice, client_for):
    census = personas.persona_create(
        project=served, changes={"name": "Census", "tag": "census", "model": "fake-gpt"}
    )
    client = client_for(alice)

    shown = client.get(page("persona_edit", served, census.pk)).content.decode()
    saved = client.post(
        page("persona_edit", served, census.pk),
        edit_data(census, json_schema=json.dumps(CITY), tools=["calculator", "current_datetime"]),
    )

    assert 'name="json_schema"' in shown
    assert 'type="checkbox" name="tools" value="calculator"' in shown
    assert 'role="group" aria-labelledby="id_tools_label"' in shown
    assert saved.status_code == 302
    census.refresh_from_db()
    assert (census.json_schema, census.tools) == (CITY, ["calculator", "current_datetime"])


def test_the_persona_page_shows_a_bad_schema_on_its_field(served, alice, client_for):
    census = personas.persona_create(
        project=served, changes={"name": "Census", "tag": "census", "model": "fake-gpt"}
    )

    answer = client_for(alice).post(
        page("persona_edit", served, census.pk), edit_data(census, json_schema='{"name": "x"}')
    )

    assert answer.status_code == 400
    body = answer.content.decode()
    assert "The JSON schema needs a schema: the JSON Schema replies must match." in body
    assert "{&quot;name&quot;: &quot;x&quot;}" in body  # what was typed comes back


def test_the_persona_form_disables_what_its_model_cannot_use(served):
    plain = personas.persona_create(
        project=served, changes={"name": "Plain", "tag": "plain", "model": "plain-gpt"}
    )
    default = personas.persona_create(project=served, changes={"name": "D", "tag": "d"})

    form = PersonaForm(models=["fake-gpt", "plain-gpt"], persona=plain)
    on_default = PersonaForm(models=["fake-gpt", "plain-gpt"], persona=default)

    assert form.fields["tools"].disabled
    assert form.fields["tools"].help_text == (
        "plain-gpt cannot call tools: pick a model that can, above."
    )
    assert form.fields["json_schema"].disabled
    assert not on_default.fields["tools"].disabled
    assert not on_default.fields["json_schema"].disabled


def test_an_outsider_gets_404_on_the_persona(served, charlie, client_for):
    census = personas.persona_create(
        project=served, changes={"name": "Census", "tag": "census", "model": "fake-gpt"}
    )

    client = client_for(charlie)

    assert client.get(page("persona_edit", served, census.pk)).status_code == 404
    assert send(client, "patch", persona_api(served, census.pk), {"tools": []}).status_code == 404
