"""CONTRACT, to be implemented: the tools a project offers and the ``Toolset`` a reply uses.

Built-in tools live in ``chat.tools.builtin``, MCP servers' in ``chat.tools.mcp``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accounts.models import Project

from .base import ToolContext, ToolResult, ToolSpec


@dataclass(frozen=True)
class ToolOption:
    """One choice in a conversation's or persona's settings: a built-in tool (``calculator``)
    or an MCP server (``mcp:<id>``, all its tools)."""

    key: str
    label: str
    description: str


def tool_options(project: Project) -> list[ToolOption]:
    """What the project's conversations and personas may enable: the built-in tools and the
    project's enabled MCP servers."""
    raise NotImplementedError


def check_tools(*, project: Project, value: object) -> list[str]:
    """``value`` as a list of keys of ``tool_options(project)``, deduplicated, in order;
    ``ServiceError(code="invalid_tools", param="tools")`` naming the first unknown key."""
    raise NotImplementedError


class Toolset:
    """The tools one reply may call, resolved once (in the reply's transaction; MCP servers'
    headers decrypted here, kept in memory only) and used from the event loop."""

    @property
    def specs(self) -> list[ToolSpec]:
        raise NotImplementedError

    def openai_tools(self) -> list[dict[str, Any]]:
        return [spec.as_openai() for spec in self.specs]

    async def run(self, *, name: str, arguments: str, context: ToolContext) -> ToolResult:
        """Run one call: ``arguments`` as the model wrote them (JSON text). Never raises (but
        ``CancelledError``): an unknown tool, arguments that are not JSON or do not fit the
        schema, a tool that raises, times out or whose server is down — each is an error result
        for the model. Bounded in time (a built-in tool: settings.CHAT_TOOL_TIMEOUT; an MCP
        server: its own timeout)."""
        raise NotImplementedError


def toolset_for(*, project: Project, keys: list[str]) -> Toolset | None:
    """The tools of ``keys`` (as ``check_tools`` keeps them) for a reply in ``project``; None
    when there are none (a key whose MCP server was removed or turned off since is left out)."""
    raise NotImplementedError
