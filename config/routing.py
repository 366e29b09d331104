"""WebSocket routes of every app, in one list so the tenancy test can walk them."""

from chat.routing import websocket_urlpatterns as chat_routes

websocket_urlpatterns = [*chat_routes]
