"""Charlie (owner of org B) must get 404 on every URL that names an object of org A.

The test walks the whole URLConf, so it fails closed: a new route that takes an id or slug
and has no entry in TENANT_ROUTES (or a reasoned one in NOT_TENANT_SCOPED) fails
``test_every_route_with_arguments_is_covered`` until someone adds it.
"""

from collections.abc import Callable, Iterator

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from config.routing import websocket_urlpatterns

pytestmark = pytest.mark.django_db

# Routes outside tenancy, and why.
NOT_TENANT_SCOPED = {
    # Staff-only; the admin is where staff see across tenants by design. Non-staff are sent
    # to the admin login (tested in tests/test_admin.py).
    "admin:*": "staff only",
    "password_reset_confirm": "a signed one-time token, not an object id",
    "invitation_accept": "a secret one-time token; tested in tests/accounts/test_members.py",
    "email_verify": "a signed token naming the account; tested in "
    "tests/accounts/test_verification.py",
    "openai_api:model": "a model name looked up in the calling key's own project (the key is "
    "the tenant); tested in tests/gateway/test_openai_api.py",
    "openai_api:response": "a response id looked up in the calling key's own project (the key is "
    "the tenant; another project's id answers 404); tested in tests/gateway/test_v1_responses.py",
    "openai_api:response_input_items": "as openai_api:response; tested in "
    "tests/gateway/test_v1_responses.py",
    "openai_api:file": "a file id looked up in the calling key's own project (the key is the "
    "tenant); tested in tests/gateway/test_v1_files.py",
    "openai_api:file_content": "as openai_api:file",
    "openai_api:batch": "a batch id looked up in the calling key's own project (the key is the "
    "tenant); tested in tests/gateway/test_v1_batches.py",
    "openai_api:batch_cancel": "as openai_api:batch",
}


def _org(w) -> dict:
    return {"org_slug": w.org_a.slug}


def _project(w) -> dict:
    return {"org_slug": w.org_a.slug, "project_slug": w.project_a.slug}


# route name -> the URL kwargs that point at org A's objects.
TENANT_ROUTES: dict[str, Callable] = {
    "organization_settings": _org,
    "organization_retention": _org,
    "audit_log": _org,
    "audit_export": _org,
    "organization_delete": _org,
    "organization_delete_cancel": _org,
    "account_delete_transfer": _org,
    "organization_rename": _org,
    "organization_two_factor": _org,
    "member_invite": _org,
    "member_change_role": lambda w: {**_org(w), "pk": w.bob_membership.pk},
    "member_remove": lambda w: {**_org(w), "pk": w.bob_membership.pk},
    "invitation_revoke": lambda w: {**_org(w), "pk": w.invitation.pk},
    "invitation_resend": lambda w: {**_org(w), "pk": w.invitation.pk},
    "project_create": _org,
    "project_detail": _project,
    "project_settings": _project,
    "project_delete": _project,
    "chat_home": _project,
    "conversation_new": _project,
    "conversation_detail": lambda w: {**_project(w), "pk": w.conversation.pk},
    "conversation_rename": lambda w: {**_project(w), "pk": w.conversation.pk},
    "conversation_delete": lambda w: {**_project(w), "pk": w.conversation.pk},
    "conversation_settings": lambda w: {**_project(w), "pk": w.conversation.pk},
    "conversation_summarize": lambda w: {**_project(w), "pk": w.conversation.pk},
    "conversation_pin": lambda w: {**_project(w), "pk": w.conversation.pk},
    "conversation_archive": lambda w: {**_project(w), "pk": w.conversation.pk},
    "conversation_move": lambda w: {**_project(w), "pk": w.conversation.pk},
    "chat_archived": _project,
    "folder_create": _project,
    "folder_rename": lambda w: {**_project(w), "folder_id": w.folder.pk},
    "folder_delete": lambda w: {**_project(w), "folder_id": w.folder.pk},
    "chat_settings": _project,
    "conversation_export": lambda w: {**_project(w), "pk": w.conversation.pk, "fmt": "json"},
    "personas": _project,
    "persona_new": _project,
    "persona_edit": lambda w: {**_project(w), "persona_id": w.persona.pk},
    "persona_set_enabled": lambda w: {**_project(w), "persona_id": w.persona.pk},
    "persona_delete": lambda w: {**_project(w), "persona_id": w.persona.pk},
    "room_list": _project,
    "room_share": lambda w: {**_project(w), "pk": w.room.pk},
    "room_remove": lambda w: {**_project(w), "pk": w.room.pk, "user_id": w.room_member.pk},
    "connections": _project,
    "connection_new": _project,
    "connection_edit": lambda w: {**_project(w), "pk": w.connection.pk},
    "connection_delete": lambda w: {**_project(w), "pk": w.connection.pk},
    "connection_test": lambda w: {**_project(w), "pk": w.connection.pk},
    "connection_refresh": lambda w: {**_project(w), "pk": w.connection.pk},
    "connection_model_add": lambda w: {**_project(w), "pk": w.connection.pk},
    "connection_model_remove": lambda w: {
        **_project(w),
        "pk": w.connection.pk,
        "model_pk": w.connection_model.pk,
    },
    "project_models": _project,
    "api_keys": _project,
    "api_key_revoke": lambda w: {**_project(w), "pk": w.api_key.pk},
    "usage_dashboard": _org,
    "usage_export": _org,
    "statement_list": _org,
    "statement_detail": lambda w: {**_org(w), "pk": w.statement.pk},
    "statement_export": lambda w: {**_org(w), "pk": w.statement.pk},
    "budgets": _org,
    "budget_edit": lambda w: {**_org(w), "pk": w.budget.pk},
    "budget_delete": lambda w: {**_org(w), "pk": w.budget.pk},
    "project_limits": _project,
    "api_key_limits": lambda w: {**_project(w), "pk": w.api_key.pk},
    "batches": _project,
    "batch_detail": lambda w: {**_project(w), "batch_id": w.batch.pk},
    "batch_file": lambda w: {**_project(w), "batch_id": w.batch.pk, "file_id": w.batch_input.pk},
    "tool_servers": _project,
    "tool_server_new": _project,
    "tool_server_edit": lambda w: {**_project(w), "server_id": w.tool_server.pk},
    "tool_server_delete": lambda w: {**_project(w), "server_id": w.tool_server.pk},
    "tool_server_refresh": lambda w: {**_project(w), "server_id": w.tool_server.pk},
    "moderation_settings": _project,
    "moderation_flags": _project,
    "attachment_upload": lambda w: {**_project(w), "pk": w.conversation.pk},
    "attachment_file": lambda w: {
        **_project(w),
        "pk": w.conversation.pk,
        "attachment_id": w.attachment.pk,
    },
    "attachment_thumbnail": lambda w: {
        **_project(w),
        "pk": w.conversation.pk,
        "attachment_id": w.attachment.pk,
    },
    "attachment_delete": lambda w: {
        **_project(w),
        "pk": w.conversation.pk,
        "attachment_id": w.attachment.pk,
    },
}


def _api_project(w) -> dict:
    return {"project_id": w.project_a.pk}


# REST routes (/api/v1/): an outsider gets 404 whatever the method; an API key of another
# project gets the 401 every unusable key gets.
API_ROUTES: dict[str, Callable] = {
    "api-audit-events": lambda w: {"organization_id": w.org_a.pk},
    "api-project": _api_project,
    "api-models": _api_project,
    "api-conversations": _api_project,
    "api-conversation": lambda w: {**_api_project(w), "conversation_id": w.conversation.pk},
    "api-messages": lambda w: {**_api_project(w), "conversation_id": w.conversation.pk},
    "api-stop": lambda w: {**_api_project(w), "conversation_id": w.conversation.pk},
    "api-message-versions": lambda w: {
        **_api_project(w),
        "conversation_id": w.conversation.pk,
        "message_id": w.message.pk,
    },
    "api-message-select": lambda w: {
        **_api_project(w),
        "conversation_id": w.conversation.pk,
        "message_id": w.message.pk,
    },
    "api-folders": _api_project,
    "api-folder": lambda w: {**_api_project(w), "folder_id": w.folder.pk},
    "api-summary": lambda w: {**_api_project(w), "conversation_id": w.conversation.pk},
    "api-rooms": _api_project,
    "api-room": lambda w: {**_api_project(w), "room_id": w.room.pk},
    "api-room-members": lambda w: {**_api_project(w), "room_id": w.room.pk},
    "api-room-member": lambda w: {
        **_api_project(w),
        "room_id": w.room.pk,
        "user_id": w.room_member.pk,
    },
    "api-personas": _api_project,
    "api-persona": lambda w: {**_api_project(w), "persona_id": w.persona.pk},
    "api-usage": _api_project,
    "api-keys": _api_project,
    "api-key": lambda w: {**_api_project(w), "key_id": w.api_key.pk},
    "api-key-revoke": lambda w: {**_api_project(w), "key_id": w.api_key.pk},
    "api-budgets": lambda w: {"organization_id": w.org_a.pk},
    "api-budget": lambda w: {"organization_id": w.org_a.pk, "budget_id": w.budget.pk},
    "api-rate-limits": _api_project,
    "api-key-rate-limits": lambda w: {**_api_project(w), "key_id": w.api_key.pk},
    "api-tools": _api_project,
    "api-tool-servers": _api_project,
    "api-tool-server": lambda w: {**_api_project(w), "server_id": w.tool_server.pk},
    "api-tool-server-refresh": lambda w: {**_api_project(w), "server_id": w.tool_server.pk},
    "api-moderation": _api_project,
    "api-moderation-flags": _api_project,
    "api-attachments": lambda w: {**_api_project(w), "conversation_id": w.conversation.pk},
    "api-attachment": lambda w: {
        **_api_project(w),
        "conversation_id": w.conversation.pk,
        "attachment_id": w.attachment.pk,
    },
    "api-attachment-file": lambda w: {
        **_api_project(w),
        "conversation_id": w.conversation.pk,
        "attachment_id": w.attachment.pk,
    },
}

# Conversations and folders belong to one person: other members of the same organization get
# 404 too.
PRIVATE_TO_OWNER = {
    name for name in TENANT_ROUTES if name.startswith(("conversation_", "folder_", "attachment_"))
} - {"conversation_new", "folder_create"}

# WebSocket route name -> the kwargs that point at org A's objects.
TENANT_SOCKETS: dict[str, Callable] = {
    "ws_conversation": lambda w: {"conversation_id": w.conversation.pk},
}

# Frames of the conversation socket (chat.consumers.ConversationConsumer.FRAMES) -> what an
# outsider sends on a socket of their own to reach org A's objects through it. Each is refused
# with an ``error`` event and changes nothing.
TENANT_SOCKET_FRAMES: dict[str, Callable] = {
    "regenerate": lambda w: {"message_id": w.reply.pk},
    "edit": lambda w: {"message_id": w.message.pk, "content": "mine now"},
    "select": lambda w: {"message_id": w.reply.pk},
    "model": lambda w: {"model": w.connection_model.name},  # a model only A's project has
}
# Frames that name nothing but the socket's own conversation (checked before accept()).
SOCKET_FRAMES_WITHOUT_OBJECTS = {"message", "stop", "sync", "typing"}


def walk(patterns, prefix: str = "", namespace: str = "") -> Iterator[tuple[str, str, set]]:
    """(name, route, argument names) of every named route, includes flattened."""
    for entry in patterns:
        if isinstance(entry, URLResolver):
            ns = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from walk(entry.url_patterns, prefix + str(entry.pattern), ns)
        elif isinstance(entry, URLPattern):
            args = set(entry.pattern.converters) if hasattr(entry.pattern, "converters") else set()
            if entry.pattern.regex.groupindex:
                args |= set(entry.pattern.regex.groupindex)
            yield f"{namespace}{entry.name}", prefix + str(entry.pattern), args


def routes_with_arguments(patterns) -> dict[str, str]:
    return {name: route for name, route, args in walk(patterns) if args}


def is_exempt(name: str) -> bool:
    return name in NOT_TENANT_SCOPED or any(
        key.endswith(":*") and name.startswith(key[:-1]) for key in NOT_TENANT_SCOPED
    )


def test_every_route_with_arguments_is_covered():
    missing = [
        f"{name} ({route})"
        for name, route in routes_with_arguments(get_resolver().url_patterns).items()
        if name not in TENANT_ROUTES and name not in API_ROUTES and not is_exempt(name)
    ]
    assert not missing, f"add these routes to TENANT_ROUTES or NOT_TENANT_SCOPED: {missing}"


def test_every_api_route_is_covered():
    missing = [
        f"{name} ({route})"
        for name, route, _ in walk(get_resolver().url_patterns)
        if route.startswith("api/v1/")
        and name not in API_ROUTES
        # The caller's own: their projects, their data (no object id to guess).
        and name not in ("api-projects", "api-me-export")
    ]
    assert not missing, f"add these REST routes to API_ROUTES: {missing}"


def test_every_socket_route_with_arguments_is_covered():
    missing = [
        f"{name} ({route})"
        for name, route in routes_with_arguments(websocket_urlpatterns).items()
        if name not in TENANT_SOCKETS
    ]
    assert not missing, f"add these socket routes to TENANT_SOCKETS: {missing}"


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def world(alice, bob, charlie, org_a, project_a, project_b, closed_port):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from accounts.api_keys import api_key_create
    from accounts.models import Invitation, Membership, hash_token
    from billing.models import Budget, Statement
    from chat.actors import Actor
    from chat.attachments import attachment_create, attachments_link
    from chat.models import Conversation, Folder, Message, Persona
    from providers.models import ConnectionModel, ProviderConnection

    class World:
        pass

    w = World()
    w.org_a, w.project_a = org_a, project_a
    w.bob_membership = Membership.objects.get(user=bob, organization=org_a)
    w.invitation = Invitation.objects.create(
        organization=org_a,
        email="someone@example.com",
        token_digest=hash_token("t"),
        expires_at="2999-01-01T00:00:00Z",
    )
    w.conversation = Conversation.objects.create(project=project_a, owner=alice, model="fake-gpt")
    w.message = Message.objects.create(conversation=w.conversation, role="user", content="hi")
    w.reply = Message.objects.create(
        conversation=w.conversation, parent=w.message, role="assistant", content="hello"
    )
    # An image sent with Alice's message (a real file: the owner's GETs read it).
    w.attachment = attachment_create(
        actor=Actor(user=alice),
        conversation=w.conversation,
        upload=SimpleUploadedFile("a.png", _png(), "image/png"),
    )
    attachments_link(attachments=[w.attachment], message=w.message)
    # Alice's own folder: Bob, in her organization, must not reach it either.
    w.folder = Folder.objects.create(project=project_a, owner=alice, name="Trips")
    # One of the personas every project starts with.
    w.persona = Persona.objects.for_project(project_a).get(tag="chatbot")
    # A room Alice shares with Bob: Charlie, in another organization, must never reach it.
    w.room = Conversation.objects.create(
        project=project_a, owner=alice, model="fake-gpt", sharing=Conversation.Sharing.MEMBERS
    )
    w.room.room_members.create(user=bob)
    w.room_member = bob
    # Unreachable on purpose (a closed port): the owner's GETs must not wait on a network.
    w.connection = ProviderConnection.objects.create(
        organization=org_a,
        project=project_a,
        kind=ProviderConnection.Kind.COMPATIBLE,
        name="A's server",
        base_url=f"http://127.0.0.1:{closed_port}/v1",
        max_retries=0,
    )
    w.connection_model = ConnectionModel.objects.create(connection=w.connection, name="a-model")
    w.api_key = api_key_create(
        actor=Membership.objects.get(user=alice, organization=org_a),
        project=project_a,
        name="A's bot",
        scopes=["chat"],
    ).key
    w.statement = Statement.objects.create(
        organization=org_a,
        period_start="2026-10-01T00:00:00Z",
        period_end="2026-11-01T00:00:00Z",
        total_cost="12.5",
    )
    w.budget = Budget.objects.create(organization=org_a, scope="organization", limit_usd="10")
    # An MCP server of project A (at a closed port: nothing answers there).
    from chat.models import ToolServer

    w.tool_server = ToolServer.objects.create(
        project=project_a, name="A's tools", url=f"http://127.0.0.1:{closed_port}/mcp"
    )
    # A batch of project A's key, with its input file.
    from django.core.files.base import ContentFile

    from gateway.models import Batch, File

    w.batch_input = File(project=project_a, api_key=w.api_key, purpose="batch", filename="in.jsonl")
    w.batch_input.file.save("in.jsonl", ContentFile(b"{}\n"), save=False)
    w.batch_input.save()
    w.batch = Batch.objects.create(
        project=project_a,
        api_key=w.api_key,
        endpoint="/v1/chat/completions",
        input_file=w.batch_input,
        total=1,
    )
    return w


@pytest.mark.parametrize("name", sorted(TENANT_ROUTES))
def test_an_outsider_gets_404(name, world, client_for, charlie):
    url = reverse(name, kwargs=TENANT_ROUTES[name](world))
    client = client_for(charlie)

    assert client.get(url).status_code in (404, 405), f"GET {url}"
    assert client.post(url, {"name": "x", "role": "owner", "email": "c@x.io"}).status_code == 404


@pytest.mark.parametrize("name", sorted(TENANT_ROUTES))
def test_an_anonymous_visitor_is_sent_to_log_in(name, world, client):
    url = reverse(name, kwargs=TENANT_ROUTES[name](world))

    response = client.get(url)

    assert response.status_code in (302, 405)
    if response.status_code == 302:
        assert response.url.startswith(reverse("login"))


@pytest.mark.parametrize("name", sorted(TENANT_ROUTES))
def test_the_owner_is_not_refused(name, world, client_for, alice):
    """The 404s above come from tenancy, not from broken URLs: the owner never gets 404."""
    url = reverse(name, kwargs=TENANT_ROUTES[name](world))

    assert client_for(alice).get(url).status_code in (200, 302, 405)


@pytest.mark.parametrize("name", sorted(PRIVATE_TO_OWNER))
def test_another_member_gets_404_on_a_private_conversation(name, world, client_for, bob):
    url = reverse(name, kwargs=TENANT_ROUTES[name](world))

    assert client_for(bob).get(url).status_code in (404, 405)
    assert client_for(bob).post(url, {"title": "x", "model": "fake-gpt"}).status_code == 404


def _socket_path(name: str, kwargs: dict) -> str:
    [route] = [r for n, r, _ in walk(websocket_urlpatterns) if n == name]
    for key, value in kwargs.items():
        route = route.replace(f"<int:{key}>", str(value)).replace(f"<{key}>", str(value))
    return "/" + route


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", sorted(TENANT_SOCKETS))
async def test_an_outsider_cannot_open_the_socket(name, world, open_socket, alice, bob, charlie):
    kwargs = TENANT_SOCKETS[name](world)
    path = _socket_path(name, kwargs)
    assert path == f"/ws/conversations/{kwargs['conversation_id']}/"

    for outsider in (charlie, bob, None):
        connected, _ = await open_socket(outsider, kwargs["conversation_id"])
        assert not connected, outsider
    connected, _ = await open_socket(alice, kwargs["conversation_id"])
    assert connected


def test_every_socket_frame_is_covered():
    from chat.consumers import ConversationConsumer

    covered = set(TENANT_SOCKET_FRAMES) | SOCKET_FRAMES_WITHOUT_OBJECTS
    missing = set(ConversationConsumer.FRAMES) - covered
    assert not missing, f"add these socket frames to TENANT_SOCKET_FRAMES: {missing}"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("frame", sorted(TENANT_SOCKET_FRAMES))
async def test_an_outsider_cannot_reach_a_message_through_their_own_socket(
    frame, world, open_socket, charlie, project_b
):
    from channels.db import database_sync_to_async

    from chat.models import Conversation, Message

    def snapshot():
        return list(
            Message.objects.filter(conversation=world.conversation)
            .order_by("id")
            .values_list("id", "content", "selected", "on_path")
        ), Conversation.objects.filter(pk=world.conversation.pk).values_list("model", flat=True)[0]

    own = await database_sync_to_async(Conversation.objects.create)(
        project=project_b, owner=charlie, model="fake-gpt"
    )
    before = await database_sync_to_async(snapshot)()
    connected, socket = await open_socket(charlie, own.pk)
    assert connected

    await socket.send(type=frame, **TENANT_SOCKET_FRAMES[frame](world))
    answer = await socket.receive()

    assert answer["type"] == "error"
    assert answer["code"] in ("not_found", "invalid_message", "model_not_found")
    assert await database_sync_to_async(snapshot)() == before


def test_the_walker_sees_a_new_route():
    from django.urls import path

    extra = [path("orgs/<slug:org_slug>/secret/<int:pk>/", lambda r: None, name="new_route")]

    assert "new_route" in routes_with_arguments(get_resolver().url_patterns + extra)


# --- the REST API --------------------------------------------------------------------------

API_METHODS = ("get", "post", "patch", "put", "delete")


@pytest.mark.parametrize("name", sorted(API_ROUTES))
def test_an_outsider_gets_404_from_the_api(name, world, client_for, charlie):
    url = reverse(name, kwargs=API_ROUTES[name](world))
    client = client_for(charlie)

    for method in API_METHODS:
        response = getattr(client, method)(url, {"content": "x"}, content_type="application/json")
        assert response.status_code == 404, f"{method.upper()} {url}"
        assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("name", sorted(API_ROUTES))
def test_another_projects_key_gets_the_invalid_key_401(name, world, client, charlie, org_b):
    from accounts.api_keys import api_key_create
    from accounts.models import Membership, Project

    project_b = Project.objects.get(organization=org_b)
    other = api_key_create(
        actor=Membership.objects.get(user=charlie, organization=org_b),
        project=project_b,
        name="B's bot",
        scopes=["chat", "read"],
    ).plaintext
    url = reverse(name, kwargs=API_ROUTES[name](world))

    for method in API_METHODS:
        response = getattr(client, method)(
            url, {}, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {other}"
        )
        assert response.status_code == 401, f"{method.upper()} {url}"
        assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("name", sorted(API_ROUTES))
def test_an_anonymous_caller_gets_401_from_the_api(name, world, client):
    url = reverse(name, kwargs=API_ROUTES[name](world))

    response = client.get(url)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize("name", sorted(API_ROUTES))
def test_the_owner_is_not_refused_by_the_api(name, world, client_for, alice):
    url = reverse(name, kwargs=API_ROUTES[name](world))

    assert client_for(alice).get(url).status_code in (200, 405)
