"""The REST API, mounted at ``/api/``: ``v1/`` resources, the OpenAPI schema and its docs page."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from accounts import api as accounts_api
from billing import api as billing_api
from chat import api as chat_api
from chat import api_personas as chat_api_personas
from chat import api_summaries as chat_api_summaries

PROJECT = "v1/projects/<int:project_id>/"
CONVERSATION = PROJECT + "conversations/<int:conversation_id>/"
ROOM = PROJECT + "rooms/<int:room_id>/"

urlpatterns = [
    path("v1/projects/", accounts_api.ProjectListView.as_view(), name="api-projects"),
    path(PROJECT, accounts_api.ProjectDetailView.as_view(), name="api-project"),
    path(PROJECT + "models/", chat_api.ModelListView.as_view(), name="api-models"),
    path(
        PROJECT + "conversations/",
        chat_api.ConversationListView.as_view(),
        name="api-conversations",
    ),
    path(CONVERSATION, chat_api.ConversationDetailView.as_view(), name="api-conversation"),
    path(CONVERSATION + "messages/", chat_api.MessageListView.as_view(), name="api-messages"),
    path(CONVERSATION + "stop/", chat_api.ConversationStopView.as_view(), name="api-stop"),
    path(
        CONVERSATION + "summary/",
        chat_api_summaries.ConversationSummaryView.as_view(),
        name="api-summary",
    ),
    path(PROJECT + "rooms/", chat_api.RoomListView.as_view(), name="api-rooms"),
    path(ROOM, chat_api.RoomDetailView.as_view(), name="api-room"),
    path(ROOM + "members/", chat_api.RoomMemberListView.as_view(), name="api-room-members"),
    path(
        ROOM + "members/<int:user_id>/",
        chat_api.RoomMemberDetailView.as_view(),
        name="api-room-member",
    ),
    path(PROJECT + "personas/", chat_api_personas.PersonaListView.as_view(), name="api-personas"),
    path(
        PROJECT + "personas/<int:persona_id>/",
        chat_api_personas.PersonaDetailView.as_view(),
        name="api-persona",
    ),
    path(PROJECT + "usage/", billing_api.UsageView.as_view(), name="api-usage"),
    path(PROJECT + "keys/", accounts_api.ApiKeyListView.as_view(), name="api-keys"),
    path(PROJECT + "keys/<int:key_id>/", accounts_api.ApiKeyDetailView.as_view(), name="api-key"),
    path(
        PROJECT + "keys/<int:key_id>/revoke/",
        accounts_api.ApiKeyRevokeView.as_view(),
        name="api-key-revoke",
    ),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
]
