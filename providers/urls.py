"""Project settings pages for provider connections and the models a project allows."""

from django.urls import path

from . import views

project_settings = "orgs/<slug:org_slug>/projects/<slug:project_slug>/settings/"
connections = project_settings + "connections/"
connection = connections + "<int:pk>/"

urlpatterns = [
    # Project settings: provider connections and the models the project allows.
    path(connections, views.connection_list, name="connections"),
    path(connections + "new/", views.connection_new, name="connection_new"),
    path(connection, views.connection_edit, name="connection_edit"),
    path(connection + "delete/", views.connection_delete, name="connection_delete"),
    path(connection + "test/", views.connection_test, name="connection_test"),
    path(connection + "refresh/", views.connection_refresh, name="connection_refresh"),
    path(
        connection + "models/add/",
        views.connection_model_add,
        name="connection_model_add",
    ),
    path(
        connection + "models/<int:model_pk>/remove/",
        views.connection_model_remove,
        name="connection_model_remove",
    ),
    path(project_settings + "models/", views.project_models, name="project_models"),
]
