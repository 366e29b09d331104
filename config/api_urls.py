"""The REST API, mounted at ``/api/``: ``v1/`` resources, the OpenAPI schema and its docs page."""

from csp.constants import NONCE
from csp.decorators import csp_update
from django.urls import include, path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)

from accounts import api as accounts_api
from billing import api as billing_api
from chat import api as chat_api
from chat import api_personas as chat_api_personas
from chat import api_summaries as chat_api_summaries

# The Redoc page alone loosens the policy (config/settings/base.py), only as far as Redoc needs;
# its scripts still come from our origin only.
# - style-src: the style elements Redoc's styled-components create carry this request's nonce
#   (templates/drf_spectacular/redoc.html hands it to Redoc). The one its bundle adds on loading,
#   perfect-scrollbar's, comes before any nonce is known: it is let in by its hash (and that of
#   the empty element it starts as), computed from the bundle of drf-spectacular-sidecar
#   2026.10.1; after an upgrade, open /api/redoc/ in a browser and update them from the console.
# - worker-src blob: Redoc's search runs in a worker built from a blob.
REDOC_CSP = {
    "style-src": [
        NONCE,
        "'sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc='",
        "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",
    ],
    "worker-src": ["'self'", "blob:"],
}

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
        CONVERSATION + "messages/<int:message_id>/versions/",
        chat_api.MessageVersionListView.as_view(),
        name="api-message-versions",
    ),
    path(
        CONVERSATION + "messages/<int:message_id>/select/",
        chat_api.MessageSelectView.as_view(),
        name="api-message-select",
    ),
    path(PROJECT + "folders/", chat_api.FolderListView.as_view(), name="api-folders"),
    path(
        PROJECT + "folders/<int:folder_id>/", chat_api.FolderDetailView.as_view(), name="api-folder"
    ),
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
    path("", include("chat.tool_api_urls")),
    path("", include("chat.attachment_api_urls")),
    path("", include("chat.moderation_api_urls")),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file (?script): no inline script.
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path(
        "redoc/",
        csp_update(REDOC_CSP)(SpectacularRedocView.as_view(url_name="api-schema")),
        name="api-redoc",
    ),
]
