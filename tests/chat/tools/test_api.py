"""REST: the tools a project offers, and its MCP servers. Managers write, members and keys
read (keys never write), charlie gets 404; headers are write-only, the address is shown to
managers only."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from chat.models import ToolServer
from tests.chat.conftest import make_key
from tests.chat.tools.conftest import TOKEN, add_server

pytestmark = pytest.mark.django_db


def api(name: str, project, **kwargs) -> str:
    return reverse(name, kwargs={"project_id": project.pk, **kwargs})


def post_json(client, url: str, body: dict | None = None, **extra):
    return client.post(url, data=json.dumps(body or {}), content_type="application/json", **extra)


def patch_json(client, url: str, body: dict, **extra):
    return client.patch(url, data=json.dumps(body), content_type="application/json", **extra)


def error_of(response) -> dict:
    return response.json()["error"]


@pytest.fixture
def maths(alice, project_a, mcp_server) -> ToolServer:
    return add_server(alice, project_a, mcp_server.url)


def body(url: str, **fields) -> dict:
    return {"name": "Maths", "url": url, "headers": {"Authorization": f"Bearer {TOKEN}"}, **fields}


def test_a_manager_adds_a_server_and_gets_its_tools(client_for, alice, project_a, mcp_server):
    response = post_json(
        client_for(alice), api("api-tool-servers", project_a), body(mcp_server.url)
    )

    assert response.status_code == 201, response.content
    data = response.json()
    assert TOKEN not in response.content.decode()
    assert "headers" not in data
    assert (data["name"], data["url"], data["header_names"]) == (
        "Maths",
        mcp_server.url,
        ["Authorization"],
    )
    assert data["key"] == f"mcp:{data['id']}"
    assert [tool["name"] for tool in data["tools"]] == ["add", "shout", "fail", "hang"]
    assert data["tools"][0]["input_schema"]["required"] == ["a", "b"]
    assert (data["enabled"], data["timeout"], data["last_error"]) == (True, 20.0, "")
    assert data["listed_at"] is not None


def test_an_unreachable_server_is_created_with_last_error(
    client_for, alice, project_a, closed_port
):
    url = f"http://127.0.0.1:{closed_port}/mcp"

    response = post_json(client_for(alice), api("api-tool-servers", project_a), body(url))

    assert response.status_code == 201
    assert response.json()["last_error"].startswith("Could not list the tools:")
    assert response.json()["tools"] == []


def test_an_address_the_policy_refuses_is_refused_naming_the_field(
    client_for, alice, project_a, mcp_server, settings
):
    settings.UPSTREAM_ALLOWED_NETWORKS = []

    response = post_json(
        client_for(alice), api("api-tool-servers", project_a), body(mcp_server.url)
    )

    error = error_of(response)
    assert response.status_code == 403  # as for a provider connection's address
    assert (error["code"], error["param"]) == ("upstream_address_refused", "url")
    assert "a loopback address" in error["message"]
    assert not ToolServer.objects.exists()
    assert mcp_server.authorizations == []


@pytest.mark.parametrize(
    ("fields", "param", "status"),
    [
        ({"url": "file:///etc/passwd"}, "url", 400),
        ({"headers": {"Host": "x"}}, "headers", 400),
        ({"headers": "Authorization: x"}, "headers", 400),
        ({"timeout": 0}, "timeout", 400),
        ({"colour": "red"}, "colour", 400),
        ({"name": ""}, "name", 400),
    ],
)
def test_bad_input_is_refused_naming_the_field(client_for, alice, project_a, fields, param, status):
    response = post_json(
        client_for(alice), api("api-tool-servers", project_a), body("http://127.0.0.1:9/") | fields
    )

    assert response.status_code == status
    assert error_of(response)["param"] == param
    assert not ToolServer.objects.exists()


def test_a_second_server_of_the_same_name_is_a_conflict(client_for, alice, project_a, maths):
    response = post_json(client_for(alice), api("api-tool-servers", project_a), body(maths.url))

    assert response.status_code == 409
    assert error_of(response)["code"] == "conflict"


def test_a_manager_updates_refreshes_and_deletes(client_for, alice, project_a, maths):
    client = client_for(alice)
    one = api("api-tool-server", project_a, server_id=maths.pk)

    changed = patch_json(client, one, {"name": "Maths II", "enabled": False, "timeout": 5})
    assert changed.status_code == 200, changed.content
    assert (changed.json()["name"], changed.json()["enabled"], changed.json()["timeout"]) == (
        "Maths II",
        False,
        5.0,
    )
    assert changed.json()["header_names"] == ["Authorization"]  # not sent: kept
    cleared = patch_json(client, one, {"headers": {}})
    assert cleared.json()["header_names"] == []
    assert "HTTP 401" in cleared.json()["last_error"]
    refreshed = post_json(client, api("api-tool-server-refresh", project_a, server_id=maths.pk))
    assert refreshed.status_code == 200
    assert "HTTP 401" in refreshed.json()["last_error"]

    assert client.delete(one).status_code == 204
    assert client.get(one).status_code == 404


def test_a_member_reads_without_the_address_but_does_not_write(client_for, bob, project_a, maths):
    client = client_for(bob)
    one = api("api-tool-server", project_a, server_id=maths.pk)

    listed = client.get(api("api-tool-servers", project_a)).json()
    read = client.get(one).json()

    assert listed["count"] == 1
    assert listed["results"][0]["url"] is None
    assert (read["name"], read["url"], read["header_names"]) == ("Maths", None, ["Authorization"])
    for response in (
        post_json(client, api("api-tool-servers", project_a), body(maths.url, name="Bob's")),
        patch_json(client, one, {"name": "Mine"}),
        post_json(client, api("api-tool-server-refresh", project_a, server_id=maths.pk)),
        client.delete(one),
    ):
        assert response.status_code == 403
        assert error_of(response)["code"] == "forbidden"
    assert list(ToolServer.objects.values_list("name", flat=True)) == ["Maths"]


def test_a_key_reads_but_never_writes(client, alice, org_a, project_a, maths):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {make_key(alice, org_a, project_a, ['chat', 'read'])}"}
    one = api("api-tool-server", project_a, server_id=maths.pk)

    assert client.get(api("api-tool-servers", project_a), **auth).status_code == 200
    assert client.get(one, **auth).json()["url"] is None
    assert client.get(api("api-tools", project_a), **auth).status_code == 200
    for response in (
        post_json(client, api("api-tool-servers", project_a), body(maths.url, name="K"), **auth),
        patch_json(client, one, {"name": "Keyed"}, **auth),
        post_json(client, api("api-tool-server-refresh", project_a, server_id=maths.pk), **auth),
        client.delete(one, **auth),
    ):
        assert response.status_code == 403
        assert error_of(response)["code"] == "keys_not_allowed"
    assert list(ToolServer.objects.values_list("name", flat=True)) == ["Maths"]


def test_a_key_without_the_read_scope_reads_nothing(client, alice, org_a, project_a, maths):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {make_key(alice, org_a, project_a, ['chat'])}"}

    response = client.get(api("api-tool-servers", project_a), **auth)

    assert response.status_code == 403
    assert error_of(response)["code"] == "insufficient_scope"


def test_charlie_gets_404_everywhere(client_for, charlie, project_a, maths):
    client = client_for(charlie)
    one = api("api-tool-server", project_a, server_id=maths.pk)
    refresh = api("api-tool-server-refresh", project_a, server_id=maths.pk)

    for response in (
        client.get(api("api-tools", project_a)),
        client.get(api("api-tool-servers", project_a)),
        post_json(client, api("api-tool-servers", project_a), body(maths.url, name="C")),
        client.get(one),
        patch_json(client, one, {"name": "Charlie's"}),
        client.delete(one),
        post_json(client, refresh),
    ):
        assert response.status_code == 404
    assert list(ToolServer.objects.values_list("name", flat=True)) == ["Maths"]


def test_another_projects_server_is_404(client_for, charlie, alice, project_b, maths):
    response = client_for(charlie).get(api("api-tool-server", project_b, server_id=maths.pk))

    assert response.status_code == 404


def test_a_session_write_needs_the_csrf_token(alice, project_a, mcp_server):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    refused = post_json(client, api("api-tool-servers", project_a), body(mcp_server.url))

    assert refused.status_code == 403
    assert "CSRF" in error_of(refused)["message"]
    assert not ToolServer.objects.exists()


def test_the_options_list_the_builtins_and_the_enabled_servers(client_for, bob, project_a, maths):
    ToolServer.objects.create(project=project_a, name="Off", url=maths.url, enabled=False)

    options = client_for(bob).get(api("api-tools", project_a)).json()

    assert [o["key"] for o in options] == [
        "calculator",
        "current_datetime",
        "search_conversations",
        "convert_units",
        f"mcp:{maths.pk}",
    ]
    assert options[0] == {
        "key": "calculator",
        "label": "Calculator",
        "description": options[0]["description"],
        "kind": "builtin",
        "tools": [],
    }
    assert options[-1]["kind"] == "mcp"
    assert options[-1]["tools"] == ["add", "shout", "fail", "hang"]


def test_the_schema_documents_the_routes(client):
    document = client.get("/api/schema/?format=json").json()

    paths = document["paths"]
    assert set(paths["/api/v1/projects/{project_id}/tool-servers/"]) == {"get", "post"}
    assert set(paths["/api/v1/projects/{project_id}/tool-servers/{server_id}/"]) == {
        "get",
        "patch",
        "delete",
    }
    assert "post" in paths["/api/v1/projects/{project_id}/tool-servers/{server_id}/refresh/"]
    assert "get" in paths["/api/v1/projects/{project_id}/tools/"]
    server = document["components"]["schemas"]["ToolServer"]["properties"]
    assert "headers" not in server
    assert server["url"]["nullable"] is True
