"""Structured output in the chat: a conversation's or persona's JSON schema is checked when it is
saved (valid JSON Schema of an object, its $refs inside it), every reply asked for as JSON is
checked against what was asked, and the page shows a valid one as formatted, copyable JSON and
an invalid one as its raw text under a note."""

from __future__ import annotations

import json
import re

import pytest
from django.utils import translation

from chat.markdown import HIGHLIGHT_CLASSES, render_markdown, render_reply_html
from chat.structured import (
    check_json_schema,
    check_reply,
    reason_text,
    response_format_for,
)
from core.errors import ServiceError

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
FORMAT = {"name": "city", "schema": CITY, "strict": True}
AS_SCHEMA = {"type": "json_schema", "json_schema": FORMAT}


def refusal(value: object) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        check_json_schema(value)
    assert caught.value.code == "invalid_json_schema"
    assert caught.value.param == "json_schema"
    return caught.value


# --- check_json_schema -------------------------------------------------------------------------


@pytest.mark.parametrize("empty", [None, "", "  \n"])
def test_it_reads_nothing_as_no_schema(empty):
    assert check_json_schema(empty) is None


def test_it_keeps_openais_json_schema_object():
    described = {**FORMAT, "description": "A city and how many live there."}

    assert check_json_schema(described) == described
    assert check_json_schema({"name": "n", "schema": {"type": "object"}}) == {
        "name": "n",
        "schema": {"type": "object"},
    }


def test_it_takes_the_json_text_a_form_sends():
    assert check_json_schema(json.dumps(FORMAT, indent=2)) == FORMAT


def test_refs_into_the_schema_itself_are_fine():
    schema = {
        "type": "object",
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}}}},
        "properties": {
            "a": {"$ref": "#/$defs/point"},
            "b": {"$ref": "#"},
            # A property named "$ref" is a property, not a reference.
            "$ref": {"type": "string"},
        },
    }

    assert check_json_schema({"name": "refs", "schema": schema})["schema"] == schema


def test_it_refuses_text_that_is_not_json():
    assert "not valid JSON: Expecting ',' delimiter at line 1 column 14" in (
        refusal('{"name": "a" "schema": {}}').message
    )


@pytest.mark.parametrize("value", ["[1, 2]", 42, ["name"], '"city"'])
def test_it_refuses_what_is_not_an_object(value):
    assert "an object with a name and a schema" in refusal(value).message


@pytest.mark.parametrize("name", ["", "has space", "ü", "x" * 65, 7, None])
def test_it_refuses_a_bad_name(name):
    assert "needs a name" in refusal({"name": name, "schema": {"type": "object"}}).message


def test_it_refuses_an_unknown_key_naming_it():
    assert "Unknown key in the JSON schema: type" in (
        refusal({"name": "a", "schema": {"type": "object"}, "type": "json_schema"}).message
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"strict": "yes"}, "strict must be true or false"),
        ({"description": 3}, "description must be text"),
    ],
)
def test_it_refuses_strict_and_description_of_the_wrong_type(change, words):
    assert words in refusal({**FORMAT, **change}).message


def test_it_needs_the_schema():
    assert "needs a schema" in refusal({"name": "a"}).message


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": 12}, "Not valid JSON Schema at $.type: 12 is not valid under any"),
        (
            {"type": "object", "properties": {"age": {"type": "integr"}}},
            "Not valid JSON Schema at $.properties.age.type: 'integr' is not valid",
        ),
        ({"type": "object", "required": "age"}, "at $.required: 'age' is not of type 'array'"),
        ({"type": "object", "minProperties": -1}, "at $.minProperties: -1 is less than"),
    ],
)
def test_it_refuses_invalid_json_schema_naming_the_path(schema, words):
    assert words in refusal({"name": "a", "schema": schema}).message


@pytest.mark.parametrize("schema", [{"type": "string"}, {"type": "array"}, {}, [], "object"])
def test_the_schema_must_describe_an_object(schema):
    message = refusal({"name": "a", "schema": schema}).message

    assert "must describe an object" in message or "must be a JSON object" in message


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("https://example.com/schema.json", "may only point into the schema itself"),
        ("other.json#/x", "may only point into the schema itself"),
        ("#/$defs/missing", "points to nothing in the schema"),
    ],
)
def test_a_ref_must_point_into_the_schema(ref, words):
    schema = {"type": "object", "properties": {"a": {"$ref": ref}}}

    message = refusal({"name": "a", "schema": schema}).message

    assert words in message
    assert "$.properties.a" in message


def test_an_unknown_draft_is_refused_without_a_warning():
    schema = {"$schema": "https://example.com/my-draft", "type": "object"}

    assert "Unknown $schema" in refusal({"name": "a", "schema": schema}).message


def test_a_schema_too_long_is_refused():
    schema = {"type": "object", "description": "x" * 100_001}

    assert "too long" in refusal({"name": "a", "schema": schema}).message


# --- response_format_for -----------------------------------------------------------------------


def test_the_schema_wins_over_json_mode():
    assert response_format_for(json_mode=True, json_schema=FORMAT) == AS_SCHEMA
    assert response_format_for(json_mode=True, json_schema=None) == {"type": "json_object"}
    assert response_format_for(json_mode=False, json_schema=None) is None


# --- check_reply -------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", [None, {"type": "text"}])
def test_a_reply_not_asked_for_as_json_is_not_checked(response_format):
    assert check_reply("not json at all", response_format) == (None, "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', (True, "")),
        (' \n{"a": [1, {"b": null}]}\n', (True, "")),
        ('{"a" 1}', (False, "Not valid JSON: Expecting ':' delimiter at line 1 column 6")),
        ('{"a": tru}', (False, "Not valid JSON: Expecting value at line 1 column 7")),
        ("", (False, "Not valid JSON: Expecting value at line 1 column 1")),
        ('```json\n{"a": 1}\n```', (False, "Not valid JSON: Expecting value at line 1 column 1")),
        ('{"a": NaN}', (False, "Not valid JSON: NaN is not JSON")),
        ("[1, 2]", (False, "Not a JSON object: the reply is an array at $")),
        ('"text"', (False, "Not a JSON object: the reply is a string at $")),
    ],
)
def test_json_mode_wants_one_json_object(text, expected):
    assert check_reply(text, {"type": "json_object"}) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ({"city": "Seoul", "population": 9_400_000}, (True, "")),
        (
            {"city": "Seoul"},
            (False, "Does not match the schema: 'population' is a required property at $"),
        ),
        (
            {"city": "Seoul", "population": "many"},
            (False, "Does not match the schema: 'many' is not of type 'integer' at $.population"),
        ),
        (
            {"city": "Seoul", "population": 1, "mayor": "x"},
            (
                False,
                "Does not match the schema: Additional properties are not allowed ('mayor' was "
                "unexpected) at $",
            ),
        ),
    ],
)
def test_a_schema_reply_must_match_the_schema(reply, expected):
    assert check_reply(json.dumps(reply), AS_SCHEMA) == expected


def test_a_schema_reply_that_is_not_json_says_so():
    assert check_reply('{"city": "Seoul", population: 3}', AS_SCHEMA) == (
        False,
        "Not valid JSON: Expecting property name enclosed in double quotes at line 1 column 19",
    )


def test_a_reason_is_at_most_300_characters():
    schema = {"type": "object", "properties": {"a": {"enum": ["x" * 400]}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}

    valid, reason = check_reply('{"a": "y"}', response_format)

    assert valid is False
    assert reason.startswith("Does not match the schema: 'y' is not one of")
    assert len(reason) == 300
    assert reason.endswith("…")


def test_a_schema_that_cannot_be_applied_marks_the_reply_unchecked():
    # Saved before the checks existed: its $ref points nowhere.
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/gone"}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}

    valid, reason = check_reply('{"a": 1}', response_format)

    assert valid is False
    assert reason.startswith("Could not be checked against the schema: ")


def test_a_reason_is_said_in_the_readers_language():
    assert reason_text("Not valid JSON: Expecting value at line 1 column 1") == (
        "Not valid JSON: Expecting value at line 1 column 1"
    )
    assert reason_text("") == "Not valid JSON."
    with translation.override("ko"):
        shown = reason_text("Does not match the schema: 'a' is a required property at $")
    assert shown.endswith(": 'a' is a required property at $")


# --- rendering ---------------------------------------------------------------------------------

SPAN = re.compile(r'<span class="([^"]*)">')


def test_a_reply_not_asked_for_as_json_is_markdown():
    text = "**Hi** `code`\n\n```python\nx = 1\n```"

    assert render_reply_html(text, json_valid=None) == render_markdown(text)


def test_a_valid_json_reply_is_pretty_printed_in_a_highlighted_copyable_block():
    html = render_reply_html('{"city":"서울","n":[1,2],"tag":"<b>"}', json_valid=True)

    assert html.startswith('<p class="msg-note"><span class="badge">JSON</span></p>')
    # The markup of a fenced ```json block: the page's copy button is added to it.
    assert '<pre><code class="language-json">' in html
    code = re.search(r'<code class="language-json">(.*)</code>', html, re.S)
    assert code is not None
    text = re.sub(r"<[^>]+>", "", code.group(1))
    assert text.strip() == (
        '{\n  "city": "서울",\n  "n": [\n    1,\n    2\n  ],\n  "tag": "&lt;b&gt;"\n}'
    )
    assert set(SPAN.findall(html)) - {"badge"} <= HIGHLIGHT_CLASSES
    assert '<span class="nt">"city"</span>' in html  # highlighted as JSON keys
    assert "<b>" not in html


def test_an_invalid_json_reply_keeps_its_raw_text_under_a_note():
    raw = '{"a" 1} <script>alert(1)</script>\n**not markdown**'

    html = render_reply_html(
        raw, json_valid=False, json_error="Not valid JSON: Expecting ':' delimiter"
    )

    assert html.startswith("<p class=\"msg-error\">Not valid JSON: Expecting ':' delimiter</p>")
    assert "<pre><code>" in html  # a plain block: copyable, not highlighted
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html
    assert "**not markdown**" in html  # kept as written, not rendered
    assert "<strong>" not in html


def test_an_invalid_reply_without_a_reason_still_says_it_is_not_json():
    html = render_reply_html("nope", json_valid=False)

    assert '<p class="msg-error">Not valid JSON.</p>' in html


def test_a_reply_marked_valid_that_does_not_parse_is_shown_raw():
    html = render_reply_html("{broken", json_valid=True)

    assert '<p class="msg-error">Not valid JSON.</p><pre><code>{broken</code></pre>' in html


def test_the_note_keeps_the_reason_in_another_language():
    with translation.override("ko"):
        html = render_reply_html("x", json_valid=False, json_error="Not valid JSON: Oops")

    assert html.endswith("<pre><code>x</code></pre>")
    assert ": Oops</p>" in html


def test_a_remote_ref_is_never_fetched(monkeypatch):
    # Saved before the checks existed. jsonschema's default registry would fetch it.
    fetched: list[object] = []
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: fetched.append(a))
    schema = {"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}

    valid, reason = check_reply('{"a": 1}', response_format)

    assert valid is False
    assert reason.startswith("Could not be checked against the schema: ")
    assert fetched == []
