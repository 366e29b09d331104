"""Usage dashboard, ledger export and monthly statements. Thin: selectors do the reading."""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import gettext

from accounts.decorators import organization_view
from accounts.models import Membership

from . import pricing, selectors
from .forms import UsageRangeForm
from .selectors import DateRange, UsageScope


def _require_manager(membership: Membership) -> None:
    if not membership.can_manage:
        raise PermissionDenied(gettext("Only owners and admins see statements."))


def _date_range(request: HttpRequest) -> tuple[DateRange, str | None]:
    default = DateRange.month_to_date(timezone.now().date())
    return UsageRangeForm(request.GET, default=default).date_range()


@organization_view
def usage_dashboard(request: HttpRequest, membership: Membership) -> HttpResponse:
    date_range, range_error = _date_range(request)
    dashboard = selectors.usage_dashboard(
        scope=UsageScope.for_membership(membership), date_range=date_range
    )
    return render(
        request,
        "billing/usage.html",
        {
            "membership": membership,
            "organization": membership.organization,
            "dashboard": dashboard,
            "range_error": range_error,
        },
    )


# --- CSV ---------------------------------------------------------------------------------------


class _Line:
    """A write-only file for csv.writer: hands back the line it was given."""

    def write(self, value: str) -> str:
        return value


# Text a spreadsheet would run as a formula (project names and models are user input).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    if isinstance(value, Decimal):
        return f"{value:f}"  # every stored place, never "1.25E-8"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return "" if value is None else value


def _csv_chunks(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    """CSV text in chunks of a few hundred lines: fewer, larger writes to the client."""
    writer = csv.writer(_Line())
    chunk = [writer.writerow(header)]
    for row in rows:
        chunk.append(writer.writerow([_cell(value) for value in row]))
        if len(chunk) >= 500:
            yield "".join(chunk)
            chunk = []
    if chunk:
        yield "".join(chunk)


def _next_chunk(chunks: Iterator[str]) -> str | None:
    # next() with a default, as a one-signature function: sync_to_async(next) types only
    # next()'s first overload, the one without a default.
    return next(chunks, None)


async def _async_chunks(chunks: Iterator[str]) -> AsyncIterator[str]:
    # Thread-sensitive: each chunk is read on the request's sync thread, where the database
    # cursor was opened.
    next_chunk = sync_to_async(_next_chunk)
    while (chunk := await next_chunk(chunks)) is not None:
        yield chunk


def _csv_response(
    request: HttpRequest, chunks: Iterator[str], filename: str
) -> StreamingHttpResponse:
    # Under ASGI (Daphne) Django reads a sync iterator whole into memory before sending it;
    # an async one streams.
    content = _async_chunks(chunks) if isinstance(request, ASGIRequest) else chunks
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@organization_view
def usage_export(request: HttpRequest, membership: Membership) -> StreamingHttpResponse:
    """The range's ledger rows, same scope as the dashboard, cost exactly as stored."""
    date_range, _ = _date_range(request)
    scope = UsageScope.for_membership(membership)
    rows = selectors.ledger_export_rows(scope, date_range)
    header = [name for name, _ in selectors.EXPORT_COLUMNS]
    filename = (
        f"usage-{membership.organization.slug}-{date_range.start:%Y%m%d}-{date_range.end:%Y%m%d}"
        f"{'' if scope.is_whole_organization else '-mine'}.csv"
    )
    return _csv_response(request, _csv_chunks(header, rows), filename)


# --- statements --------------------------------------------------------------------------------


@organization_view
def statement_list(request: HttpRequest, membership: Membership) -> HttpResponse:
    _require_manager(membership)
    return render(
        request,
        "billing/statements.html",
        {
            "membership": membership,
            "organization": membership.organization,
            "statements": selectors.statements_for(membership.organization),
        },
    )


@organization_view
def statement_detail(request: HttpRequest, membership: Membership, pk: int) -> HttpResponse:
    _require_manager(membership)
    statement = selectors.get_statement_or_404(organization=membership.organization, pk=pk)
    lines = list(statement.lines.all())
    return render(
        request,
        "billing/statement_detail.html",
        {
            "membership": membership,
            "organization": membership.organization,
            "statement": statement,
            "lines": lines,
            # Models with no price on the month's last day: their lines read "unpriced".
            "unpriced_models": pricing.unpriced_models(
                {line.model for line in lines},
                on=(statement.period_end - timedelta(days=1)).date(),
            ),
        },
    )


STATEMENT_COLUMNS = ["project", "model", "calls", "prompt_tokens", "completion_tokens", "cost_usd"]


@organization_view
def statement_export(
    request: HttpRequest, membership: Membership, pk: int
) -> StreamingHttpResponse:
    _require_manager(membership)
    statement = selectors.get_statement_or_404(organization=membership.organization, pk=pk)
    rows = (
        (
            line.project_name or "(no project)",
            line.model,
            line.calls,
            line.prompt_tokens,
            line.completion_tokens,
            line.cost,
        )
        for line in statement.lines.all()
    )
    total = [("total", "", "", "", "", statement.total_cost)]
    filename = f"statement-{membership.organization.slug}-{statement.period_start:%Y-%m}.csv"
    chunks = _csv_chunks(STATEMENT_COLUMNS, [*rows, *total])
    return _csv_response(request, chunks, filename)
