"""The tools a project offers and the ``Toolset`` a reply calls them through.

Built-in tools live in ``chat.tools.builtin``, MCP servers' in ``chat.tools.mcp``. A
conversation or persona stores the keys it enabled: a built-in tool's name (``calculator``) or
``mcp:<server id>`` for all the tools of one of the project's MCP servers.

The ``Toolset`` is resolved once per reply, in its transaction (servers' headers decrypted then,
kept in memory only), and used from the event loop without the ORM (but for the conversation
search, which reads through ``core.db``). ``Toolset.run`` never raises but for cancellation:
whatever goes wrong becomes an error result the model is told of, and may work around.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import referencing
from django.conf import settings
from django.utils.text import slugify
from django.utils.translation import gettext as _
from jsonschema.exceptions import best_match  # type: ignore[import-untyped]
from jsonschema.protocols import Validator  # type: ignore[import-untyped]
from jsonschema.validators import (  # type: ignore[import-untyped]
    Draft202012Validator,
    validator_for,
)

from accounts.models import Project
from core.errors import ServiceError
from providers.crypto import DecryptionError, decrypt
from providers.specs import address_policy

from ..models import ToolServer
from .base import TOOL_NAME, Tool, ToolContext, ToolError, ToolResult, ToolSpec
from .builtin import BUILTIN_TOOLS
from .mcp import McpTool, ServerSpec

logger = logging.getLogger(__name__)

MCP_PREFIX = "mcp:"
MAX_ARGUMENT_CHARS = 100_000
# A schema's "$ref" resolves inside the schema or not at all: jsonschema's default registry
# would fetch a remote one over the network (an MCP server's schema could point anywhere).
_NO_RETRIEVAL: referencing.Registry[Any] = referencing.Registry()


@dataclass(frozen=True)
class ToolOption:
    """One choice in a conversation's or persona's settings: a built-in tool (``calculator``)
    or an MCP server (``mcp:<id>``, all its tools)."""

    key: str
    label: str
    description: str
    kind: str = "builtin"  # "builtin" or "mcp"
    tools: tuple[str, ...] = ()  # an MCP server's tools, by their own names


def server_key(server: ToolServer) -> str:
    return f"{MCP_PREFIX}{server.pk}"


def tool_options(project: Project) -> list[ToolOption]:
    """What the project's conversations and personas may enable: the built-in tools and the
    project's enabled MCP servers."""
    options = [
        ToolOption(key=name, label=str(tool.label), description=str(tool.summary))
        for name, tool in BUILTIN_TOOLS.items()
    ]
    for server in ToolServer.objects.for_project(project).enabled().order_by("name", "id"):
        names = tuple(tool["name"] for tool in server.tools)
        options.append(
            ToolOption(
                key=server_key(server),
                label=server.name,
                description=_("MCP server: %(tools)s") % {"tools": ", ".join(names)}
                if names
                else _("MCP server (no tools listed yet)"),
                kind="mcp",
                tools=names,
            )
        )
    return options


def check_tools(*, project: Project, value: object) -> list[str]:
    """``value`` as a list of keys of ``tool_options(project)``, deduplicated, in order;
    ``ServiceError(code="invalid_tools", param="tools")`` naming the first unknown key."""
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(key, str) for key in value):
        raise ServiceError(
            _('Tools are a list of names, such as ["calculator", "mcp:3"].'),
            code="invalid_tools",
            param="tools",
        )
    known = {option.key for option in tool_options(project)}
    keys: list[str] = []
    for key in value:
        if key not in known:
            raise ServiceError(
                _("Unknown tool %(key)r: choose from %(known)s.")
                % {"key": key[:80], "known": ", ".join(sorted(known))},
                code="invalid_tools",
                param="tools",
            )
        if key not in keys:
            keys.append(key)
    return keys


# --- the toolset of a reply -------------------------------------------------------------------


def _error(message: str) -> ToolResult:
    return ToolResult(message, is_error=True)


def _cut(result: ToolResult) -> ToolResult:
    """At most CHAT_TOOL_RESULT_CHARS, and the model is told it saw only the start."""
    limit = settings.CHAT_TOOL_RESULT_CHARS
    if len(result.content) <= limit:
        return result
    note = _("[cut: the result had %(total)d characters; these are the first %(shown)d]") % {
        "total": len(result.content),
        "shown": limit,
    }
    return ToolResult(f"{result.content[:limit]}\n{note}", is_error=result.is_error)


def _validator(schema: dict[str, Any]) -> Validator:
    cls = validator_for(schema, default=Draft202012Validator)
    return cls(schema, registry=_NO_RETRIEVAL)


@dataclass(frozen=True)
class _Entry:
    tool: Tool
    validator: Validator
    timeout: float


class Toolset:
    """The tools one reply may call, resolved once (in the reply's transaction; MCP servers'
    headers decrypted here, kept in memory only) and used from the event loop."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        """``tools`` under unique names (``toolset_for`` builds them; tests may pass their
        own). A tool's ``timeout`` attribute bounds its calls, else CHAT_TOOL_TIMEOUT."""
        self._entries: dict[str, _Entry] = {}
        for tool in tools:
            name = tool.spec.name
            if name in self._entries or not TOOL_NAME.match(name):
                raise ValueError(f"Tool names must be unique and match {TOOL_NAME.pattern}")
            timeout = getattr(tool, "timeout", None) or settings.CHAT_TOOL_TIMEOUT
            self._entries[name] = _Entry(tool, _validator(tool.spec.parameters), timeout)

    @property
    def specs(self) -> list[ToolSpec]:
        return [entry.tool.spec for entry in self._entries.values()]

    def openai_tools(self) -> list[dict[str, Any]]:
        return [spec.as_openai() for spec in self.specs]

    async def run(self, *, name: str, arguments: str, context: ToolContext) -> ToolResult:
        """Run one call: ``arguments`` as the model wrote them (JSON text). Never raises (but
        ``CancelledError``): an unknown tool, arguments that are not JSON or do not fit the
        schema, a tool that raises, times out or whose server is down — each is an error result
        for the model. Bounded in time (a built-in tool: settings.CHAT_TOOL_TIMEOUT; an MCP
        server: its own timeout)."""
        entry = self._entries.get(name)
        if entry is None:
            return _error(
                _("There is no tool named %(name)s. The tools are: %(names)s.")
                % {"name": name[:80], "names": ", ".join(self._entries)}
            )
        parsed = self._arguments(entry, arguments)
        if isinstance(parsed, ToolResult):
            return parsed
        try:
            async with asyncio.timeout(entry.timeout):
                result = await entry.tool.run(parsed, context)
        except TimeoutError:
            message = getattr(entry.tool, "timeout_message", None)
            if message is None:
                return _error(
                    _("The tool %(name)s did not finish within %(seconds)s seconds.")
                    % {"name": name, "seconds": f"{entry.timeout:g}"}
                )
            return _error(message(entry.timeout))
        except ToolError as error:
            return _error(str(error))
        except Exception as error:
            # A failure of the tool's own: logged with its traceback, told in one line.
            logger.exception("Tool %s failed", name)
            return _error(
                _("The tool %(name)s failed (%(kind)s). Try other arguments, or do without it.")
                % {"name": name, "kind": type(error).__name__}
            )
        return _cut(result)

    @staticmethod
    def _arguments(entry: _Entry, arguments: str) -> dict[str, Any] | ToolResult:
        name = entry.tool.spec.name
        if len(arguments) > MAX_ARGUMENT_CHARS:
            return _error(
                _("The arguments for %(name)s are longer than %(max)d characters.")
                % {"name": name, "max": MAX_ARGUMENT_CHARS}
            )
        # Some models send nothing at all for a tool without parameters.
        text = arguments.strip() or "{}"
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            return _error(
                _("The arguments for %(name)s are not valid JSON: %(arguments)s")
                % {"name": name, "arguments": arguments[:200]}
            )
        if not isinstance(parsed, dict):
            return _error(
                _('The arguments for %(name)s must be a JSON object, such as {"key": value}.')
                % {"name": name}
            )
        try:
            problem = best_match(entry.validator.iter_errors(parsed))
        except Exception:  # an unresolvable $ref, a pattern Python cannot compile...
            logger.warning("Tool %s: its schema could not be checked", name, exc_info=True)
            return _error(
                _("The arguments for %(name)s could not be checked against its schema.")
                % {"name": name}
            )
        if problem is not None:
            where = "/".join(str(part) for part in problem.absolute_path) or _("the arguments")
            return _error(
                _("The arguments for %(name)s do not fit its schema: %(where)s: %(problem)s")
                % {"name": name, "where": where, "problem": problem.message[:300]}
            )
        return parsed

    async def aclose(self) -> None:
        """Release what the toolset holds. Today nothing outlives a call (each MCP call opens
        and closes its own session), but call it when the reply ends: pooling may come."""


# --- from keys to tools -----------------------------------------------------------------------

_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]+")
SLUG_CHARS = 24


def _server_slug(server: ToolServer) -> str:
    slug = _UNSAFE.sub("_", slugify(server.name)).strip("_-")[:SLUG_CHARS].rstrip("_-")
    return slug or f"mcp{server.pk}"


def _unique(name: str, taken: set[str]) -> str:
    name = name[:64]
    number = 2
    candidate = name
    while candidate in taken:
        suffix = f"_{number}"
        candidate = name[: 64 - len(suffix)] + suffix
        number += 1
    taken.add(candidate)
    return candidate


def server_spec(server: ToolServer) -> ServerSpec:
    """What calls need of ``server``: its headers decrypted (a token no configured key opens
    is reported on each call, not here)."""
    headers: dict[str, str] = {}
    headers_error = ""
    if server.headers_encrypted:
        try:
            headers = json.loads(decrypt(server.headers_encrypted))
        except (DecryptionError, ValueError):
            headers_error = _(
                "its headers cannot be read with the configured encryption keys; a manager "
                "needs to enter them again."
            )
    return ServerSpec(
        id=server.pk,
        name=server.name,
        url=server.url,
        timeout=server.timeout,
        headers=headers,
        headers_error=headers_error,
    )


def _mcp_tools(servers: Iterable[ToolServer], taken: set[str]) -> list[McpTool]:
    policy = address_policy()
    tools = []
    for server in servers:
        spec = server_spec(server)
        slug = _server_slug(server)
        for listed in server.tools:
            remote = listed["name"]
            exposed = _unique(f"{slug}__{_UNSAFE.sub('_', remote)}", taken)
            description = listed.get("description") or _("A tool of the MCP server %(name)s.") % {
                "name": server.name
            }
            tools.append(
                McpTool(
                    spec=ToolSpec(
                        name=exposed,
                        description=f"[{server.name}] {description}",
                        # OpenAI wants the type said; MCP lets a server leave it implied.
                        parameters={"type": "object", **(listed.get("input_schema") or {})},
                    ),
                    server=spec,
                    remote_name=remote,
                    policy=policy,
                )
            )
    return tools


def toolset_for(*, project: Project, keys: list[str]) -> Toolset | None:
    """The tools of ``keys`` (as ``check_tools`` keeps them) for a reply in ``project``; None
    when there are none (a key whose MCP server was removed or turned off since is left out)."""
    tools: list[Tool] = [BUILTIN_TOOLS[key] for key in keys if key in BUILTIN_TOOLS]
    server_ids = [
        int(key.removeprefix(MCP_PREFIX))
        for key in keys
        if key.startswith(MCP_PREFIX) and key.removeprefix(MCP_PREFIX).isdigit()
    ]
    if server_ids:
        servers = ToolServer.objects.for_project(project).enabled().filter(pk__in=server_ids)
        by_id = {server.pk: server for server in servers}
        ordered = [by_id[pk] for pk in dict.fromkeys(server_ids) if pk in by_id]
        tools.extend(_mcp_tools(ordered, taken={tool.spec.name for tool in tools}))
    return Toolset(tools) if tools else None
