"""The types every tool shares: what the model is told of it, what it may reach, what it says."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from django.utils.translation import gettext

# What OpenAI accepts as a function's name.
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model sees it: its name, what it does, its arguments' JSON Schema."""

    name: str
    description: str
    parameters: dict[str, Any]

    def as_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True)
class ToolContext:
    """Who called and where: a tool reaches only what this caller may read."""

    project_id: int
    user_id: int | None  # None when a project API key asked
    api_key_id: int | None
    conversation_id: int | None


@dataclass(frozen=True)
class ToolResult:
    """What goes back to the model (as the ``tool`` message's content) and to the transcript.
    ``is_error``: the tool failed (bad arguments, a timeout, a server down); the model is told
    so in ``content`` and may carry on."""

    content: str
    is_error: bool = False


class ToolError(Exception):
    """A tool's refusal, safe to show and to send to the model (bad arguments, say)."""


class Tool(Protocol):
    spec: ToolSpec

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult: ...


class BaseTool:
    """What a tool may add to the ``Tool`` protocol: its own time bound (None: the setting
    CHAT_TOOL_TIMEOUT) and what the model is told when it is over. The built-in tools and an
    MCP server's tools derive from it; ``Toolset`` reads both attributes where a tool has them."""

    spec: ToolSpec
    timeout: float | None = None

    def timeout_message(self, seconds: float) -> str:
        return gettext("The tool %(name)s did not finish within %(seconds)s seconds.") % {
            "name": self.spec.name,
            "seconds": f"{seconds:g}",
        }

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        raise NotImplementedError
