"""The owners' audit log page and its CSV. Thin: the form reads the filters, selectors read."""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render

from accounts.decorators import organization_view
from accounts.models import Membership

from . import selectors
from .forms import AuditFilterForm
from .models import AuditEvent


@organization_view
def audit_log(request: HttpRequest, membership: Membership) -> HttpResponse:
    selectors.check_owner(membership)
    organization = membership.organization
    form = AuditFilterForm(request.GET, organization=organization)
    events = selectors.events_for(organization, form.filters()).select_related("project")
    page = Paginator(events, selectors.PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "audit/log.html",
        {
            "membership": membership,
            "organization": organization,
            "form": form,
            "page": page,
            "query": query.urlencode(),
        },
    )


# --- CSV ---------------------------------------------------------------------------------------

CSV_HEADER = [
    "time_utc", "action", "description", "actor", "project", "target_type", "target_id",
    "target", "changes", "ip",
]  # fmt: skip
# What a spreadsheet would run as a formula: names, labels and tags are the tenant's input.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> str:
    """One CSV cell that a spreadsheet shows as text, never runs as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def csv_rows(events: Iterable[AuditEvent]) -> Iterator[list[str]]:
    for event in events:
        yield [
            cell(value)
            for value in (
                event.created_at.isoformat(),
                event.action,
                event.get_action_display(),
                event.actor_label,
                event.project_name,
                event.target_type,
                event.target_id,
                event.target_label,
                json.dumps(event.changes, ensure_ascii=False, sort_keys=True),
                event.ip,
            )
        ]


class _Line:
    """A write-only file for csv.writer: hands back the line it was given."""

    def write(self, value: str) -> str:
        return value


def _chunks(rows: Iterator[list[str]]) -> Iterator[str]:
    """CSV text a few hundred lines at a time: fewer, larger writes to the client."""
    writer = csv.writer(_Line())
    chunk = [writer.writerow(CSV_HEADER)]
    for row in rows:
        chunk.append(writer.writerow(row))
        if len(chunk) >= 500:
            yield "".join(chunk)
            chunk = []
    if chunk:
        yield "".join(chunk)


def _next_chunk(chunks: Iterator[str]) -> str | None:
    return next(chunks, None)


async def _async_chunks(chunks: Iterator[str]) -> AsyncIterator[str]:
    # Thread-sensitive: each chunk is read on the request's sync thread, where the database
    # cursor was opened. Under ASGI a sync iterator would be read whole into memory first.
    next_chunk = sync_to_async(_next_chunk)
    while (chunk := await next_chunk(chunks)) is not None:
        yield chunk


@organization_view
def audit_export(request: HttpRequest, membership: Membership) -> StreamingHttpResponse:
    """The events the page shows with the same filters, every page of them, newest first."""
    selectors.check_owner(membership)
    organization = membership.organization
    filters = AuditFilterForm(request.GET, organization=organization).filters()
    events = selectors.events_for(organization, filters).iterator(chunk_size=2000)
    chunks = _chunks(csv_rows(events))
    content = _async_chunks(chunks) if isinstance(request, ASGIRequest) else chunks
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    filename = f"audit-{organization.slug}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
