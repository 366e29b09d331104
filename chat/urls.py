"""The chat pages: a project's conversations (the live chat itself runs over ``chat.routing``)."""

from django.urls import path

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
    path(
        conversation + "export.<str:fmt>",
        views.conversation_export,
        name="conversation_export",
    ),
]
