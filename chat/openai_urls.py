"""OpenAI-compatible API, mounted at ``/v1/``: point the ``openai`` SDK's base_url here."""

from django.urls import path

from . import openai_api

app_name = "openai_api"

urlpatterns = [
    path("models", openai_api.models, name="models"),
    path("chat/completions", openai_api.chat_completions, name="chat_completions"),
]
