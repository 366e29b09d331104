"""The registry: the options a project offers, the check of a choice, the toolset of a reply,
and ``Toolset.run``, which turns every failure into an error result for the model."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from chat.models import ToolServer
from chat.tools.base import TOOL_NAME, BaseTool, ToolContext, ToolError, ToolResult, ToolSpec
from chat.tools.registry import Toolset, check_tools, tool_options, toolset_for
from core.errors import ServiceError

CONTEXT = ToolContext(project_id=1, user_id=1, api_key_id=None, conversation_id=None)
BUILTINS = ["calculator", "current_datetime", "search_conversations", "convert_units"]
ADD = {
    "name": "add",
    "description": "Add two numbers.",
    "input_schema": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}


def server(project, name="Maths", tools=(ADD,), **fields) -> ToolServer:
    return ToolServer.objects.create(
        project=project, name=name, url="http://127.0.0.1:9/mcp", tools=list(tools), **fields
    )


# --- options and the check of a choice --------------------------------------------------------


@pytest.mark.django_db
def test_the_options_are_the_builtins_then_the_enabled_servers(project_a, project_b):
    maths = server(project_a)
    server(project_a, name="Off", enabled=False)
    server(project_b, name="Theirs")

    options = tool_options(project_a)

    assert [o.key for o in options] == [*BUILTINS, f"mcp:{maths.pk}"]
    assert options[0].label == "Calculator"
    assert options[0].kind == "builtin"
    assert (options[-1].label, options[-1].kind, options[-1].tools) == ("Maths", "mcp", ("add",))
    assert options[-1].description == "MCP server: add"


@pytest.mark.django_db
def test_a_choice_is_kept_in_order_without_repeats(project_a):
    maths = server(project_a)
    key = f"mcp:{maths.pk}"

    assert check_tools(project=project_a, value=["convert_units", key, "convert_units"]) == [
        "convert_units",
        key,
    ]
    assert check_tools(project=project_a, value=[]) == []
    assert check_tools(project=project_a, value=None) == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "value", [["calculator", "shell"], "calculator", [1], {"calculator": True}, ["mcp:999"]]
)
def test_an_unknown_or_malformed_choice_is_refused(project_a, value):
    with pytest.raises(ServiceError) as refused:
        check_tools(project=project_a, value=value)

    assert (refused.value.code, refused.value.param, refused.value.status) == (
        "invalid_tools",
        "tools",
        400,
    )


@pytest.mark.django_db
def test_the_refusal_names_the_first_unknown_key(project_a):
    with pytest.raises(ServiceError, match="Unknown tool 'shell'"):
        check_tools(project=project_a, value=["calculator", "shell", "rm"])


@pytest.mark.django_db
def test_a_disabled_or_foreign_server_cannot_be_chosen(project_a, project_b):
    off = server(project_a, name="Off", enabled=False)
    theirs = server(project_b, name="Theirs")

    for key in (f"mcp:{off.pk}", f"mcp:{theirs.pk}"):
        with pytest.raises(ServiceError):
            check_tools(project=project_a, value=[key])


# --- the toolset of a reply -------------------------------------------------------------------


@pytest.mark.django_db
def test_no_keys_make_no_toolset(project_a, project_b):
    gone = server(project_a, name="Gone")
    gone_key = f"mcp:{gone.pk}"
    gone.delete()
    theirs = server(project_b, name="Theirs")
    off = server(project_a, name="Off", enabled=False)

    assert toolset_for(project=project_a, keys=[]) is None
    assert toolset_for(project=project_a, keys=[gone_key]) is None
    assert toolset_for(project=project_a, keys=[f"mcp:{theirs.pk}"]) is None
    assert toolset_for(project=project_a, keys=[f"mcp:{off.pk}", "mcp:x"]) is None


@pytest.mark.django_db
def test_a_toolset_names_each_tool_for_the_model(project_a):
    maths = server(project_a, name="Maths & Co")

    toolset = toolset_for(project=project_a, keys=["calculator", f"mcp:{maths.pk}"])

    assert toolset is not None
    assert [spec.name for spec in toolset.specs] == ["calculator", "maths-co__add"]
    [calculator, add] = toolset.openai_tools()
    assert calculator["type"] == "function"
    assert calculator["function"]["parameters"]["required"] == ["expression"]
    assert add["function"]["description"] == "[Maths & Co] Add two numbers."
    assert add["function"]["parameters"] == ADD["input_schema"]


@pytest.mark.django_db
def test_long_or_odd_names_are_cut_to_what_openai_accepts_and_kept_unique(project_a):
    long_name = "t" * 100
    tools = [
        {"name": long_name, "description": "", "input_schema": {"type": "object"}},
        {"name": long_name + "x", "description": "", "input_schema": {"type": "object"}},
        {"name": "get weather/now", "description": "", "input_schema": {"type": "object"}},
    ]
    first = server(project_a, name="A very long server name indeed, longer than most", tools=tools)
    second = server(project_a, name="서버", tools=[ADD])  # no ASCII in its name

    toolset = toolset_for(project=project_a, keys=[f"mcp:{first.pk}", f"mcp:{second.pk}"])

    names = [spec.name for spec in toolset.specs]
    assert all(TOOL_NAME.match(name) for name in names)
    assert len(set(names)) == len(names) == 4
    assert names[2] == "a-very-long-server-name__get_weather_now"
    assert names[3] == f"mcp{second.pk}__add"
    assert names[1].endswith("_2")


# --- Toolset.run: every failure is a result ---------------------------------------------------


class Echo(BaseTool):
    spec = ToolSpec(
        name="echo",
        description="Says it back.",
        parameters={
            "type": "object",
            "properties": {"text": {"type": "string", "maxLength": 50}},
            "additionalProperties": False,
        },
    )

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        return ToolResult(arguments.get("text", "(nothing)"))


class Refuses(BaseTool):
    spec = ToolSpec(name="refuses", description="", parameters={"type": "object"})

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        raise ToolError("Not today.")


class Breaks(BaseTool):
    spec = ToolSpec(name="breaks", description="", parameters={"type": "object"})

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        raise KeyError("internal detail")


class Hangs(BaseTool):
    spec = ToolSpec(name="hangs", description="", parameters={"type": "object"})
    timeout = 0.05

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("never")


class Talks(BaseTool):
    spec = ToolSpec(name="talks", description="", parameters={"type": "object"})

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        return ToolResult("abcdefghij" * 10)


def call(name: str, arguments: str, *tools: BaseTool) -> ToolResult:
    toolset = Toolset(tools or [Echo(), Refuses(), Breaks(), Hangs(), Talks()])
    return asyncio.run(toolset.run(name=name, arguments=arguments, context=CONTEXT))


def test_a_call_runs_the_tool():
    assert call("echo", '{"text": "hi"}') == ToolResult("hi", is_error=False)


def test_no_arguments_at_all_count_as_an_empty_object():
    assert call("echo", "") == ToolResult("(nothing)")


@pytest.mark.parametrize(
    ("name", "arguments", "says"),
    [
        ("rm", "{}", "There is no tool named rm. The tools are: echo, refuses, breaks, hangs"),
        ("echo", '{"text": ', "The arguments for echo are not valid JSON"),
        ("echo", '["hi"]', "The arguments for echo must be a JSON object"),
        ("echo", '"hi"', "must be a JSON object"),
        ("echo", '{"text": 5}', "do not fit its schema: text: 5 is not of type 'string'"),
        ("echo", '{"text": "' + "x" * 51 + '"}', "do not fit its schema: text:"),
        ("echo", '{"other": 1}', "Additional properties are not allowed"),
        ("echo", " " * 100_001, "longer than 100000 characters"),
        ("refuses", "{}", "Not today."),
        ("breaks", "{}", "The tool breaks failed (KeyError)"),
        ("hangs", "{}", "The tool hangs did not finish within 0.05 seconds."),
    ],
)
def test_every_failure_is_an_error_result(name, arguments, says):
    result = call(name, arguments)

    assert result.is_error
    assert says in result.content


def test_a_tools_own_failure_is_logged_but_not_its_details_told(caplog):
    result = call("breaks", "{}")

    assert "internal detail" not in result.content
    assert "Tool breaks failed" in caplog.text


def test_a_long_result_is_cut_and_the_model_told(settings):
    settings.CHAT_TOOL_RESULT_CHARS = 30

    result = call("talks", "{}")

    assert result.content.startswith("abcdefghij" * 3 + "\n")
    assert "[cut: the result had 100 characters; these are the first 30]" in result.content
    assert not result.is_error


def test_built_in_tools_are_bounded_by_the_setting(settings):
    settings.CHAT_TOOL_TIMEOUT = 0.05

    class Slow(Hangs):
        timeout = None

    result = call("hangs", "{}", Slow())

    assert result.content == "The tool hangs did not finish within 0.05 seconds."


def test_cancelling_a_call_cancels_it():
    """A reply that is stopped stops its tool call: cancellation is not an error result."""
    hangs = Hangs()
    hangs.timeout = 60
    toolset = Toolset([hangs])

    async def stop_it() -> None:
        task = asyncio.create_task(toolset.run(name="hangs", arguments="{}", context=CONTEXT))
        await hangs.started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stop_it())


def test_a_schema_pointing_elsewhere_is_not_fetched(mcp_server):
    """A "$ref" to another address is never retrieved (jsonschema would, by default, from
    wherever an MCP server's schema points)."""

    class Remote(Echo):
        spec = ToolSpec(
            name="remote",
            description="",
            parameters={"type": "object", "properties": {"x": {"$ref": mcp_server.url + "/s"}}},
        )

    result = call("remote", json.dumps({"x": 1}), Remote())

    assert result.is_error
    assert "could not be checked against its schema" in result.content
    assert mcp_server.authorizations == []  # no request reached it


def test_names_must_be_unique_and_valid():
    with pytest.raises(ValueError, match="unique"):
        Toolset([Echo(), Echo()])

    class Bad(Echo):
        spec = ToolSpec(name="no spaces please", description="", parameters={"type": "object"})

    with pytest.raises(ValueError, match="unique"):
        Toolset([Bad()])


def test_aclose_can_always_be_called():
    toolset = Toolset([Echo()])

    asyncio.run(toolset.aclose())

    assert call("echo", '{"text": "still"}').content == "still"
