"""REST routes of this feature, included by config.api_urls."""

from django.urls import URLPattern, path

from . import api_tools

PROJECT = "v1/projects/<int:project_id>/"
SERVER = PROJECT + "tool-servers/<int:server_id>/"

urlpatterns: list[URLPattern] = [
    path(PROJECT + "tools/", api_tools.ToolOptionListView.as_view(), name="api-tools"),
    path(
        PROJECT + "tool-servers/", api_tools.ToolServerListView.as_view(), name="api-tool-servers"
    ),
    path(SERVER, api_tools.ToolServerDetailView.as_view(), name="api-tool-server"),
    path(
        SERVER + "refresh/",
        api_tools.ToolServerRefreshView.as_view(),
        name="api-tool-server-refresh",
    ),
]
