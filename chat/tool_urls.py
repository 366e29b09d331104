"""Routes of this feature, included by chat.urls / config.api_urls."""

from django.urls import URLPattern, path

from . import tool_views

tools = "orgs/<slug:org_slug>/projects/<slug:project_slug>/chat/tools/"
server = tools + "<int:server_id>/"

# Everyone in the project sees the page; owners and admins add, change and remove servers.
urlpatterns: list[URLPattern] = [
    path(tools, tool_views.tool_server_list, name="tool_servers"),
    path(tools + "new/", tool_views.tool_server_new, name="tool_server_new"),
    path(server, tool_views.tool_server_edit, name="tool_server_edit"),
    path(server + "delete/", tool_views.tool_server_delete, name="tool_server_delete"),
    path(server + "refresh/", tool_views.tool_server_refresh, name="tool_server_refresh"),
]
