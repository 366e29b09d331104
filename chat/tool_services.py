"""Writes on a project's MCP tool servers: add, change, remove, list their tools again.

The organization's owners and admins manage them (``check_can_manage``, as for provider
connections). A server's address goes through the same policy as a provider's base URL, when
it is saved and on every request. Its headers are write-only: stored as a Fernet token, their
names alone shown; no page, API answer, log line or error text carries a value.

Adding or changing a server lists its tools; a server that cannot be reached is saved anyway,
with the reason in ``last_error``, and its tools (if it had some) are kept until a listing
succeeds. Not atomic, like provider connections: the address check and the listing wait on the
network, and no transaction (on SQLite, the write lock) should wait with them.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from urllib.parse import urlsplit

from django.db import IntegrityError, transaction
from django.http import Http404
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from accounts.models import Membership, Project
from accounts.services import check_can_manage
from core.errors import ServiceError
from providers.addresses import AddressRefused
from providers.crypto import encrypt
from providers.specs import address_policy

from .models import Conversation, Persona, ToolServer
from .tools import mcp
from .tools.registry import server_key, server_spec

NAME_MAX = 80
URL_MAX = 500
HEADERS_MAX = 20
HEADER_VALUE_MAX = 4096
HEADER_NAMES_MAX = 300  # ToolServer.header_names, the names joined with ", "
TIMEOUT_MIN, TIMEOUT_MAX = 1.0, 120.0
# An HTTP token (RFC 9110), and the headers the MCP transport sets itself.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
RESERVED_HEADERS = frozenset(
    {
        "accept",
        "connection",
        "content-length",
        "content-type",
        "host",
        "keep-alive",
        "last-event-id",
        "mcp-protocol-version",
        "mcp-session-id",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def get_tool_server_or_404(*, project: Project, server_id: int) -> ToolServer:
    server = ToolServer.objects.for_project(project).filter(pk=server_id).first()
    if server is None:
        raise Http404(_("No such tool server."))
    return server


# --- checks -----------------------------------------------------------------------------------


def _check_actor(actor: Membership, project: Project) -> None:
    check_can_manage(actor)
    if actor.organization_id != project.organization_id:
        raise ServiceError(_("No such project."), code="forbidden")


def _clean_name(*, project: Project, name: str, server: ToolServer | None = None) -> str:
    name = name.strip()
    if not name or len(name) > NAME_MAX:
        raise ServiceError(
            _("A name is 1 to %(max)d characters.") % {"max": NAME_MAX}, param="name"
        )
    taken = ToolServer.objects.for_project(project).filter(name=name)
    if server is not None:
        taken = taken.exclude(pk=server.pk)
    if taken.exists():
        raise ServiceError(
            _("This project already has a tool server named “%(name)s”.") % {"name": name},
            code="conflict",
            param="name",
        )
    return name


def clean_url(url: str) -> str:
    """An http(s) URL with a host, that the address policy allows now (a name that does not
    resolve yet passes: every request is checked again)."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError:
        valid = False
    if not valid or len(url) > URL_MAX or any(c.isspace() for c in url):
        raise ServiceError(
            _("Enter the server's http:// or https:// address, e.g. https://mcp.example.com/mcp."),
            param="url",
        )
    try:
        address_policy().check_url(url)
    except AddressRefused as refused:
        raise ServiceError(refused.message, code="upstream_address_refused", param="url") from None
    return url


def clean_headers(headers: object) -> dict[str, str]:
    """Header names and values a request may carry; the transport's own are refused."""
    if not isinstance(headers, dict):
        raise ServiceError(
            _('Headers are an object of names and values, e.g. {"Authorization": "Bearer …"}.'),
            param="headers",
        )
    if len(headers) > HEADERS_MAX:
        raise ServiceError(_("At most %(max)d headers.") % {"max": HEADERS_MAX}, param="headers")
    cleaned: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name.strip()):
            raise ServiceError(
                _("“%(name)s” is not a header name.") % {"name": str(name)[:100]}, param="headers"
            )
        name = name.strip()
        if name.lower() in RESERVED_HEADERS:
            raise ServiceError(
                _("The header %(name)s is set by the MCP client itself.") % {"name": name},
                param="headers",
            )
        if name.lower() in {n.lower() for n in cleaned}:
            raise ServiceError(
                _("The header %(name)s is given twice.") % {"name": name}, param="headers"
            )
        # Never echoed: a refused value may be a secret.
        if (
            not isinstance(value, str)
            or len(value) > HEADER_VALUE_MAX
            or not all(32 <= ord(c) < 127 for c in value.strip())
        ):
            raise ServiceError(
                _(
                    "The value of the header %(name)s is not valid (printable ASCII, at most "
                    "%(max)d characters, on one line)."
                )
                % {"name": name, "max": HEADER_VALUE_MAX},
                param="headers",
            )
        cleaned[name] = value.strip()
    if len(", ".join(cleaned)) > HEADER_NAMES_MAX:
        raise ServiceError(_("The header names are too long together."), param="headers")
    return cleaned


def parse_header_lines(text: str) -> dict[str, str]:
    """``Name: value`` lines (a form's text area) as headers; blank lines are skipped."""
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ServiceError(
                _("Line %(number)d is not “Name: value”.") % {"number": number}, param="headers"
            )
        headers[name.strip()] = value.strip()
    return clean_headers(headers)


def _clean_timeout(timeout: float) -> float:
    if not isinstance(timeout, int | float) or not math.isfinite(timeout):
        raise ServiceError(_("The timeout is a number of seconds."), param="timeout")
    if not TIMEOUT_MIN <= timeout <= TIMEOUT_MAX:
        raise ServiceError(
            _("The timeout is between %(min)s and %(max)s seconds.")
            % {"min": f"{TIMEOUT_MIN:g}", "max": f"{TIMEOUT_MAX:g}"},
            param="timeout",
        )
    return float(timeout)


def _set_headers(server: ToolServer, headers: dict[str, str]) -> None:
    server.headers_encrypted = encrypt(json.dumps(headers)) if headers else ""
    server.header_names = ", ".join(headers)


def _save(server: ToolServer) -> None:
    try:
        with transaction.atomic():
            server.save()
    except IntegrityError:  # the same name, saved by someone else meanwhile
        raise ServiceError(
            _("This project already has a tool server named “%(name)s”.") % {"name": server.name},
            code="conflict",
            param="name",
        ) from None


# --- writes -----------------------------------------------------------------------------------


def tool_server_create(
    *,
    actor: Membership,
    project: Project,
    name: str,
    url: str,
    headers: dict[str, str] | None = None,
    enabled: bool = True,
    timeout: float = 20.0,
) -> ToolServer:
    """Add a server and list its tools (a failure to reach it is kept in ``last_error``)."""
    _check_actor(actor, project)
    server = ToolServer(
        project=project,
        name=_clean_name(project=project, name=name),
        url=clean_url(url),
        enabled=enabled,
        timeout=_clean_timeout(timeout),
        created_by=actor.user,
    )
    _set_headers(server, clean_headers(headers or {}))
    _save(server)
    return _list(server)


def tool_server_update(
    *,
    actor: Membership,
    server: ToolServer,
    name: str | None = None,
    url: str | None = None,
    headers: dict[str, str] | None = None,
    enabled: bool | None = None,
    timeout: float | None = None,
) -> ToolServer:
    """Change what is given (None keeps it; ``headers={}`` removes the stored ones), then
    list the tools again."""
    _check_actor(actor, server.project)
    if name is not None:
        server.name = _clean_name(project=server.project, name=name, server=server)
    if url is not None:
        server.url = clean_url(url)
    if headers is not None:
        _set_headers(server, clean_headers(headers))
    if enabled is not None:
        server.enabled = enabled
    if timeout is not None:
        server.timeout = _clean_timeout(timeout)
    _save(server)
    return _list(server)


@transaction.atomic
def tool_server_delete(*, actor: Membership, server: ToolServer) -> None:
    """Remove it, and its key from the conversations and personas that enabled it (their
    settings would otherwise name a server that is gone)."""
    _check_actor(actor, server.project)
    key = server_key(server)
    project = server.project
    conversations = [
        c
        for c in Conversation.objects.for_project(project).exclude(tools=[]).only("pk", "tools")
        if key in c.tools
    ]
    for conversation in conversations:
        conversation.tools = [k for k in conversation.tools if k != key]
    Conversation.objects.bulk_update(conversations, ["tools"], batch_size=500)
    personas = [
        p
        for p in Persona.objects.for_project(project).exclude(tools=[]).only("pk", "tools")
        if key in p.tools
    ]
    for persona in personas:
        persona.tools = [k for k in persona.tools if k != key]
    Persona.objects.bulk_update(personas, ["tools"], batch_size=500)
    server.delete()


def tool_server_refresh(*, actor: Membership | None, server: ToolServer) -> ToolServer:
    """List the server's tools again (``actor=None``: the system, e.g. a scheduled task)."""
    if actor is not None:
        _check_actor(actor, server.project)
    return _list(server)


def _list(server: ToolServer) -> ToolServer:
    """Ask the server for its tools and save the answer, or why there is none."""
    try:
        # From sync code (a view's thread, a task): an event loop of its own for the listing.
        listing = asyncio.run(mcp.list_tools(server_spec(server), address_policy()))
    except mcp.Unreachable as unreachable:
        server.last_error = _("Could not list the tools: %(reason)s") % {
            "reason": unreachable.reason
        }
        server.save(update_fields=["last_error", "updated_at"])
        return server
    server.tools = listing.tools
    server.listed_at = timezone.now()
    server.last_error = ""
    if listing.skipped:
        server.last_error = ngettext(
            "Left out %(count)d tool: %(tools)s.",
            "Left out %(count)d tools: %(tools)s.",
            len(listing.skipped),
        ) % {"count": len(listing.skipped), "tools": "; ".join(listing.skipped)[:1000]}
    server.save(update_fields=["tools", "listed_at", "last_error", "updated_at"])
    return server
