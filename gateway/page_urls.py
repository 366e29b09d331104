"""Pages of the gateway (a project's batches), included by config.urls."""

from django.urls import path

from . import pages

project = "orgs/<slug:org_slug>/projects/<slug:project_slug>/"
batch = project + "batches/<str:batch_id>/"

urlpatterns = [
    path(project + "batches/", pages.batch_list, name="batches"),
    path(batch, pages.batch_detail, name="batch_detail"),
    path(batch + "files/<str:file_id>/", pages.batch_file, name="batch_file"),
]
