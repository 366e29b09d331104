"""The project's tools page: the built-in tools and the MCP servers, for everyone in the
project to see; adding, changing, refreshing and removing servers for its managers (the
organization's owners and admins, as for provider connections).

Thin: forms in, ``chat.tool_services`` out. Headers are write-only here as everywhere: the
form never renders them back, not even after a refusal; pages show their names only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_POST

from accounts.decorators import (
    AuthenticatedHttpRequest,
    project_view,
    raise_if_forbidden,
    require_manager,
)
from accounts.models import Membership, Project
from core.errors import ServiceError

from . import tool_services
from .models import ToolServer
from .tools.builtin import BUILTIN_TOOLS

# --- forms ------------------------------------------------------------------------------------


class WriteOnlyTextarea(forms.Textarea):
    """A text area that never shows what it holds: typed secrets do not come back in the page."""

    def format_value(self, value: Any) -> str | None:
        return None


class ToolServerForm(forms.Form):
    name = forms.CharField(label=gettext_lazy("Name"), max_length=80)
    url = forms.CharField(
        label=gettext_lazy("Address"),
        max_length=500,
        help_text=gettext_lazy(
            "The server's streamable HTTP endpoint, e.g. https://mcp.example.com/mcp."
        ),
    )
    headers = forms.CharField(
        label=gettext_lazy("Headers"),
        required=False,
        strip=False,
        widget=WriteOnlyTextarea(attrs={"rows": 3, "autocomplete": "off", "spellcheck": "false"}),
        help_text=gettext_lazy(
            "One per line, “Name: value”, e.g. Authorization: Bearer …. Stored encrypted and "
            "never shown again."
        ),
    )
    enabled = forms.BooleanField(
        label=gettext_lazy("On"),
        required=False,
        initial=True,
        help_text=gettext_lazy("Off: conversations cannot use its tools until it is on again."),
    )
    timeout = forms.FloatField(
        label=gettext_lazy("Timeout (seconds)"),
        min_value=tool_services.TIMEOUT_MIN,
        max_value=tool_services.TIMEOUT_MAX,
        initial=20.0,
        help_text=gettext_lazy("How long a tool call may take before the model is told so."),
    )

    def __init__(self, *args: Any, server: ToolServer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server = server
        if server is not None and server.header_names:
            self.fields["headers"].help_text = _(
                "Stored: %(names)s. Leave empty to keep them; type new ones to replace them all."
            ) % {"names": server.header_names}
            self.fields["remove_headers"] = forms.BooleanField(
                label=gettext_lazy("Remove the stored headers"), required=False
            )

    def clean_headers(self) -> dict[str, str] | None:
        text = self.cleaned_data["headers"]
        if not text.strip():
            return None
        try:
            return tool_services.parse_header_lines(text)
        except ServiceError as error:
            raise forms.ValidationError(error.message) from None

    def changes(self) -> dict[str, Any]:
        """The service's arguments: headers None keeps the stored ones, {} removes them."""
        data = self.cleaned_data
        headers = data["headers"]
        if headers is None and data.get("remove_headers"):
            headers = {}
        if headers is None and self.server is None:
            headers = {}
        return {
            "name": data["name"],
            "url": data["url"],
            "headers": headers,
            "enabled": data["enabled"],
            "timeout": data["timeout"],
        }


# --- helpers ----------------------------------------------------------------------------------


def _context(membership: Membership, project: Project, **extra: Any) -> dict[str, Any]:
    return {
        "project": project,
        "membership": membership,
        "organization": project.organization,
        **extra,
    }


def _to_list(project: Project) -> HttpResponse:
    return redirect("tool_servers", org_slug=project.organization.slug, project_slug=project.slug)


def _report_listing(
    request: HttpRequest, server: ToolServer, *, listed_before: datetime | None
) -> None:
    """What the listing just made found, or why it found nothing (``listed_at`` moves only
    when a listing succeeds)."""
    if server.listed_at is None or server.listed_at == listed_before:
        messages.error(
            request, _("“%(name)s”: %(error)s") % {"name": server.name, "error": server.last_error}
        )
        return
    count = len(server.tools)
    messages.success(
        request,
        ngettext(
            "“%(name)s” offers %(count)d tool.",
            "“%(name)s” offers %(count)d tools.",
            count,
        )
        % {"name": server.name, "count": count},
    )
    if server.last_error:  # some tools were left out, and why
        messages.warning(request, server.last_error)


# --- pages ------------------------------------------------------------------------------------


@project_view
def tool_server_list(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    servers = ToolServer.objects.for_project(project).order_by("name", "id")
    return render(
        request,
        "chat/tool_servers.html",
        _context(membership, project, servers=servers, builtins=list(BUILTIN_TOOLS.values())),
    )


def _form_page(
    request: AuthenticatedHttpRequest,
    membership: Membership,
    project: Project,
    server: ToolServer | None,
) -> HttpResponse:
    if request.method == "POST":
        form = ToolServerForm(request.POST, server=server)
    elif server is not None:
        initial = {
            "name": server.name,
            "url": server.url,
            "enabled": server.enabled,
            "timeout": server.timeout,
        }
        form = ToolServerForm(initial=initial, server=server)
    else:
        form = ToolServerForm()
    if request.method == "POST" and form.is_valid():
        listed_before = server.listed_at if server is not None else None
        try:
            if server is None:
                saved = tool_services.tool_server_create(
                    actor=membership, project=project, **form.changes()
                )
            else:
                saved = tool_services.tool_server_update(
                    actor=membership, server=server, **form.changes()
                )
        except ServiceError as error:
            raise_if_forbidden(error)
            form.add_error(error.param if error.param in form.fields else None, error.message)
            if server is not None:
                server.refresh_from_db()  # the page names it as it is saved, not as typed
        else:
            _report_listing(request, saved, listed_before=listed_before)
            return _to_list(project)
    return render(
        request,
        "chat/tool_server_form.html",
        _context(membership, project, form=form, server=server),
        status=400 if form.errors else 200,
    )


@project_view
def tool_server_new(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    require_manager(membership)
    return _form_page(request, membership, project, None)


@project_view
def tool_server_edit(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, server_id: int
) -> HttpResponse:
    require_manager(membership)
    server = tool_services.get_tool_server_or_404(project=project, server_id=server_id)
    return _form_page(request, membership, project, server)


@require_POST
@project_view
def tool_server_delete(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, server_id: int
) -> HttpResponse:
    require_manager(membership)
    server = tool_services.get_tool_server_or_404(project=project, server_id=server_id)
    try:
        tool_services.tool_server_delete(actor=membership, server=server)
    except ServiceError as error:
        raise_if_forbidden(error)
        messages.error(request, error.message)
    else:
        messages.success(request, _("Removed “%(name)s”.") % {"name": server.name})
    return _to_list(project)


@require_POST
@project_view
def tool_server_refresh(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, server_id: int
) -> HttpResponse:
    require_manager(membership)
    server = tool_services.get_tool_server_or_404(project=project, server_id=server_id)
    listed_before = server.listed_at
    try:
        server = tool_services.tool_server_refresh(actor=membership, server=server)
    except ServiceError as error:
        raise_if_forbidden(error)
        messages.error(request, error.message)
    else:
        _report_listing(request, server, listed_before=listed_before)
    if request.POST.get("next") == "edit":
        return redirect(
            "tool_server_edit",
            org_slug=project.organization.slug,
            project_slug=project.slug,
            server_id=server.pk,
        )
    return _to_list(project)
