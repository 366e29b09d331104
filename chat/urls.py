from django.urls import path

from . import connection_views, views

project = "orgs/<slug:org_slug>/projects/<slug:project_slug>/chat/"
conversation = project + "<int:pk>/"
project_settings = "orgs/<slug:org_slug>/projects/<slug:project_slug>/settings/"
connections = project_settings + "connections/"
connection = connections + "<int:pk>/"

urlpatterns = [
    path(project, views.chat_home, name="chat_home"),
    path(project + "new/", views.conversation_new, name="conversation_new"),
    path(conversation, views.conversation_detail, name="conversation_detail"),
    path(conversation + "rename/", views.conversation_rename, name="conversation_rename"),
    path(conversation + "delete/", views.conversation_delete, name="conversation_delete"),
    path(conversation + "settings/", views.conversation_settings, name="conversation_settings"),
    path(
        conversation + "export.<str:fmt>",
        views.conversation_export,
        name="conversation_export",
    ),
    # Project settings: provider connections and the models the project allows.
    path(connections, connection_views.connection_list, name="connections"),
    path(connections + "new/", connection_views.connection_new, name="connection_new"),
    path(connection, connection_views.connection_edit, name="connection_edit"),
    path(connection + "delete/", connection_views.connection_delete, name="connection_delete"),
    path(connection + "test/", connection_views.connection_test, name="connection_test"),
    path(connection + "refresh/", connection_views.connection_refresh, name="connection_refresh"),
    path(
        connection + "models/add/",
        connection_views.connection_model_add,
        name="connection_model_add",
    ),
    path(
        connection + "models/<int:model_pk>/remove/",
        connection_views.connection_model_remove,
        name="connection_model_remove",
    ),
    path(project_settings + "models/", connection_views.project_models, name="project_models"),
]
