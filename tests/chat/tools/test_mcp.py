"""MCP servers end to end, against a real MCP server over streamable HTTP on 127.0.0.1: the
tools listed when a server is added, a call through ``Toolset.run``, the Authorization header
it requires (stored only encrypted), and every way a server can fail a call without a crash."""

from __future__ import annotations

import asyncio
import json

import pytest

from chat.models import Conversation, Persona, ToolServer
from chat.tool_services import (
    tool_server_create,
    tool_server_delete,
    tool_server_refresh,
    tool_server_update,
)
from chat.tools.base import ToolContext, ToolResult
from chat.tools.mcp import ServerSpec, scrub
from chat.tools.registry import toolset_for
from core.errors import ServiceError
from providers.crypto import decrypt, encrypt
from tests.chat.tools.conftest import TOKEN, add_server
from tests.conftest import membership

pytestmark = pytest.mark.django_db

CONTEXT = ToolContext(project_id=1, user_id=1, api_key_id=None, conversation_id=None)


def call(server: ToolServer, tool: str, arguments: dict | str) -> ToolResult:
    toolset = toolset_for(project=server.project, keys=[f"mcp:{server.pk}"])
    assert toolset is not None
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return asyncio.run(toolset.run(name=f"maths__{tool}", arguments=text, context=CONTEXT))


# --- adding a server lists its tools ----------------------------------------------------------


def test_adding_a_server_lists_its_tools(alice, project_a, mcp_server):
    server = add_server(alice, project_a, mcp_server.url)

    server.refresh_from_db()
    assert [tool["name"] for tool in server.tools] == ["add", "shout", "fail", "hang"]
    add = server.tools[0]
    assert add["description"] == "Add two whole numbers."
    assert add["input_schema"]["required"] == ["a", "b"]
    assert add["input_schema"]["properties"]["a"]["type"] == "integer"
    assert server.listed_at is not None
    assert server.last_error == ""
    assert server.created_by == alice


def test_the_required_header_arrives_and_is_stored_only_encrypted(alice, project_a, mcp_server):
    server = add_server(alice, project_a, mcp_server.url)

    assert mcp_server.authorizations
    assert set(mcp_server.authorizations) == {f"Bearer {TOKEN}"}
    stored = ToolServer.objects.values().get(pk=server.pk)
    assert TOKEN not in json.dumps(stored, default=str)
    assert stored["header_names"] == "Authorization"
    assert json.loads(decrypt(stored["headers_encrypted"])) == {"Authorization": f"Bearer {TOKEN}"}


def test_a_wrong_token_is_saved_with_the_reason(alice, project_a, mcp_server):
    server = add_server(alice, project_a, mcp_server.url, token="wrong")

    assert server.pk is not None
    assert server.tools == []
    assert server.listed_at is None
    assert server.last_error == (
        "Could not list the tools: it refused our credentials (HTTP 401); check its headers."
    )
    assert "wrong" not in server.last_error


def test_a_server_that_is_down_is_saved_with_the_reason(alice, project_a, closed_port):
    server = add_server(alice, project_a, f"http://127.0.0.1:{closed_port}/mcp")

    assert server.tools == []
    assert server.last_error.startswith("Could not list the tools: the connection failed")


def test_a_failed_refresh_keeps_the_tools_it_had(alice, project_a, mcp_server, closed_port):
    server = add_server(alice, project_a, mcp_server.url)
    listed_at = server.listed_at
    ToolServer.objects.filter(pk=server.pk).update(url=f"http://127.0.0.1:{closed_port}/mcp")
    server.refresh_from_db()

    tool_server_refresh(actor=membership(alice, project_a.organization), server=server)

    server.refresh_from_db()
    assert len(server.tools) == 4
    assert server.listed_at == listed_at
    assert server.last_error.startswith("Could not list the tools:")


def test_editing_lists_again_and_keeps_headers_unless_told(alice, project_a, mcp_server):
    actor = membership(alice, project_a.organization)
    server = add_server(alice, project_a, mcp_server.url, token="wrong")
    assert server.tools == []

    tool_server_update(actor=actor, server=server, headers={"Authorization": f"Bearer {TOKEN}"})
    assert len(server.tools) == 4
    tool_server_update(actor=actor, server=server, name="Maths 2", timeout=5)
    server.refresh_from_db()
    assert (server.name, server.timeout, server.header_names) == ("Maths 2", 5.0, "Authorization")
    tool_server_update(actor=actor, server=server, headers={})
    server.refresh_from_db()
    assert (server.headers_encrypted, server.header_names) == ("", "")
    assert "HTTP 401" in server.last_error


# --- calls --------------------------------------------------------------------------------------


def test_a_call_goes_through_the_toolset(alice, project_a, mcp_server):
    server = add_server(alice, project_a, mcp_server.url)
    mcp_server.authorizations.clear()

    result = call(server, "add", {"a": 2, "b": 40})

    assert result == ToolResult("42", is_error=False)
    assert set(mcp_server.authorizations) == {f"Bearer {TOKEN}"}


def test_text_results_come_back_as_they_are(alice, project_a, mcp_server):
    server = add_server(alice, project_a, mcp_server.url)

    assert call(server, "shout", {"text": "제주 hello"}).content == "제주 HELLO"


def test_a_tool_error_is_an_error_result(alice, project_a, mcp_server):
    server = add_server(alice, project_a, mcp_server.url)

    result = call(server, "fail", {"reason": "the abacus broke"})

    assert result.is_error
    assert "the abacus broke" in result.content


def test_arguments_are_checked_against_the_listed_schema_before_any_request(
    alice, project_a, mcp_server
):
    server = add_server(alice, project_a, mcp_server.url)
    mcp_server.authorizations.clear()

    result = call(server, "add", {"a": "two", "b": 1})

    assert result.is_error
    assert "do not fit its schema: a: 'two' is not of type 'integer'" in result.content
    assert mcp_server.authorizations == []


def test_a_server_that_went_down_is_reported_per_call(alice, project_a, mcp_server, closed_port):
    server = add_server(alice, project_a, mcp_server.url)
    ToolServer.objects.filter(pk=server.pk).update(url=f"http://127.0.0.1:{closed_port}/mcp")
    server.refresh_from_db()

    first = call(server, "add", {"a": 1, "b": 1})
    second = call(server, "shout", {"text": "x"})

    for result in (first, second):
        assert result.is_error
        assert result.content.startswith("MCP server Maths is unreachable: the connection failed")


def test_a_revoked_token_is_reported_per_call(alice, project_a, mcp_server):
    server = add_server(alice, project_a, mcp_server.url)
    ToolServer.objects.filter(pk=server.pk).update(
        headers_encrypted=encrypt(json.dumps({"Authorization": "Bearer revoked"}))
    )
    server.refresh_from_db()

    result = call(server, "add", {"a": 1, "b": 1})

    assert result == ToolResult(
        "MCP server Maths is unreachable: it refused our credentials (HTTP 401); check its "
        "headers.",
        is_error=True,
    )


def test_headers_no_key_opens_are_reported_per_call(alice, project_a, mcp_server):
    server = add_server(alice, project_a, mcp_server.url)
    ToolServer.objects.filter(pk=server.pk).update(headers_encrypted="gAAAA-not-a-token")
    server.refresh_from_db()
    mcp_server.authorizations.clear()

    result = call(server, "add", {"a": 1, "b": 1})

    assert result.is_error
    assert "cannot be read with the configured encryption keys" in result.content
    assert mcp_server.authorizations == []


def test_a_call_that_takes_too_long_is_stopped_at_the_servers_timeout(alice, project_a, mcp_server):
    server = add_server(alice, project_a, mcp_server.url)
    ToolServer.objects.filter(pk=server.pk).update(timeout=0.5)
    server.refresh_from_db()

    result = call(server, "hang", {})

    assert result == ToolResult(
        "MCP server Maths is unreachable: no answer within 0.5 seconds.", is_error=True
    )


def test_the_address_policy_holds_on_every_call(alice, project_a, mcp_server, settings):
    server = add_server(alice, project_a, mcp_server.url)  # saved while loopback was allowed
    settings.UPSTREAM_ALLOWED_NETWORKS = []
    mcp_server.authorizations.clear()

    result = call(server, "add", {"a": 1, "b": 1})

    assert result.is_error
    assert result.content.startswith(
        "MCP server Maths is unreachable: The server does not send requests to 127.0.0.1"
    )
    assert mcp_server.authorizations == []


def test_a_disabled_server_offers_no_tools(alice, project_a, mcp_server):
    server = add_server(alice, project_a, mcp_server.url, enabled=False)

    assert len(server.tools) == 4
    assert toolset_for(project=project_a, keys=[f"mcp:{server.pk}"]) is None


# --- refusals at save time --------------------------------------------------------------------


def test_an_address_the_policy_refuses_is_not_saved(alice, project_a, mcp_server, settings):
    settings.UPSTREAM_ALLOWED_NETWORKS = []

    with pytest.raises(ServiceError) as refused:
        add_server(alice, project_a, mcp_server.url)

    assert (refused.value.code, refused.value.param) == ("upstream_address_refused", "url")
    assert "a loopback address" in refused.value.message
    assert not ToolServer.objects.exists()
    assert mcp_server.authorizations == []


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"name": " "}, "name", "A name is 1 to 80 characters"),
        ({"url": "ftp://example.com/mcp"}, "url", "http:// or https://"),
        ({"url": "http://"}, "url", "http:// or https://"),
        ({"url": "http://exa mple.com/"}, "url", "http:// or https://"),
        ({"headers": {"Bad Name": "x"}}, "headers", "“Bad Name” is not a header name"),
        ({"headers": {"Host": "evil"}}, "headers", "The header Host is set by the MCP client"),
        ({"headers": {"X-A": "a\r\nX-B: b"}}, "headers", "The value of the header X-A"),
        ({"headers": {"X-A": "1", "x-a": "2"}}, "headers", "given twice"),
        ({"headers": {"X-A": "café"}}, "headers", "printable ASCII"),
        ({"headers": ["Authorization"]}, "headers", "Headers are an object"),
        ({"timeout": 0.1}, "timeout", "between 1 and 120 seconds"),
        ({"timeout": float("nan")}, "timeout", "a number of seconds"),
    ],
)
def test_bad_fields_are_refused_by_name(alice, project_a, fields, param, says):
    arguments = {"name": "Maths", "url": "http://127.0.0.1:9/mcp", "headers": {}, **fields}

    with pytest.raises(ServiceError) as refused:
        tool_server_create(
            actor=membership(alice, project_a.organization), project=project_a, **arguments
        )

    assert refused.value.param == param
    assert says in refused.value.message
    assert not ToolServer.objects.exists()


def test_a_refused_header_value_is_not_repeated(alice, project_a):
    with pytest.raises(ServiceError) as refused:
        tool_server_create(
            actor=membership(alice, project_a.organization),
            project=project_a,
            name="Maths",
            url="http://127.0.0.1:9/mcp",
            headers={"Authorization": "Bearer sk-live-secret\r\nX-Injected: 1"},
        )

    assert "sk-live-secret" not in refused.value.message


def test_names_are_unique_in_a_project(alice, project_a, closed_port):
    add_server(alice, project_a, f"http://127.0.0.1:{closed_port}/mcp")

    with pytest.raises(ServiceError) as refused:
        add_server(alice, project_a, f"http://127.0.0.1:{closed_port}/mcp")

    assert (refused.value.code, refused.value.status) == ("conflict", 409)


def test_a_member_cannot_add_change_refresh_or_remove(alice, bob, project_a, closed_port):
    server = add_server(alice, project_a, f"http://127.0.0.1:{closed_port}/mcp")
    actor = membership(bob, project_a.organization)

    for attempt in (
        lambda: tool_server_create(actor=actor, project=project_a, name="B", url=server.url),
        lambda: tool_server_update(actor=actor, server=server, name="Mine"),
        lambda: tool_server_refresh(actor=actor, server=server),
        lambda: tool_server_delete(actor=actor, server=server),
    ):
        with pytest.raises(ServiceError) as refused:
            attempt()
        assert refused.value.code == "forbidden"
    assert ToolServer.objects.get().name == "Maths"


def test_another_organizations_owner_cannot_touch_it(alice, charlie, project_a, org_b, closed_port):
    server = add_server(alice, project_a, f"http://127.0.0.1:{closed_port}/mcp")

    with pytest.raises(ServiceError):
        tool_server_delete(actor=membership(charlie, org_b), server=server)

    assert ToolServer.objects.filter(pk=server.pk).exists()


def test_removing_a_server_removes_its_key_from_chats_and_personas(alice, project_a, closed_port):
    server = add_server(alice, project_a, f"http://127.0.0.1:{closed_port}/mcp")
    key = f"mcp:{server.pk}"
    conversation = Conversation.objects.create(
        project=project_a, owner=alice, model="fake-gpt", tools=["calculator", key]
    )
    persona = Persona.objects.for_project(project_a).get(tag="chatbot")
    persona.tools = [key]
    persona.save()

    tool_server_delete(actor=membership(alice, project_a.organization), server=server)

    conversation.refresh_from_db()
    persona.refresh_from_db()
    assert conversation.tools == ["calculator"]
    assert persona.tools == []
    assert not ToolServer.objects.exists()


def test_an_error_that_quotes_a_header_value_is_scrubbed():
    server = ServerSpec(
        id=1, name="Maths", url="http://x/", timeout=1, headers={"Authorization": "Bearer abc123"}
    )

    assert scrub("Illegal header value b'Bearer abc123'", server) == (
        "Illegal header value b'[redacted]'"
    )
