"""/v1 routes of this part, included by gateway.urls: files and batches (their ids are looked
up in the calling key's own project: the key is the tenant)."""

from django.urls import path

from . import views_files as views

urlpatterns = [
    path("files", views.FileListView.as_view(), name="files"),
    path("files/<str:file_id>", views.FileDetailView.as_view(), name="file"),
    path("files/<str:file_id>/content", views.FileContentView.as_view(), name="file_content"),
    path("batches", views.BatchListView.as_view(), name="batches"),
    path("batches/<str:batch_id>", views.BatchDetailView.as_view(), name="batch"),
    path("batches/<str:batch_id>/cancel", views.BatchCancelView.as_view(), name="batch_cancel"),
]
