"""WebSocket routes: one conversation's live socket."""

from django.urls import path

from . import consumers

websocket_urlpatterns = [
    path(
        "ws/conversations/<int:conversation_id>/",
        consumers.ConversationConsumer.as_asgi(),
        name="ws_conversation",
    ),
]
