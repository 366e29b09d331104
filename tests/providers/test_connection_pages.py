"""Project settings pages for provider connections and the models a project allows.

alice (owner) manages; bob (member) may only look at the Models page; charlie's 404s are in
tests/test_tenancy.py. Every upstream here is real: the fake OpenAI server, a closed port, a
socket that never answers, a small server that answers HTML.
"""

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.urls import reverse

from accounts.models import Membership, Project, Role
from providers import selectors as provider_selectors
from providers import services as provider_services
from providers.crypto import decrypt, encrypt, key_hint
from providers.models import ConnectionModel, ProjectModel, ProviderConnection
from tests.chat.conftest import FAKE_KEY, fake_connection
from tests.conftest import membership
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db

KEY = "sk-page-secret-9f8e7d6c5b4a"
NEW_KEY = "sk-rotated-secret-1a2b3c4d"


def url(name: str, project: Project, *args: int) -> str:
    return reverse(name, args=[project.organization.slug, project.slug, *args])


def form_data(**overrides) -> dict:
    data = {
        "kind": "openai_compatible",
        "name": "My vLLM",
        "base_url": "http://vllm:8000/v1",
        "api_key": KEY,
        "openai_organization": "",
        "openai_project": "",
        "timeout": "30",
        "max_retries": "1",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def make_connection(
    project: Project, base_url: str, *, api_key: str = KEY, name: str = "Upstream", **fields
) -> ProviderConnection:
    """A connection of the project, made by its owner: no retries, short timeout."""
    return provider_services.connection_create(
        actor=Membership.objects.get(organization=project.organization, role=Role.OWNER),
        project=project,
        kind=ProviderConnection.Kind.COMPATIBLE,
        name=name,
        base_url=base_url,
        api_key=api_key,
        **{"timeout": 5.0, "max_retries": 0, **fields},
    )


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def connection(alice, project_a, fake_upstream) -> ProviderConnection:
    return make_connection(project_a, fake_upstream.base_url, name="Fake upstream")


@pytest.fixture
def global_connection(fake_upstream) -> ProviderConnection:
    """A connection for everyone, kept by staff (like the server's OPENAI_API_KEY one)."""
    return ProviderConnection.objects.create(
        kind=ProviderConnection.Kind.COMPATIBLE,
        name="Staff upstream",
        base_url=fake_upstream.base_url,
        max_retries=0,
        timeout=5.0,
        api_key_encrypted=encrypt(FAKE_KEY),
        api_key_hint=key_hint(FAKE_KEY),
    )


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


class _HtmlHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>Welcome to nginx!</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def html_server() -> Iterator[str]:
    """A web server that is not an OpenAI one: every GET answers a 200 HTML page."""
    server = HTTPServer(("127.0.0.1", 0), _HtmlHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join()


# --- the list --------------------------------------------------------------------------------


def test_it_lists_the_connections_the_project_sees(
    client_for, alice, project_a, connection, global_connection
):
    provider_services.connection_create(
        actor=membership(alice, project_a.organization),
        project=None,
        kind="openai",
        name="Team OpenAI",
        api_key="sk-team-key-000011112222",
    )
    other_project = ProjectFactory(organization=project_a.organization, name="Other")
    hidden = make_connection(other_project, "http://other:1/v1", name="Sibling server")

    response = client_for(alice).get(url("connections", project_a))

    assert response.status_code == 200
    body = response.content.decode()
    assert "Fake upstream" in body
    assert '<span class="badge">this project</span>' in body
    assert "Team OpenAI" in body
    assert '<span class="badge">all projects of the organization</span>' in body
    assert "Staff upstream" in body
    assert '<span class="badge">everyone</span>' in body
    assert hidden.name not in body
    assert "sk-…5b4a" in body
    assert "sk-…2222" in body
    assert KEY not in body
    assert "sk-team-key-000011112222" not in body
    # Global connections are read-only here: testable, not editable.
    assert f'href="{url("connection_edit", project_a, connection.pk)}"' in body
    assert f'href="{url("connection_edit", project_a, global_connection.pk)}"' not in body
    assert url("connection_delete", project_a, global_connection.pk) not in body
    assert url("connection_refresh", project_a, global_connection.pk) not in body
    assert url("connection_test", project_a, global_connection.pk) in body


def test_it_counts_models_and_shows_the_last_refresh(client_for, alice, project_a, connection):
    client = client_for(alice)
    before = client.get(url("connections", project_a)).content.decode()
    assert "never" in before

    client.post(url("connection_refresh", project_a, connection.pk))

    row = client.get(url("connections", project_a)).context["connections"].get(pk=connection.pk)
    assert row.model_count == 2
    assert row.models_refreshed_at is not None


# --- create and edit -------------------------------------------------------------------------


def test_it_creates_a_connection_for_the_project(client_for, alice, project_a):
    response = client_for(alice).post(url("connection_new", project_a), form_data(), follow=True)

    connection = ProviderConnection.objects.get(name="My vLLM")
    assert response.redirect_chain[-1][0] == url("connection_edit", project_a, connection.pk)
    assert (connection.organization, connection.project) == (project_a.organization, project_a)
    assert (connection.kind, connection.base_url) == ("openai_compatible", "http://vllm:8000/v1")
    assert (connection.timeout, connection.max_retries, connection.created_by) == (30, 1, alice)
    assert decrypt(connection.api_key_encrypted) == KEY
    assert connection.api_key_hint == "sk-…5b4a"
    assert KEY not in response.content.decode()
    assert KEY not in connection.api_key_encrypted


def test_it_shares_a_connection_with_the_organization(client_for, alice, project_a):
    client_for(alice).post(url("connection_new", project_a), form_data(shared="on"))

    connection = ProviderConnection.objects.get(name="My vLLM")
    assert (connection.organization, connection.project) == (project_a.organization, None)
    assert connection.scope_label == "all projects of the organization"


@pytest.mark.parametrize(
    ("overrides", "field", "error"),
    [
        ({"base_url": ""}, "base_url", "needs its base URL"),
        ({"base_url": "ftp://files.example.com"}, "base_url", "http:// or https://"),
        ({"kind": "openai", "api_key": "", "base_url": ""}, "api_key", "needs an API key"),
        ({"kind": "local"}, "kind", "Select a valid choice"),
        ({"timeout": ""}, "timeout", "required"),
        ({"max_retries": "-1"}, "max_retries", "greater than or equal to 0"),
    ],
)
def test_a_bad_form_comes_back_with_its_errors(
    client_for, alice, project_a, overrides, field, error
):
    response = client_for(alice).post(url("connection_new", project_a), form_data(**overrides))

    assert response.status_code == 200
    assert error in " ".join(response.context["form"].errors[field])
    assert not ProviderConnection.objects.filter(name="My vLLM").exists()
    assert KEY not in response.content.decode()  # not even typed back into the form


def test_the_edit_form_never_shows_the_key(client_for, alice, project_a, connection):
    response = client_for(alice).get(url("connection_edit", project_a, connection.pk))

    body = response.content.decode()
    assert response.status_code == 200
    assert KEY not in body
    assert "Leave empty to keep the current key (sk-…5b4a)." in body
    assert 'name="api_key"' in body
    assert 'type="password"' in body
    assert 'name="kind"' not in body  # kind and scope are fixed once created


def test_editing_with_an_empty_key_keeps_it(client_for, alice, project_a, connection):
    data = form_data(name="Renamed", base_url=connection.base_url, api_key="", timeout="7")

    response = client_for(alice).post(url("connection_edit", project_a, connection.pk), data)

    assert response.status_code == 302
    connection.refresh_from_db()
    assert (connection.name, connection.timeout) == ("Renamed", 7)
    assert decrypt(connection.api_key_encrypted) == KEY
    assert connection.api_key_hint == "sk-…5b4a"


def test_editing_with_a_new_key_replaces_it(client_for, alice, project_a, connection):
    data = form_data(base_url=connection.base_url, api_key=NEW_KEY)

    response = client_for(alice).post(
        url("connection_edit", project_a, connection.pk), data, follow=True
    )

    connection.refresh_from_db()
    assert decrypt(connection.api_key_encrypted) == NEW_KEY
    assert connection.api_key_hint == "sk-…3c4d"
    body = response.content.decode()
    assert NEW_KEY not in body
    assert KEY not in body
    assert "sk-…3c4d" in body


def test_a_bad_edit_comes_back_with_its_errors(client_for, alice, project_a, connection):
    data = form_data(base_url="", api_key=NEW_KEY)

    response = client_for(alice).post(url("connection_edit", project_a, connection.pk), data)

    assert response.status_code == 200
    assert "needs its base URL" in " ".join(response.context["form"].errors["base_url"])
    connection.refresh_from_db()
    assert connection.base_url
    assert decrypt(connection.api_key_encrypted) == KEY
    assert NEW_KEY not in response.content.decode()


def test_another_projects_own_connection_is_not_found(client_for, alice, project_a):
    """The organization's managers reach it through its own project's URL only."""
    other_project = ProjectFactory(organization=project_a.organization, name="Other")
    theirs = make_connection(other_project, "http://127.0.0.1:9/v1")
    model = ConnectionModel.objects.create(connection=theirs, name="m")
    client = client_for(alice)

    for name, args in [
        ("connection_edit", [theirs.pk]),
        ("connection_delete", [theirs.pk]),
        ("connection_test", [theirs.pk]),
        ("connection_refresh", [theirs.pk]),
        ("connection_model_add", [theirs.pk]),
        ("connection_model_remove", [theirs.pk, model.pk]),
    ]:
        assert client.post(url(name, project_a, *args), {"name": "x"}).status_code == 404, name
    assert client.get(url("connection_edit", other_project, theirs.pk)).status_code == 200
    assert ProviderConnection.objects.filter(pk=theirs.pk, name="Upstream").exists()


def test_a_global_connection_is_read_only(client_for, alice, project_a, global_connection):
    client = client_for(alice)
    model = ConnectionModel.objects.create(connection=global_connection, name="m")

    for name, args in [
        ("connection_edit", [global_connection.pk]),
        ("connection_delete", [global_connection.pk]),
        ("connection_refresh", [global_connection.pk]),
        ("connection_model_add", [global_connection.pk]),
        ("connection_model_remove", [global_connection.pk, model.pk]),
    ]:
        assert client.post(url(name, project_a, *args), {"name": "x"}).status_code == 404, name
    global_connection.refresh_from_db()
    assert global_connection.name == "Staff upstream"
    assert list(global_connection.models.values_list("name", flat=True)) == ["m"]


# --- delete ----------------------------------------------------------------------------------


def test_it_deletes_a_connection_after_asking(client_for, alice, project_a, connection):
    client = client_for(alice)

    confirm = client.get(url("connection_delete", project_a, connection.pk))
    assert confirm.status_code == 200
    assert "Delete Fake upstream?" in confirm.content.decode()

    response = client.post(url("connection_delete", project_a, connection.pk), follow=True)

    assert response.redirect_chain[-1][0] == url("connections", project_a)
    assert messages_of(response) == ["Deleted “Fake upstream”."]
    assert not ProviderConnection.objects.filter(pk=connection.pk).exists()


def test_a_connection_in_use_is_not_deleted(client_for, alice, project_a, connection):
    model = provider_services.connection_model_add(
        actor=None, connection=connection, name="fake-gpt"
    )
    provider_services.project_models_set(
        actor=membership(alice, project_a.organization),
        project=project_a,
        model_ids=[model.pk],
        default_id=model.pk,
    )

    response = client_for(alice).post(url("connection_delete", project_a, connection.pk))

    assert response.status_code == 200
    [message] = messages_of(response)
    assert "“Fake upstream” is still in use by Project A: fake-gpt." in message
    assert "“Fake upstream” is still in use by Project A: fake-gpt." in response.content.decode()
    assert ProviderConnection.objects.filter(pk=connection.pk).exists()


# --- test connection -------------------------------------------------------------------------


def check(client, project: Project, connection: ProviderConnection):
    response = client.post(url("connection_test", project, connection.pk), follow=True)
    assert response.redirect_chain[-1][0] == url("connections", project)
    [message] = response.context["messages"]
    return message.level_tag, str(message), response


def test_testing_a_good_connection_says_so(client_for, alice, project_a, connection):
    level, text, _ = check(client_for(alice), project_a, connection)

    assert (level, text) == ("success", "“Fake upstream”: Connected: 2 models available.")
    assert not connection.models.exists()  # testing adds nothing


def test_testing_a_bad_key_says_so(client_for, alice, project_a, fake_upstream):
    connection = make_connection(project_a, fake_upstream.base_url, api_key="sk-bad")

    level, text, _ = check(client_for(alice), project_a, connection)

    assert (level, text) == ("error", "“Upstream”: The server refused the API key.")


def test_testing_an_unreachable_server_says_so(client_for, alice, project_a, closed_port):
    connection = make_connection(project_a, f"http://127.0.0.1:{closed_port}/v1")

    level, text, _ = check(client_for(alice), project_a, connection)

    assert (level, text) == ("error", "“Upstream”: The server cannot be reached at that address.")


def test_testing_a_server_that_never_answers_times_out(client_for, alice, project_a, silent_port):
    connection = make_connection(project_a, f"http://127.0.0.1:{silent_port}/v1", timeout=0.5)

    level, text, _ = check(client_for(alice), project_a, connection)

    assert (level, text) == ("error", "“Upstream”: No answer within 0.5 s.")


def test_testing_a_url_without_v1_says_it_is_not_openai(
    client_for, alice, project_a, fake_upstream
):
    base = fake_upstream.base_url.removesuffix("/v1")
    connection = make_connection(project_a, base)

    level, text, _ = check(client_for(alice), project_a, connection)

    assert level == "error"
    assert "not like an OpenAI-compatible server" in text


def test_testing_a_web_page_says_it_is_not_openai(client_for, alice, project_a, html_server):
    connection = make_connection(project_a, html_server)

    level, text, _ = check(client_for(alice), project_a, connection)

    assert level == "error"
    assert "not like an OpenAI-compatible server" in text


def test_a_keyless_server_can_be_tested(client_for, alice, project_a, fake_upstream):
    """Ollama, LM Studio, vLLM without --api-key: no key is stored, and that must work."""
    connection = make_connection(project_a, fake_upstream.base_url, api_key="")

    level, text, _ = check(client_for(alice), project_a, connection)

    assert (level, text) == ("success", "“Upstream”: Connected: 2 models available.")


def test_a_global_connection_can_be_tested(client_for, alice, project_a, global_connection):
    level, text, _ = check(client_for(alice), project_a, global_connection)

    assert (level, text) == ("success", "“Staff upstream”: Connected: 2 models available.")


def test_testing_from_the_edit_page_comes_back_to_it(client_for, alice, project_a, connection):
    response = client_for(alice).post(
        url("connection_test", project_a, connection.pk), {"next": "edit"}
    )

    assert response.url == url("connection_edit", project_a, connection.pk)


# --- the connection's models -----------------------------------------------------------------


def test_refreshing_adds_the_servers_models(client_for, alice, project_a, connection):
    response = client_for(alice).post(
        url("connection_refresh", project_a, connection.pk), {"next": "edit"}, follow=True
    )

    assert response.redirect_chain[-1][0] == url("connection_edit", project_a, connection.pk)
    assert messages_of(response) == ["“Fake upstream” serves 2 models: fake-gpt, fake-gpt-mini."]
    assert sorted(connection.models.values_list("name", "fetched")) == [
        ("fake-gpt", True),
        ("fake-gpt-mini", True),
    ]
    body = response.content.decode()
    assert "fake-gpt-mini" in body
    assert "listed by the server" in body


def test_a_failed_refresh_changes_nothing(client_for, alice, project_a, closed_port):
    connection = make_connection(project_a, f"http://127.0.0.1:{closed_port}/v1")

    response = client_for(alice).post(
        url("connection_refresh", project_a, connection.pk), follow=True
    )

    assert messages_of(response) == ["“Upstream”: The server cannot be reached at that address."]
    connection.refresh_from_db()
    assert connection.models_refreshed_at is None
    assert not connection.models.exists()


def test_a_model_can_be_added_by_name(client_for, alice, project_a, connection):
    data = {"name": "llama3.1:8b", "context_window": "131072", "supports_tools": "on"}

    response = client_for(alice).post(
        url("connection_model_add", project_a, connection.pk), data, follow=True
    )

    assert messages_of(response) == ["Added the model llama3.1:8b."]
    model = connection.models.get()
    assert (model.name, model.context_window, model.fetched) == ("llama3.1:8b", 131072, False)
    assert (model.supports_vision, model.supports_tools, model.supports_json) == (
        False,
        True,
        False,
    )


def test_a_bad_model_form_comes_back_with_its_errors(client_for, alice, project_a, connection):
    response = client_for(alice).post(
        url("connection_model_add", project_a, connection.pk), {"name": "", "context_window": "0"}
    )

    assert response.status_code == 200
    errors = response.context["model_form"].errors
    assert set(errors) == {"name", "context_window"}
    # Shown on the edit page, whose settings form still posts to the edit URL.
    edit = url("connection_edit", project_a, connection.pk)
    assert f'action="{edit}"' in response.content.decode()
    assert not connection.models.exists()


def test_a_model_can_be_removed(client_for, alice, project_a, connection):
    model = ConnectionModel.objects.create(connection=connection, name="old-model")

    response = client_for(alice).post(
        url("connection_model_remove", project_a, connection.pk, model.pk), follow=True
    )

    assert messages_of(response) == ["Removed the model old-model."]
    assert not connection.models.exists()


def test_a_model_a_project_allows_is_not_removed(client_for, alice, project_a, connection):
    model = ConnectionModel.objects.create(connection=connection, name="fake-gpt")
    ProjectModel.objects.create(project=project_a, model=model, name=model.name, is_default=True)

    response = client_for(alice).post(
        url("connection_model_remove", project_a, connection.pk, model.pk), follow=True
    )

    [message] = messages_of(response)
    assert "fake-gpt is allowed in a project" in message
    assert connection.models.filter(pk=model.pk).exists()


# --- the models page -------------------------------------------------------------------------


@pytest.fixture
def fake_models(connection) -> tuple[ConnectionModel, ConnectionModel]:
    provider_services.connection_refresh_models(actor=None, connection=connection)
    return connection.models.get(name="fake-gpt"), connection.models.get(name="fake-gpt-mini")


def test_without_an_allow_list_every_model_is_allowed(client_for, alice, project_a, fake_models):
    response = client_for(alice).get(url("project_models", project_a))

    body = response.content.decode()
    assert response.status_code == 200
    assert "No allow-list: every model of the connections this project sees is allowed" in body
    names = [c.name for c in response.context["choices"]]
    assert names == ["smollm2-135m-instruct", "fake-gpt", "fake-gpt-mini"]
    assert response.context["selected"] == set()
    assert f'name="allowed" value="{fake_models[0].pk}"' in body


def test_the_models_page_sets_the_allow_list_and_default(client_for, alice, project_a, fake_models):
    gpt, mini = fake_models
    data = {"allowed": [gpt.pk, mini.pk], "default": mini.pk}

    response = client_for(alice).post(url("project_models", project_a), data, follow=True)

    assert messages_of(response) == ["Saved: 2 models allowed."]
    choices = provider_selectors.model_choices(project_a)
    assert [(c.name, c.is_default) for c in choices] == [
        ("fake-gpt-mini", True),
        ("fake-gpt", False),
    ]
    assert response.context["selected"] == {gpt.pk, mini.pk}
    assert response.context["default_id"] == mini.pk
    assert "This project allows only the models below." in response.content.decode()


def test_saving_nothing_goes_back_to_every_model(client_for, alice, project_a, fake_models):
    gpt, _ = fake_models
    client = client_for(alice)
    client.post(
        url("project_models", project_a), {"allowed": [gpt.pk], "default": gpt.pk}, follow=True
    )
    assert ProjectModel.objects.filter(project=project_a).count() == 1

    response = client.post(url("project_models", project_a), {}, follow=True)

    assert messages_of(response) == ["Every model of the visible connections is allowed."]
    assert not ProjectModel.objects.filter(project=project_a).exists()
    assert provider_selectors.default_model_name(project_a) == "smollm2-135m-instruct"


def test_a_default_outside_the_allow_list_is_refused(client_for, alice, project_a, fake_models):
    gpt, mini = fake_models

    response = client_for(alice).post(
        url("project_models", project_a), {"allowed": [gpt.pk], "default": mini.pk}
    )

    assert response.status_code == 200
    assert "Choose the default among the allowed models." in response.content.decode()
    assert response.context["selected"] == {gpt.pk}  # what was asked, to fix it
    assert not ProjectModel.objects.filter(project=project_a).exists()


def test_a_model_the_project_cannot_see_is_refused(
    client_for, alice, project_a, project_b, fake_upstream
):
    elsewhere = fake_connection(project_b, fake_upstream)
    theirs = ConnectionModel.objects.create(connection=elsewhere, name="fake-gpt")

    response = client_for(alice).post(
        url("project_models", project_a), {"allowed": [theirs.pk], "default": theirs.pk}
    )

    assert response.status_code == 200
    assert response.context["form"].errors
    assert not ProjectModel.objects.exists()


# --- members ---------------------------------------------------------------------------------


def test_a_member_can_view_the_models_page(client_for, bob, alice, project_a, fake_models):
    gpt, _ = fake_models
    provider_services.project_models_set(
        actor=membership(alice, project_a.organization),
        project=project_a,
        model_ids=[gpt.pk],
        default_id=gpt.pk,
    )

    response = client_for(bob).get(url("project_models", project_a))

    body = response.content.decode()
    assert response.status_code == 200
    assert "fake-gpt" in body
    assert "Only owners and admins" in body
    assert 'name="allowed"' not in body
    assert 'type="submit"' not in body.split("</header>")[1]
    assert url("connections", project_a) not in body


def test_a_member_sees_only_the_models_link(client_for, bob, project_a):
    body = client_for(bob).get(url("project_detail", project_a)).content.decode()
    assert url("project_models", project_a) in body
    assert url("connections", project_a) not in body
    # The project's settings page is a manager's: a member is refused it outright.
    assert client_for(bob).get(url("project_settings", project_a)).status_code == 403


def test_a_manager_sees_both_links(client_for, alice, project_a):
    for page in ("project_detail", "project_settings"):
        body = client_for(alice).get(url(page, project_a)).content.decode()
        assert url("project_models", project_a) in body, page
        assert url("connections", project_a) in body, page


def test_a_member_is_refused_every_change(client_for, bob, project_a, connection, fake_models):
    gpt, _ = fake_models
    client = client_for(bob)
    pages = [
        ("connections", []),
        ("connection_new", []),
        ("connection_edit", [connection.pk]),
        ("connection_delete", [connection.pk]),
    ]
    actions = [
        *pages,
        ("connection_test", [connection.pk]),
        ("connection_refresh", [connection.pk]),
        ("connection_model_add", [connection.pk]),
        ("connection_model_remove", [connection.pk, gpt.pk]),
        ("project_models", []),
    ]
    payload = {**form_data(), "name": "x", "allowed": [gpt.pk], "default": gpt.pk}

    for name, args in pages:
        assert client.get(url(name, project_a, *args)).status_code == 403, name
    for name, args in actions:
        assert client.post(url(name, project_a, *args), payload).status_code == 403, name

    connection.refresh_from_db()
    assert connection.name == "Fake upstream"
    assert sorted(connection.models.values_list("name", flat=True)) == ["fake-gpt", "fake-gpt-mini"]
    assert not ProjectModel.objects.exists()
    assert ProviderConnection.objects.filter(project=project_a).count() == 1


# --- the key never leaves ----------------------------------------------------------------------


def test_no_page_and_no_admin_page_shows_the_key(
    client_for, alice, bob, project_a, connection, fake_models
):
    provider_services.connection_update(
        actor=membership(alice, project_a.organization),
        connection=connection,
        name=connection.name,
        base_url=connection.base_url,
        api_key=NEW_KEY,
        timeout=5.0,
        max_retries=0,
    )
    staff = UserFactory(email="staff@example.com", is_staff=True, is_superuser=True)
    pages = [
        (alice, url("connections", project_a)),
        (alice, url("connection_new", project_a)),
        (alice, url("connection_edit", project_a, connection.pk)),
        (alice, url("connection_delete", project_a, connection.pk)),
        (alice, url("project_models", project_a)),
        (alice, url("project_detail", project_a)),
        (alice, url("project_settings", project_a)),
        (bob, url("project_models", project_a)),
        (staff, reverse("admin:providers_providerconnection_changelist")),
        (staff, reverse("admin:providers_providerconnection_change", args=[connection.pk])),
        (staff, reverse("admin:providers_connectionmodel_changelist")),
        (staff, reverse("admin:providers_connectionmodel_change", args=[fake_models[0].pk])),
    ]

    for user, page in pages:
        response = client_for(user).get(page)
        body = response.content.decode()
        assert response.status_code == 200, page
        assert NEW_KEY not in body, page
        assert KEY not in body, page
        assert FAKE_KEY not in body, page
    assert "sk-…3c4d" in client_for(alice).get(url("connections", project_a)).content.decode()
