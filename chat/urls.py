"""The chat pages: a project's conversations (the live chat itself runs over ``chat.routing``)."""

from django.urls import include, path

from . import views

project = "orgs/<slug:org_slug>/projects/<slug:project_slug>/chat/"
conversation = project + "<int:pk>/"

urlpatterns = [
    path(project, views.chat_home, name="chat_home"),
    path(project + "new/", views.conversation_new, name="conversation_new"),
    path(project + "rooms/", views.room_list, name="room_list"),
    path(conversation + "share/", views.room_share, name="room_share"),
    path(conversation + "members/<int:user_id>/remove/", views.room_remove, name="room_remove"),
    path(conversation, views.conversation_detail, name="conversation_detail"),
    path(conversation + "rename/", views.conversation_rename, name="conversation_rename"),
    path(conversation + "delete/", views.conversation_delete, name="conversation_delete"),
    path(conversation + "settings/", views.conversation_settings, name="conversation_settings"),
    path(conversation + "summarize/", views.conversation_summarize, name="conversation_summarize"),
    # The sidebar: pin, archive, file in a folder; the person's folders; the archive.
    path(conversation + "pin/", views.conversation_pin, name="conversation_pin"),
    path(conversation + "archive/", views.conversation_archive, name="conversation_archive"),
    path(conversation + "move/", views.conversation_move, name="conversation_move"),
    path(project + "archived/", views.chat_archived, name="chat_archived"),
    path(project + "folders/", views.folder_create, name="folder_create"),
    path(project + "folders/<int:folder_id>/rename/", views.folder_rename, name="folder_rename"),
    path(project + "folders/<int:folder_id>/delete/", views.folder_delete, name="folder_delete"),
    path(project + "settings/", views.chat_settings, name="chat_settings"),
    path(
        conversation + "export.<str:fmt>",
        views.conversation_export,
        name="conversation_export",
    ),
    # The project's personas: everyone sees them, owners and admins change them.
    path(project + "personas/", views.persona_list, name="personas"),
    path(project + "personas/new/", views.persona_new, name="persona_new"),
    path(project + "personas/<int:persona_id>/", views.persona_edit, name="persona_edit"),
    path(
        project + "personas/<int:persona_id>/enabled/",
        views.persona_set_enabled,
        name="persona_set_enabled",
    ),
    path(
        project + "personas/<int:persona_id>/delete/",
        views.persona_delete,
        name="persona_delete",
    ),
    # Tools (MCP servers), image attachments and moderation: routes of their own modules.
    path("", include("chat.tool_urls")),
    path("", include("chat.attachment_urls")),
    path("", include("chat.moderation_urls")),
]
