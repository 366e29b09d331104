"""/v1 routes of this part, included by gateway.urls."""

from django.urls import URLPattern, path

from . import views_embeddings

urlpatterns: list[URLPattern] = [
    path("embeddings", views_embeddings.EmbeddingsView.as_view(), name="embeddings"),
]
