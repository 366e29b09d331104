"""Pages of the gateway: a project's batches (made with its API keys), for its members.

Thin, like the other pages: ``project_view`` resolves the project for the signed-in member (an
outsider gets 404), and every batch and file is reached through ``for_project``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.paginator import Paginator
from django.http import (
    FileResponse,
    Http404,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotAllowed,
)
from django.shortcuts import render

from accounts.decorators import AuthenticatedHttpRequest, project_view
from accounts.models import Membership, Project

from .batches import ACTIVE, batch_files
from .models import Batch

BATCHES_PER_PAGE = 50


@dataclass(frozen=True)
class BatchRow:
    batch: Batch
    done: int  # lines run, answered or failed
    percent: int  # of the lines: the progress bar's width

    @property
    def running(self) -> bool:
        return self.batch.status in ACTIVE


def _row(batch: Batch) -> BatchRow:
    done = batch.completed + batch.failed
    percent = min(100, done * 100 // batch.total) if batch.total else 0
    return BatchRow(batch=batch, done=done, percent=percent)


def _context(membership: Membership, project: Project, **extra: object) -> dict[str, object]:
    return {
        "project": project,
        "organization": project.organization,
        "membership": membership,
        **extra,
    }


def _batch_or_404(project: Project, batch_id: str) -> Batch:
    batch = Batch.objects.for_project(project).filter(pk=batch_id).first()
    if batch is None:
        raise Http404
    return batch


def _read_only(request: AuthenticatedHttpRequest) -> HttpResponse | None:
    # After the tenancy check (an outsider's POST is a 404 like the rest): pages only show.
    return None if request.method in ("GET", "HEAD") else HttpResponseNotAllowed(["GET", "HEAD"])


@project_view
def batch_list(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    if refused := _read_only(request):
        return refused
    page = Paginator(
        Batch.objects.for_project(project).order_by("-created_at", "-id"), BATCHES_PER_PAGE
    ).get_page(request.GET.get("page"))
    rows = [_row(batch) for batch in page]
    return render(
        request, "gateway/batches.html", _context(membership, project, page=page, rows=rows)
    )


@project_view
def batch_detail(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, batch_id: str
) -> HttpResponse:
    batch = _batch_or_404(project, batch_id)
    if refused := _read_only(request):
        return refused
    return render(
        request,
        "gateway/batch_detail.html",
        _context(membership, project, row=_row(batch), files=batch_files(batch)),
    )


@project_view
def batch_file(
    request: AuthenticatedHttpRequest,
    membership: Membership,
    project: Project,
    batch_id: str,
    file_id: str,
) -> HttpResponseBase:
    """A file of the batch (its input, output or errors) to download; no other file."""
    batch = _batch_or_404(project, batch_id)
    stored = next((f for f in batch_files(batch) if f.id == file_id), None)
    if stored is None:
        raise Http404
    if refused := _read_only(request):
        return refused
    response = FileResponse(
        stored.file.open("rb"),
        as_attachment=True,
        filename=stored.filename,
        content_type="application/octet-stream",
    )
    response["X-Content-Type-Options"] = "nosniff"
    return response
