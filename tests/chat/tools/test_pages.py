"""The tools pages: everyone in the project sees the tools; owners and admins add, change,
refresh and remove MCP servers; charlie (another organization) gets 404 everywhere."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from chat.models import ToolServer
from providers.crypto import encrypt
from tests.chat.tools.conftest import TOKEN, add_server
from tests.test_csp import inline_code

pytestmark = pytest.mark.django_db


def page(name: str, *args) -> str:
    return reverse(name, args=["org-a", "project-a", *args])


def form(url: str, **fields) -> dict:
    return {
        "name": "Maths",
        "url": url,
        "headers": f"Authorization: Bearer {TOKEN}",
        "enabled": "on",
        "timeout": "20",
        **fields,
    }


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def maths(alice, project_a, mcp_server) -> ToolServer:
    return add_server(alice, project_a, mcp_server.url)


def test_everyone_in_the_project_sees_the_tools_but_not_the_address(client_for, bob, maths):
    response = client_for(bob).get(page("tool_servers"))

    html = response.content.decode()
    assert response.status_code == 200
    assert "Calculator" in html
    assert "<code>convert_units</code>" in html
    assert "Maths" in html
    assert "<code>add</code>" in html
    assert "Add two whole numbers." in html
    assert maths.url not in html  # some servers carry a secret in their address
    assert page("tool_server_new") not in html
    assert page("tool_server_refresh", maths.pk) not in html
    assert inline_code(html) == []


def test_a_manager_sees_the_address_the_header_names_and_the_actions(client_for, alice, maths):
    html = client_for(alice).get(page("tool_servers")).content.decode()

    assert maths.url in html
    assert "Headers: Authorization" in html
    assert TOKEN not in html
    for name in ("tool_server_new",):
        assert page(name) in html
    for name in ("tool_server_edit", "tool_server_refresh", "tool_server_delete"):
        assert page(name, maths.pk) in html


def test_a_manager_adds_a_server_and_its_tools_are_listed(client_for, alice, project_a, mcp_server):
    response = client_for(alice).post(page("tool_server_new"), form(mcp_server.url), follow=True)

    assert response.redirect_chain == [(page("tool_servers"), 302)]
    assert messages_of(response) == ["“Maths” offers 4 tools."]
    server = ToolServer.objects.get()
    assert [tool["name"] for tool in server.tools] == ["add", "shout", "fail", "hang"]
    assert server.header_names == "Authorization"
    assert TOKEN not in server.headers_encrypted
    assert set(mcp_server.authorizations) == {f"Bearer {TOKEN}"}


def test_a_server_that_cannot_be_reached_is_added_with_the_reason(
    client_for, alice, project_a, closed_port
):
    url = f"http://127.0.0.1:{closed_port}/mcp"

    response = client_for(alice).post(page("tool_server_new"), form(url), follow=True)

    [message] = messages_of(response)
    assert message.startswith("“Maths”: Could not list the tools: the connection failed")
    assert response.status_code == 200
    assert "Could not list the tools" in response.content.decode()  # on the list, too
    assert ToolServer.objects.get().last_error.startswith("Could not list the tools")


def test_an_address_the_policy_refuses_is_a_form_error(
    client_for, alice, project_a, mcp_server, settings
):
    settings.UPSTREAM_ALLOWED_NETWORKS = []

    response = client_for(alice).post(page("tool_server_new"), form(mcp_server.url))

    assert response.status_code == 400
    [error] = response.context["form"].errors["url"]
    assert "a loopback address" in error
    assert not ToolServer.objects.exists()
    assert mcp_server.authorizations == []
    assert TOKEN not in response.content.decode()  # typed headers do not come back


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"headers": "Authorization Bearer x"}, "headers", "Line 1 is not “Name: value”"),
        ({"headers": "Host: evil"}, "headers", "set by the MCP client itself"),
        ({"url": "ftp://example.com"}, "url", "http:// or https://"),
        ({"timeout": "0"}, "timeout", "greater than or equal to 1"),
        ({"name": ""}, "name", "required"),
    ],
)
def test_bad_input_is_shown_next_to_its_field(client_for, alice, project_a, fields, field, says):
    data = form("http://127.0.0.1:9/") | fields

    response = client_for(alice).post(page("tool_server_new"), data)

    assert response.status_code == 400
    assert says in " ".join(response.context["form"].errors[field])
    assert not ToolServer.objects.exists()


def test_a_manager_edits_a_server_and_the_headers_stay_unless_replaced(
    client_for, alice, maths, mcp_server
):
    client = client_for(alice)
    edit = page("tool_server_edit", maths.pk)

    shown = client.get(edit).content.decode()
    saved = client.post(edit, form(mcp_server.url, name="Maths II", headers="", timeout="7"))

    assert "Stored: Authorization" in shown
    assert TOKEN not in shown
    assert saved.status_code == 302
    maths.refresh_from_db()
    assert (maths.name, maths.timeout, maths.header_names) == ("Maths II", 7.0, "Authorization")
    assert maths.last_error == ""  # listed again, with the stored header


def test_the_stored_headers_can_be_removed(client_for, alice, maths, mcp_server):
    client_for(alice).post(
        page("tool_server_edit", maths.pk),
        form(mcp_server.url, headers="", remove_headers="on"),
    )

    maths.refresh_from_db()
    assert (maths.headers_encrypted, maths.header_names) == ("", "")
    assert "HTTP 401" in maths.last_error


def test_refresh_lists_the_tools_again(client_for, alice, project_a, mcp_server):
    server = ToolServer.objects.create(project=project_a, name="Bare", url=mcp_server.url)
    ToolServer.objects.filter(pk=server.pk).update(
        headers_encrypted=encrypt(json.dumps({"Authorization": f"Bearer {TOKEN}"}))
    )

    response = client_for(alice).post(page("tool_server_refresh", server.pk), follow=True)

    assert messages_of(response) == ["“Bare” offers 4 tools."]
    server.refresh_from_db()
    assert len(server.tools) == 4
    assert server.listed_at is not None


def test_refresh_from_the_edit_page_comes_back_to_it(client_for, alice, maths):
    response = client_for(alice).post(page("tool_server_refresh", maths.pk), {"next": "edit"})

    assert response.url == page("tool_server_edit", maths.pk)


def test_a_manager_removes_a_server(client_for, alice, maths):
    response = client_for(alice).post(page("tool_server_delete", maths.pk), follow=True)

    assert messages_of(response) == ["Removed “Maths”."]
    assert not ToolServer.objects.exists()


def test_removing_and_refreshing_take_a_post_only(client_for, alice, maths):
    client = client_for(alice)

    assert client.get(page("tool_server_delete", maths.pk)).status_code == 405
    assert client.get(page("tool_server_refresh", maths.pk)).status_code == 405
    assert ToolServer.objects.filter(pk=maths.pk).exists()


def test_a_member_may_only_look(client_for, bob, maths, mcp_server):
    client = client_for(bob)

    assert client.get(page("tool_server_new")).status_code == 403
    assert client.post(page("tool_server_new"), form(mcp_server.url, name="B")).status_code == 403
    assert client.get(page("tool_server_edit", maths.pk)).status_code == 403
    assert client.post(page("tool_server_edit", maths.pk), form(maths.url)).status_code == 403
    assert client.post(page("tool_server_refresh", maths.pk)).status_code == 403
    assert client.post(page("tool_server_delete", maths.pk)).status_code == 403
    assert list(ToolServer.objects.values_list("name", flat=True)) == ["Maths"]


def test_charlie_gets_404_everywhere(client_for, charlie, maths, mcp_server):
    client = client_for(charlie)

    for url in (page("tool_servers"), page("tool_server_new"), page("tool_server_edit", maths.pk)):
        assert client.get(url).status_code == 404
    for url in (
        page("tool_server_new"),
        page("tool_server_edit", maths.pk),
        page("tool_server_refresh", maths.pk),
        page("tool_server_delete", maths.pk),
    ):
        assert client.post(url, form(mcp_server.url)).status_code == 404
    assert ToolServer.objects.get().name == "Maths"


def test_another_projects_server_is_404(client_for, alice, org_a, maths):
    from tests.factories import ProjectFactory

    other = ProjectFactory(organization=org_a, name="Other", slug="other")
    url = reverse("tool_server_edit", args=["org-a", other.slug, maths.pk])

    assert client_for(alice).get(url).status_code == 404


def test_a_signed_out_visitor_is_sent_to_sign_in(maths):
    response = Client().get(page("tool_servers"))

    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_posts_need_the_csrf_token(alice, maths, mcp_server):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    for url, data in (
        (page("tool_server_new"), form(mcp_server.url, name="Other")),
        (page("tool_server_edit", maths.pk), form(mcp_server.url, name="Renamed")),
        (page("tool_server_refresh", maths.pk), {}),
        (page("tool_server_delete", maths.pk), {}),
    ):
        assert client.post(url, data).status_code == 403
    assert list(ToolServer.objects.values_list("name", flat=True)) == ["Maths"]


def test_the_form_page_has_no_inline_code(client_for, alice, maths):
    for url in (page("tool_server_new"), page("tool_server_edit", maths.pk)):
        assert inline_code(client_for(alice).get(url).content.decode()) == []
