"""REST: a conversation's image attachments (``…/conversations/<id>/attachments/``).

Upload an image (multipart, field ``file``) before posting the message it goes with, then name
it in that message's ``attachments``; read what a conversation holds. Reached like every
conversation endpoint: a person's own conversations and rooms, a key its project's API
conversations; an image not sent yet is its uploader's alone (a key's: the project's keys').

Does not import ``chat.api`` (which may serialize attachments with ``AttachmentSerializer``
from here): it resolves the conversation the same way, through the caller's ``Actor``.
"""

from __future__ import annotations

from typing import Any

from django.http import FileResponse, HttpResponseBase
from django.urls import reverse
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.mixins import ListModelMixin
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api_base import ProjectEndpoint
from core.schema import OPENAI_ERROR

from . import attachments, selectors
from .actors import Actor
from .models import Attachment, Conversation


class AttachmentSerializer(serializers.ModelSerializer[Attachment]):
    conversation = serializers.IntegerField(source="conversation_id", read_only=True)
    message = serializers.IntegerField(
        source="message_id",
        read_only=True,
        allow_null=True,
        help_text="The message it was sent with; null until then (only its uploader sees it).",
    )
    content_type = serializers.CharField(
        read_only=True, help_text="image/png, image/jpeg, image/webp or image/gif: its bytes'."
    )
    size = serializers.IntegerField(read_only=True, help_text="Bytes.")
    url = serializers.SerializerMethodField(help_text="Where to download its bytes.")

    class Meta:
        model = Attachment
        fields = [
            "id",
            "conversation",
            "message",
            "name",
            "content_type",
            "width",
            "height",
            "size",
            "sha256",
            "url",
            "created_at",
        ]
        read_only_fields = fields

    def get_url(self, attachment: Attachment) -> str:
        path = reverse(
            "api-attachment-file",
            args=[attachment.project_id, attachment.conversation_id, attachment.pk],
        )
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


class AttachmentUploadSerializer(serializers.Serializer[Any]):
    """The multipart body (documentation: the service checks the file itself)."""

    file = serializers.FileField(
        help_text="A PNG, JPEG, WebP or GIF image (CHAT_IMAGE_MAX_BYTES at most, 5 MB by "
        "default); its name and declared type must match its content."
    )


class AttachmentEndpoint(ProjectEndpoint):
    """Resolves ``self.conversation`` through the caller's scoped path, after the project."""

    conversation: Conversation

    @property
    def actor(self) -> Actor:
        return Actor.of(self.principal)

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.conversation = selectors.get_actor_conversation_or_404(
            actor=self.actor, project=self.project, pk=kwargs["conversation_id"]
        )

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "request": self.request}


@extend_schema(tags=["Conversations"])
class AttachmentListView(ListModelMixin, AttachmentEndpoint):
    """A conversation's images: those sent with its messages, and your uploads not sent yet."""

    serializer_class = AttachmentSerializer
    parser_classes = [MultiPartParser]

    def get_queryset(self) -> Any:
        return attachments.visible_attachments(actor=self.actor, conversation=self.conversation)

    def get(self, request: Request, project_id: int, conversation_id: int) -> Response:
        return self.list(request)

    @extend_schema(
        request={"multipart/form-data": AttachmentUploadSerializer},
        responses={201: AttachmentSerializer, 400: OPENAI_ERROR},
        description="Upload an image for your next message in this conversation (multipart, "
        "field file), then name its id in the message's attachments. Refused with 400 and a "
        "code: image_too_large (bytes or pixels), image_invalid (corrupt or truncated), "
        "image_type_not_allowed, image_mislabelled (its name or type says another format than "
        "its bytes), too_many_images (unsent uploads), image_missing.",
    )
    def post(self, request: Request, project_id: int, conversation_id: int) -> Response:
        attachment = attachments.attachment_create(
            actor=self.actor, conversation=self.conversation, upload=request.FILES.get("file")
        )
        return Response(
            AttachmentSerializer(attachment, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )


@extend_schema(tags=["Conversations"])
class AttachmentDetailView(AttachmentEndpoint):
    def _attachment(self, attachment_id: int) -> Attachment:
        return attachments.get_attachment_or_404(
            actor=self.actor, conversation=self.conversation, pk=attachment_id
        )

    @extend_schema(responses=AttachmentSerializer)
    def get(
        self, request: Request, project_id: int, conversation_id: int, attachment_id: int
    ) -> Response:
        attachment = self._attachment(attachment_id)
        return Response(
            AttachmentSerializer(attachment, context=self.get_serializer_context()).data
        )

    @extend_schema(
        responses={204: None, 400: OPENAI_ERROR},
        description="Remove an upload not sent yet (one sent with a message stays with it: "
        "400 attachment_sent).",
    )
    def delete(
        self, request: Request, project_id: int, conversation_id: int, attachment_id: int
    ) -> Response:
        attachments.attachment_delete(actor=self.actor, attachment=self._attachment(attachment_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


IMAGE_RESPONSE = OpenApiResponse(OpenApiTypes.BINARY, description="The image's bytes.")


@extend_schema(tags=["Conversations"])
class AttachmentFileView(AttachmentEndpoint):
    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # Whatever the client accepts, the answer is the image or a JSON refusal.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        responses={
            (200, content_type): IMAGE_RESPONSE
            for content_type in sorted(attachments.ALLOWED_TYPES)
        },
        description="The image as uploaded, with its content type (and nosniff).",
    )
    def get(
        self, request: Request, project_id: int, conversation_id: int, attachment_id: int
    ) -> HttpResponseBase:
        attachment = attachments.get_attachment_or_404(
            actor=self.actor, conversation=self.conversation, pk=attachment_id
        )
        response = FileResponse(attachment.file.open("rb"), content_type=attachment.content_type)
        response["X-Content-Type-Options"] = "nosniff"
        response["Content-Disposition"] = (
            content_disposition_header(False, attachment.name) or "inline"
        )
        response["Cache-Control"] = "private, max-age=3600"
        return response
