"""OpenAI-compatible API, mounted at ``/v1/``: point the ``openai`` SDK's base_url here."""

from django.urls import path

from . import openai_api

app_name = "openai_api"

urlpatterns = [
    path("models", openai_api.ModelListView.as_view(), name="models"),
    path("models/<path:model>", openai_api.ModelDetailView.as_view(), name="model"),
    path("chat/completions", openai_api.ChatCompletionsView.as_view(), name="chat_completions"),
]
