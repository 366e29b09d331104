"""A project's MCP servers over streamable HTTP, through the official ``mcp`` SDK.

Every connection goes through the address policy of provider connections: the SDK is handed
an httpx2 client built on ``PinnedTransport``, so each request goes to an address that was
checked when it was made (no second DNS answer can move it), and no redirect is followed. The
server's headers (an Authorization, say) are decrypted when a reply's toolset is resolved and
kept in memory only; they are never logged, and no error text carries them.

A session is opened for each listing and each call and closed after it: a reply makes a few
calls at most, and nothing outlives the coroutine that opened it (the SDK's task groups must
be closed by the task that opened them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import mcp_types
from django.utils.translation import gettext as _
from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]
from jsonschema.validators import validator_for  # type: ignore[import-untyped]
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from providers.addresses import AddressPolicy, AddressRefused, PinnedTransport

from .base import BaseTool, ToolContext, ToolResult, ToolSpec

logger = logging.getLogger(__name__)

MAX_TOOLS = 100  # per server: more would not fit a model's tool list anyway
MAX_PAGES = 10
MAX_DESCRIPTION_CHARS = 1000
MAX_NAME_CHARS = 128


@dataclass(frozen=True)
class ServerSpec:
    """What a call needs of a ``ToolServer``, resolved from the database once."""

    id: int
    name: str
    url: str
    timeout: float
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # plaintext, in memory
    # Why the headers could not be read (no configured key opens them): every call says so.
    headers_error: str = ""


@dataclass(frozen=True)
class Listing:
    """A server's tools as stored on ``ToolServer.tools``, and those left out (and why)."""

    tools: list[dict[str, Any]]
    skipped: list[str]


class Unreachable(Exception):
    """The server could not be reached or did not speak MCP: ``reason`` says how, in words
    safe to show (no header, no URL)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class _Statuses:
    """The HTTP statuses the server answered with, for a refusal the SDK reports only as
    "Server returned an error response" (a 401 from a wrong token, say)."""

    def __init__(self) -> None:
        self.failed: int | None = None

    async def __call__(self, response: httpx2.Response) -> None:
        if response.status_code >= 400 and self.failed is None:
            self.failed = response.status_code


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside the SDK's task groups' exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def scrub(text: str, server: ServerSpec) -> str:
    """``text`` without any of the server's header values, should an error ever quote one."""
    for value in server.headers.values():
        if len(value) >= 4:
            text = text.replace(value, "[redacted]")
    return text


def describe(error: BaseException, statuses: _Statuses | None = None) -> str:
    """Why a session failed, in a sentence (see ``scrub`` for the headers)."""
    leaves = _leaves(error)
    for leaf in leaves:
        if isinstance(leaf, AddressRefused):
            return leaf.message
    if statuses is not None and statuses.failed is not None:
        status = statuses.failed
        if status in (401, 403):
            return _("it refused our credentials (HTTP %(status)d); check its headers.") % {
                "status": status
            }
        return _("it answered HTTP %(status)d.") % {"status": status}
    leaf = leaves[0]
    if isinstance(leaf, httpx2.TimeoutException | TimeoutError):
        return _("it did not answer in time.")
    if isinstance(leaf, httpx2.ConnectError):
        return _("the connection failed (%(detail)s).") % {"detail": str(leaf)[:200] or "refused"}
    if isinstance(leaf, httpx2.HTTPError):
        return _("the HTTP exchange failed (%(detail)s).") % {
            "detail": str(leaf)[:200] or type(leaf).__name__
        }
    if isinstance(leaf, MCPError):
        return _("it did not answer as an MCP server (%(detail)s).") % {"detail": str(leaf)[:200]}
    return _("%(kind)s: %(detail)s") % {"kind": type(leaf).__name__, "detail": str(leaf)[:200]}


@asynccontextmanager
async def open_session(
    server: ServerSpec, policy: AddressPolicy, statuses: _Statuses
) -> AsyncIterator[Client]:
    """An MCP session with ``server``, every request pinned to an address ``policy`` allows."""
    http = httpx2.AsyncClient(
        transport=PinnedTransport(policy),
        headers=server.headers,
        timeout=httpx2.Timeout(server.timeout),
        follow_redirects=False,
        max_redirects=0,  # the SDK follows same-origin redirects up to this: none
        event_hooks={"response": [statuses]},
    )
    async with (
        http,
        Client(
            streamable_http_client(server.url, http_client=http),
            read_timeout_seconds=server.timeout,
            cache=None,
        ) as client,
    ):
        yield client


def _schema_problem(schema: object) -> str | None:
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        return _("its input schema is not a JSON Schema object")
    try:
        validator_for(schema, default=validator_for({})).check_schema(schema)
    except SchemaError as error:
        return _("its input schema is not valid JSON Schema (%(error)s)") % {
            "error": error.message[:120]
        }
    return None


def _stored(tool: mcp_types.Tool) -> tuple[dict[str, Any] | None, str | None]:
    """A listed tool as ``ToolServer.tools`` keeps it, or why it is left out."""
    name = tool.name
    if not name or len(name) > MAX_NAME_CHARS:
        return None, _("a tool with a name of %(count)d characters") % {"count": len(name)}
    problem = _schema_problem(tool.input_schema)
    if problem is not None:
        return None, f"{name}: {problem}"
    return {
        "name": name,
        "description": (tool.description or "")[:MAX_DESCRIPTION_CHARS],
        "input_schema": tool.input_schema,
    }, None


async def list_tools(server: ServerSpec, policy: AddressPolicy) -> Listing:
    """The server's tools, page after page. Raises ``Unreachable``."""
    if server.headers_error:
        raise Unreachable(server.headers_error)
    statuses = _Statuses()
    tools: list[dict[str, Any]] = []
    skipped: list[str] = []
    try:
        async with open_session(server, policy, statuses) as client:
            cursor: str | None = None
            for _page in range(MAX_PAGES):
                page = await client.list_tools(cursor=cursor)
                for tool in page.tools:
                    stored, problem = _stored(tool)
                    if stored is not None and len(tools) < MAX_TOOLS:
                        tools.append(stored)
                    elif problem is not None:
                        skipped.append(problem)
                cursor = page.next_cursor
                if cursor is None:
                    break
    except Exception as error:
        logger.info("MCP server %s: listing failed: %s", server.id, type(error).__name__)
        raise Unreachable(scrub(describe(error, statuses), server)) from None
    return Listing(tools=tools, skipped=skipped)


def _text_of(block: mcp_types.ContentBlock) -> str:
    """One block of a result as the model reads it: text as it is, the rest described."""
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent):
        return _("[an image, %(type)s, not shown to the model]") % {"type": block.mime_type}
    if isinstance(block, mcp_types.AudioContent):
        return _("[audio, %(type)s, not shown to the model]") % {"type": block.mime_type}
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, mcp_types.TextResourceContents):
            return resource.text
        return _("[a binary resource, %(uri)s]") % {"uri": str(resource.uri)[:200]}
    if isinstance(block, mcp_types.ResourceLink):
        return _("[a link to the resource %(uri)s]") % {"uri": str(block.uri)[:200]}
    return _("[%(kind)s content]") % {"kind": getattr(block, "type", type(block).__name__)}


def result_text(result: mcp_types.CallToolResult) -> str:
    parts = [_text_of(block) for block in result.content]
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


class McpTool(BaseTool):
    """One tool of an MCP server, under the name the model knows it by
    (``<server slug>__<tool name>``); ``remote_name`` is the server's own."""

    def __init__(
        self, *, spec: ToolSpec, server: ServerSpec, remote_name: str, policy: AddressPolicy
    ) -> None:
        self.spec = spec
        self.server = server
        self.remote_name = remote_name
        self.policy = policy
        self.timeout = server.timeout

    def unreachable(self, reason: str) -> ToolResult:
        return ToolResult(
            _("MCP server %(name)s is unreachable: %(reason)s")
            % {"name": self.server.name, "reason": reason},
            is_error=True,
        )

    def timeout_message(self, seconds: float) -> str:
        return self.unreachable(
            _("no answer within %(seconds)s seconds.") % {"seconds": f"{seconds:g}"}
        ).content

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        if self.server.headers_error:
            return self.unreachable(self.server.headers_error)
        statuses = _Statuses()
        connected = False
        try:
            async with open_session(self.server, self.policy, statuses) as client:
                connected = True
                result = await client.call_tool(self.remote_name, arguments)
        except Exception as error:
            logger.info(
                "MCP server %s: calling %s failed: %s",
                self.server.id,
                self.remote_name,
                type(error).__name__,
            )
            leaves = _leaves(error)
            refused = next((leaf for leaf in leaves if isinstance(leaf, MCPError)), None)
            if connected and refused is not None and statuses.failed is None:
                # Reached, and it said no to this call (an unknown tool, bad arguments).
                return ToolResult(
                    _("MCP server %(name)s refused the call: %(reason)s")
                    % {"name": self.server.name, "reason": scrub(str(refused)[:500], self.server)},
                    is_error=True,
                )
            return self.unreachable(scrub(describe(error, statuses), self.server))
        text = result_text(result)
        if result.is_error:
            return ToolResult(text or _("The tool reported an error without a message."), True)
        return ToolResult(text)
