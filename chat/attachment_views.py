"""The chat page's image attachments: upload (the composer, with fetch), the image, its thumbnail.

Reached like every conversation page: the project through the person's membership, the
conversation through ``Conversation.objects.for_user`` (their own chats, the rooms they are
in); anything else is a 404, the same as a missing one. An image not sent yet is its
uploader's alone. Images are served with their stored type and ``nosniff``, so a browser never
reads one as anything else.

The method is checked after the conversation is resolved (not by a decorator before it), so
whoever may not read the conversation gets its 404 whatever the method: a 405 would tell them
the route exists.
"""

from __future__ import annotations

from django.http import (
    FileResponse,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotAllowed,
    JsonResponse,
)
from django.utils.http import content_disposition_header

from accounts.decorators import AuthenticatedHttpRequest, project_view
from accounts.models import Membership, Project
from core.errors import ServiceError

from . import attachments, selectors
from .actors import Actor
from .models import Attachment


def _served(response: HttpResponseBase, attachment: Attachment) -> HttpResponseBase:
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Disposition"] = content_disposition_header(False, attachment.name) or "inline"
    # Only for this reader: the session decides who may see it.
    response["Cache-Control"] = "private, max-age=3600"
    return response


@project_view
def attachment_upload(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    """POST (multipart field ``file``): 201 with the attachment, or 400 with the reason.
    GET: your uploads not sent yet (``{"attachments": [...]}``), so a reloaded page shows them
    in the composer again instead of losing them."""
    conversation = selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    actor = Actor(user=request.user)
    if request.method not in ("GET", "HEAD", "POST"):
        return HttpResponseNotAllowed(["GET", "HEAD", "POST"])
    if request.method != "POST":
        drafts = attachments.visible_attachments(actor=actor, conversation=conversation).filter(
            message__isnull=True
        )
        return JsonResponse({"attachments": [attachments.serialize_attachment(a) for a in drafts]})
    try:
        attachment = attachments.attachment_create(
            actor=actor,
            conversation=conversation,
            upload=request.FILES.get("file"),
        )
    except ServiceError as error:
        return JsonResponse(error.body(), status=error.status, headers=error.headers())
    return JsonResponse(attachments.serialize_attachment(attachment), status=201)


def _attachment(
    request: AuthenticatedHttpRequest, project: Project, pk: int, attachment_id: int
) -> Attachment:
    conversation = selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    return attachments.get_attachment_or_404(
        actor=Actor(user=request.user), conversation=conversation, pk=attachment_id
    )


@project_view
def attachment_file(
    request: AuthenticatedHttpRequest,
    membership: Membership,
    project: Project,
    pk: int,
    attachment_id: int,
) -> HttpResponseBase:
    attachment = _attachment(request, project, pk, attachment_id)
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    response = FileResponse(attachment.file.open("rb"), content_type=attachment.content_type)
    return _served(response, attachment)


@project_view
def attachment_thumbnail(
    request: AuthenticatedHttpRequest,
    membership: Membership,
    project: Project,
    pk: int,
    attachment_id: int,
) -> HttpResponseBase:
    attachment = _attachment(request, project, pk, attachment_id)
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    response = HttpResponse(
        attachments.attachment_thumbnail(attachment),
        content_type=attachments.thumbnail_content_type(attachment),
    )
    return _served(response, attachment)


@project_view
def attachment_delete(
    request: AuthenticatedHttpRequest,
    membership: Membership,
    project: Project,
    pk: int,
    attachment_id: int,
) -> HttpResponse:
    """Remove an upload not sent yet (the composer's remove button): 204, or 400 if it was
    sent with a message."""
    attachment = _attachment(request, project, pk, attachment_id)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    try:
        attachments.attachment_delete(actor=Actor(user=request.user), attachment=attachment)
    except ServiceError as error:
        return JsonResponse(error.body(), status=error.status, headers=error.headers())
    return HttpResponse(status=204)
