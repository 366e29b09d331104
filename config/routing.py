"""WebSocket routes of every app, in one list so the tenancy test can walk them."""

websocket_urlpatterns: list = []
