"""REST routes of this feature, included by config.api_urls: a conversation's attachments."""

from django.urls import URLPattern, path

from . import api_attachments

attachments = "v1/projects/<int:project_id>/conversations/<int:conversation_id>/attachments/"

urlpatterns: list[URLPattern] = [
    path(attachments, api_attachments.AttachmentListView.as_view(), name="api-attachments"),
    path(
        attachments + "<int:attachment_id>/",
        api_attachments.AttachmentDetailView.as_view(),
        name="api-attachment",
    ),
    path(
        attachments + "<int:attachment_id>/file/",
        api_attachments.AttachmentFileView.as_view(),
        name="api-attachment-file",
    ),
]
