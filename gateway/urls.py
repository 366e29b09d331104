"""OpenAI-compatible API, mounted at ``/v1/``: point the ``openai`` SDK's base_url here."""

from django.urls import include, path

from . import views

app_name = "openai_api"  # the URL names predate the app: kept

urlpatterns = [
    path("models", views.ModelListView.as_view(), name="models"),
    path("models/<path:model>", views.ModelDetailView.as_view(), name="model"),
    path("chat/completions", views.ChatCompletionsView.as_view(), name="chat_completions"),
    path("", include("gateway.urls_responses")),
    path("", include("gateway.urls_embeddings")),
    path("", include("gateway.urls_files")),
    path("", include("gateway.urls_moderations")),
]
