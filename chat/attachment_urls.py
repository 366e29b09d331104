"""Routes of this feature, included by chat.urls: a conversation's image attachments."""

from django.urls import URLPattern, path

from . import attachment_views

attachments = "orgs/<slug:org_slug>/projects/<slug:project_slug>/chat/<int:pk>/attachments/"

urlpatterns: list[URLPattern] = [
    path(attachments, attachment_views.attachment_upload, name="attachment_upload"),
    path(
        attachments + "<int:attachment_id>/",
        attachment_views.attachment_file,
        name="attachment_file",
    ),
    path(
        attachments + "<int:attachment_id>/thumbnail/",
        attachment_views.attachment_thumbnail,
        name="attachment_thumbnail",
    ),
    path(
        attachments + "<int:attachment_id>/delete/",
        attachment_views.attachment_delete,
        name="attachment_delete",
    ),
]
