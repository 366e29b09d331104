"""The built-in tools: what each answers, and what each refuses (as a ToolError the model is
told of). The conversation search is scoped to what the caller could read in the chat."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from accounts.models import ApiKey, Project
from chat.models import Conversation, Message
from chat.tools.base import ToolContext, ToolError
from chat.tools.builtin import (
    BUILTIN_TOOLS,
    Calculator,
    ConvertUnits,
    CurrentDatetime,
    calculate,
    search_messages,
)
from chat.tools.registry import Toolset
from tests.chat.conftest import make_key

NOBODY = ToolContext(project_id=1, user_id=None, api_key_id=None, conversation_id=None)


def run(tool, **arguments):
    return asyncio.run(tool.run(arguments, NOBODY))


# --- calculator -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "shown"),
    [
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("2 ** 10", "1024"),
        ("7 // 2", "3"),
        ("7 % 3", "1"),
        ("6 / 3", "2"),
        ("0.1 + 0.2", "0.3"),
        ("-(-3)", "3"),
        ("+5", "5"),
        ("sqrt(16) + abs(-2)", "6"),
        ("round(100 / 7, 3)", "14.286"),
        ("round(2.7)", "3"),
        ("min(3, 1, 2) + max(4, 9)", "10"),
        ("floor(2.5) + ceil(2.1)", "5"),
        ("log(8, 2)", "3"),
        ("log10(1000)", "3"),
        ("exp(0) + sin(0) + cos(0) + tan(0)", "2"),
        ("round(pi, 4)", "3.1416"),
        ("round(e, 3)", "2.718"),
        ("2 ** -1", "0.5"),
        ("3 \u00d7 4 \u2212 1 \u00f7 2", "11.5"),  # the signs people type
        ("123456789 * 987654321", "121932631112635269"),
        ("10 ** 400 // 10 ** 399", "10"),
    ],
)
def test_it_calculates(expression, shown):
    result = run(Calculator(), expression=expression)

    assert result.content == f"{expression} = {shown}"
    assert not result.is_error


def test_ints_stay_exact_ints():
    assert calculate("2 ** 100") == 1267650600228229401496703205376
    assert isinstance(calculate("2 ** 100"), int)


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("__import__('os').system('id')", "is not a function the calculator knows"),
        ("__import__('os')", "“__import__” is not a function"),
        ("(1).__class__.__bases__", "“Attribute” is not allowed"),
        ("open('/etc/passwd')", "“open” is not a function"),
        ("x + 1", "Unknown name “x”"),
        ("sqrt", "sqrt is a function"),
        ("'a' * 3", "Only numbers"),
        ("True + 1", "Only numbers"),
        ("1j * 2", "Only numbers"),
        ("[1, 2][0]", "is not allowed"),
        ("lambda: 1", "“Lambda” is not allowed"),
        ("1 if 2 else 3", "“IfExp” is not allowed"),
        ("1 < 2", "“Compare” is not allowed"),
        ("f'{1}'", "is not allowed"),
        ("min(*[1, 2])", "plain arguments only"),
        ("sqrt(x=4)", "plain arguments only"),
        ("sqrt(1, 2)", "sqrt() takes 1 to 1 arguments"),
        ("2 ^ 3", "write 2 ** 3"),
        ("1 << 2", "Only + - * / // % and ** are allowed"),
        ("~1", "Only + and - may stand"),
        ("import os", "not an arithmetic expression"),
        ("1 +", "not an arithmetic expression"),
        ("", "empty"),
        ("1 / 0", "Division by zero"),
        ("5 % 0", "Division by zero"),
        ("5 // 0", "Division by zero"),
        ("log(0)", "math domain error"),
        ("sqrt(-1)", "math domain error"),
        ("(-8) ** (1 / 3)", "not a real number"),
        ("(9 ** 9) ** 9 ** 9", "too large"),
        ("9 ** 9 ** 9", "too large"),
        ("10 ** 401", "too large"),
        ("9" * 450, "too large"),
        ("1.5 ** 10 ** 300", "too large"),
        ("exp(1000)", "too large"),
        ("1e308 * 10", "too large"),
        ("round(1.5, 100)", "round() takes a whole number of digits"),
        ("1" + "+1" * 120, "too long to evaluate"),
        ("-" * 300 + "1", "too long to evaluate"),
        ("(" * 300 + "1" + ")" * 300, "longer than 500 characters"),
    ],
)
def test_it_refuses_what_is_not_plain_arithmetic(expression, says):
    with pytest.raises(ToolError) as refused:
        calculate(expression)

    assert says in str(refused.value)


def test_a_refusal_reaches_the_model_as_an_error_result():
    toolset = Toolset([Calculator()])

    result = asyncio.run(
        toolset.run(
            name="calculator", arguments='{"expression": "__import__(\'os\')"}', context=NOBODY
        )
    )

    assert result.is_error
    assert "__import__" in result.content


# --- date and time ----------------------------------------------------------------------------


def at(moment: datetime) -> CurrentDatetime:
    return CurrentDatetime(now=lambda: moment)


def test_it_tells_the_date_time_weekday_and_offset_in_a_zone():
    tool = at(datetime(2026, 3, 1, 15, 30, tzinfo=UTC))  # a Sunday in UTC

    answer = json.loads(run(tool, time_zone="Asia/Seoul").content)

    assert answer == {
        "time_zone": "Asia/Seoul",
        "date": "2026-03-02",
        "time": "00:30:00",
        "weekday": "Monday",
        "utc_offset": "+09:00",
        "abbreviation": "KST",
        "iso": "2026-03-02T00:30:00+09:00",
    }


def test_it_follows_summer_time_and_half_hour_offsets():
    tool = at(datetime(2026, 7, 4, 12, 0, tzinfo=UTC))

    new_york = json.loads(run(tool, time_zone="America/New_York").content)
    kolkata = json.loads(run(tool, time_zone="Asia/Kolkata").content)

    assert (new_york["time"], new_york["utc_offset"], new_york["abbreviation"]) == (
        "08:00:00",
        "-04:00",
        "EDT",
    )
    assert (kolkata["time"], kolkata["utc_offset"]) == ("17:30:00", "+05:30")


def test_utc_is_the_default():
    tool = at(datetime(2026, 1, 1, 0, 0, tzinfo=UTC))

    answer = json.loads(run(tool).content)

    assert (answer["time_zone"], answer["date"], answer["weekday"]) == (
        "UTC",
        "2026-01-01",
        "Thursday",
    )


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", "x"])
def test_an_unknown_zone_is_refused_by_name(zone):
    with pytest.raises(ToolError) as refused:
        run(CurrentDatetime(), time_zone=zone)

    assert f"Unknown time zone “{zone}”" in str(refused.value)


# --- unit conversion --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (100, "degC", "degF", 212),
        (-40, "degF", "degC", -40),
        (0, "°C", "kelvin", 273.15),
        (300, "K", "degC", 26.85),
        (5, "km", "mile", 3.10685596119),
        (1, "kWh", "J", 3_600_000),
        (60, "mph", "km/h", 96.56064),
        (2, "lb", "kg", 0.90718474),
        (1, "ft**2", "m**2", 0.09290304),
    ],
)
def test_it_converts(value, source, target, expected):
    answer = json.loads(run(ConvertUnits(), value=value, **{"from": source, "to": target}).content)

    assert answer["result"] == pytest.approx(expected)
    assert answer["value"] == value


def test_it_names_its_units_in_the_text():
    answer = json.loads(run(ConvertUnits(), value=100, **{"from": "degC", "to": "degF"}).content)

    assert answer["text"] == "100 degree_Celsius = 212 degree_Fahrenheit"


@pytest.mark.parametrize(
    ("source", "target", "says"),
    [
        ("m", "s", "“m” ([length]) cannot be converted to “s” ([time])"),
        ("degC", "kg", "cannot be converted"),
        ("furlongz", "m", "Unknown unit “furlongz”"),
        ("m", "__import__", "Unknown unit “__import__”"),
        ("1e10 m", "m", "is not a unit"),
        ("m)(", "m", "is not a unit"),
        ("m**99999999", "km**99999999", "Unit exponents go up to 12"),
        ("m" * 65, "m", "A unit is 1 to 64 characters"),
        ("degC*m", "degF*s", "cannot be converted"),
    ],
)
def test_incompatible_or_unknown_units_are_refused_by_name(source, target, says):
    with pytest.raises(ToolError) as refused:
        run(ConvertUnits(), value=1, **{"from": source, "to": target})

    assert says in str(refused.value)


def test_an_overflowing_conversion_is_refused():
    with pytest.raises(ToolError, match="too large"):
        run(ConvertUnits(), value=1e308, **{"from": "km", "to": "mm"})


# --- search in the project's conversations ----------------------------------------------------


def chat(project: Project, owner, *lines: str, **fields) -> Conversation:
    conversation = Conversation.objects.create(
        project=project, owner=owner, model="fake-gpt", **fields
    )
    for number, line in enumerate(lines):
        Message.objects.create(
            conversation=conversation, role="user" if number % 2 == 0 else "assistant", content=line
        )
    return conversation


def context_of(project: Project, *, user=None, key: ApiKey | None = None, conversation=None):
    return ToolContext(
        project_id=project.pk,
        user_id=user.pk if user else None,
        api_key_id=key.pk if key else None,
        conversation_id=conversation.pk if conversation else None,
    )


def found(context: ToolContext, query: str, limit: int = 10) -> list[dict]:
    return search_messages(context=context, query=query, limit=limit)


@pytest.fixture
def chats(alice, bob, charlie, org_a, project_a, project_b):
    """alice's private chat, a room for the whole project, an API conversation, and charlie's
    own chat in org B: all of them talk about Jeju."""
    make_key(alice, org_a, project_a, ["chat", "read"])
    key = ApiKey.objects.get(project=project_a)
    return {
        "private": chat(project_a, alice, "Our Jeju trip budget is 2 million won", "Noted."),
        "room": chat(
            project_a, alice, "Jeju flights are on Friday", sharing=Conversation.Sharing.PROJECT
        ),
        "api": chat(project_a, None, "Jeju hotel list from the API", api_key=key),
        "other": chat(project_b, charlie, "Jeju in org B"),
        "key": key,
    }


@pytest.mark.django_db
def test_the_owner_finds_their_private_chat_and_the_rooms(alice, project_a, chats):
    results = found(context_of(project_a, user=alice), "jeju")

    assert {r["conversation_id"] for r in results} == {chats["private"].pk, chats["room"].pk}


@pytest.mark.django_db
def test_bob_cannot_find_alices_private_chat(bob, project_a, chats):
    results = found(context_of(project_a, user=bob), "jeju")

    assert [r["conversation_id"] for r in results] == [chats["room"].pk]
    assert found(context_of(project_a, user=bob), "budget") == []


@pytest.mark.django_db
def test_a_key_finds_only_the_api_conversations(project_a, chats):
    results = found(context_of(project_a, key=chats["key"]), "jeju")

    assert [r["conversation_id"] for r in results] == [chats["api"].pk]


@pytest.mark.django_db
def test_charlie_finds_nothing_of_org_a(charlie, project_a, project_b, chats):
    assert found(context_of(project_a, user=charlie), "jeju") == []
    # In his own project he finds his own chat, and only that.
    assert [r["conversation_id"] for r in found(context_of(project_b, user=charlie), "jeju")] == [
        chats["other"].pk
    ]


@pytest.mark.django_db
def test_a_key_of_another_project_finds_nothing(project_b, chats):
    assert found(context_of(project_b, key=chats["key"]), "jeju") == []


@pytest.mark.django_db
def test_a_revoked_key_finds_nothing(project_a, chats):
    from django.utils import timezone

    ApiKey.objects.filter(pk=chats["key"].pk).update(revoked_at=timezone.now())

    assert found(context_of(project_a, key=chats["key"]), "jeju") == []


@pytest.mark.django_db
def test_every_word_must_match_and_the_snippet_shows_it(alice, project_a, chats):
    [result] = found(context_of(project_a, user=alice), "BUDGET jeju")

    assert result["conversation_id"] == chats["private"].pk
    assert result["role"] == "user"
    assert result["snippet"] == "Our Jeju trip budget is 2 million won"
    assert result["date"].startswith(str(Message.objects.first().created_at.year))


@pytest.mark.django_db
def test_the_current_conversation_is_included_and_marked(alice, project_a, chats):
    context = context_of(project_a, user=alice, conversation=chats["room"])

    results = {r["conversation_id"]: r["current"] for r in found(context, "jeju")}

    assert results == {chats["room"].pk: True, chats["private"].pk: False}


@pytest.mark.django_db
def test_flagged_input_and_other_branches_are_left_out(alice, project_a, chats):
    conversation = chats["private"]
    Message.objects.create(conversation=conversation, role="user", content="Jeju", flagged=True)
    Message.objects.create(conversation=conversation, role="user", content="Jeju", on_path=False)

    results = found(context_of(project_a, user=alice), "jeju")

    assert len(results) == 2  # the private chat's first message and the room's


@pytest.mark.django_db
def test_a_long_message_gives_a_snippet_around_the_match(alice, project_a):
    chat(project_a, alice, "x" * 500 + " Hallasan " + "y" * 500)

    [result] = found(context_of(project_a, user=alice), "hallasan")

    assert result["snippet"].startswith("…")
    assert result["snippet"].endswith("…")
    assert "Hallasan" in result["snippet"]
    assert len(result["snippet"]) < 220


@pytest.mark.django_db
def test_the_limit_keeps_the_newest(alice, project_a):
    chat(project_a, alice, *[f"note {n} about Udo" for n in range(8)])

    results = found(context_of(project_a, user=alice), "udo", limit=3)

    assert [r["snippet"] for r in results] == [
        "note 7 about Udo",
        "note 6 about Udo",
        "note 5 about Udo",
    ]


@pytest.mark.django_db(transaction=True)
async def test_the_tool_searches_off_the_event_loop_through_the_toolset(alice, project_a):
    from channels.db import database_sync_to_async

    conversation = await database_sync_to_async(chat)(project_a, alice, "Seongsan sunrise")
    toolset = Toolset([BUILTIN_TOOLS["search_conversations"]])

    result = await toolset.run(
        name="search_conversations",
        arguments='{"query": "sunrise", "limit": 2}',
        context=context_of(project_a, user=alice, conversation=conversation),
    )

    answer = json.loads(result.content)
    assert not result.is_error
    assert answer["count"] == 1
    assert answer["results"][0]["conversation_id"] == conversation.pk
    assert answer["results"][0]["current"] is True


@pytest.mark.parametrize("limit", [0, 11, "5"])
def test_the_limit_is_checked_against_the_schema(limit):
    toolset = Toolset([BUILTIN_TOOLS["search_conversations"]])

    result = asyncio.run(
        toolset.run(
            name="search_conversations",
            arguments=json.dumps({"query": "x", "limit": limit}),
            context=NOBODY,
        )
    )

    assert result.is_error
    assert "do not fit its schema: limit" in result.content
