"""A real MCP server over streamable HTTP on 127.0.0.1 (the mcp SDK's own server, served by
uvicorn in a thread), which demands a bearer token and remembers every Authorization header
it was sent."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError as McpToolError
from starlette.responses import PlainTextResponse

from accounts.models import Project
from chat.models import ToolServer
from chat.tool_services import tool_server_create
from tests.conftest import membership

TOKEN = "mcp-s3cret-7f1c2d9e"


class McpTestServer:
    """``url`` speaks MCP; ``authorizations`` is what each request carried."""

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []
        # MCPServer calls logging.basicConfig, which would hand the whole test run's root
        # logger a handler of its own: with one already there, basicConfig does nothing.
        root, placeholder = logging.getLogger(), logging.NullHandler()
        root.addHandler(placeholder)
        try:
            server = MCPServer("test-tools", log_level="WARNING")
        finally:
            root.removeHandler(placeholder)

        @server.tool()
        def add(a: int, b: int) -> int:
            """Add two whole numbers."""
            return a + b

        @server.tool()
        def shout(text: str) -> str:
            """Repeat the text in capitals."""
            return text.upper()

        @server.tool()
        def fail(reason: str) -> str:
            """Always fails, saying why."""
            raise McpToolError(reason)

        @server.tool()
        async def hang() -> str:
            """Never answers."""
            await asyncio.Event().wait()
            return "never"

        self.app = server.streamable_http_app()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        # Listening before the server runs: a client's connection waits in the backlog until
        # uvicorn accepts it, so nobody needs to wait for the server to be "up".
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.guarded,
                interface="asgi3",
                lifespan="on",
                log_level="warning",
                timeout_graceful_shutdown=2,
            )
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.listener]}, daemon=True
        )

    async def guarded(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            authorization = dict(scope["headers"]).get(b"authorization")
            self.authorizations.append(authorization.decode() if authorization else None)
            if authorization != f"Bearer {TOKEN}".encode():
                await PlainTextResponse("unauthorized", status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def __enter__(self) -> McpTestServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.listener.close()


@pytest.fixture(scope="session")
def mcp_server_session() -> Iterator[McpTestServer]:
    with McpTestServer() as server:
        yield server


@pytest.fixture
def mcp_server(mcp_server_session: McpTestServer) -> McpTestServer:
    mcp_server_session.authorizations.clear()
    return mcp_server_session


def add_server(
    user, project: Project, url: str, *, name: str = "Maths", token: str = TOKEN, **fields
) -> ToolServer:
    """A server added through the service, as a manager adds it (its tools listed)."""
    return tool_server_create(
        actor=membership(user, project.organization),
        project=project,
        name=name,
        url=url,
        headers={"Authorization": f"Bearer {token}"},
        **fields,
    )
