"""The sidebar: pinned chats, a person's folders, the rest grouped by date, and the archive."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from django.urls import reverse

from chat import selectors, services
from chat.actors import Actor
from chat.models import Conversation, Folder

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 10, 15, 12, 0, tzinfo=UTC)


def page(name: str, project, **kwargs) -> str:
    return reverse(name, args=[project.organization.slug, project.slug, *kwargs.values()])


@pytest.fixture
def chat(make_conversation, alice, project_a) -> Conversation:
    return make_conversation(alice, project_a, title="Trip to Jeju")


def active(conversation: Conversation, when: datetime) -> None:
    Conversation.objects.filter(pk=conversation.pk).update(last_message_at=when)


@pytest.mark.parametrize(
    ("day", "key", "label"),
    [
        (date(2026, 10, 15), 0, "Today"),
        (date(2026, 10, 14), 1, "Yesterday"),
        (date(2026, 10, 8), 2, "Previous 7 days"),
        (date(2026, 9, 15), 3, "Previous 30 days"),
        (date(2026, 9, 14), 5, "September"),
        (date(2026, 1, 2), 13, "January"),
        (date(2025, 12, 31), 14, "December 2025"),
    ],
)
def test_it_groups_chats_by_when_they_were_last_active(day, key, label):
    assert selectors.date_group(day, today=NOW.date()) == (key, label)


def test_the_sidebar_lists_pinned_then_folders_then_the_rest_by_date(
    make_conversation, alice, project_a
):
    today, yesterday, old, pinned, filed = (
        make_conversation(alice, project_a, title=title)
        for title in ("today", "yesterday", "old", "pinned", "filed")
    )
    active(today, NOW - timedelta(hours=1))
    active(yesterday, NOW - timedelta(days=1))
    active(old, datetime(2025, 3, 1, tzinfo=UTC))
    me = Actor(user=alice)
    services.conversation_pin(actor=me, conversation_id=pinned.pk, pinned=True)
    folder = services.folder_create(actor=me, project=project_a, name="Work")
    services.folder_create(actor=me, project=project_a, name="Empty")
    services.conversation_move(actor=me, conversation_id=filed.pk, folder_id=folder.pk)

    sidebar = selectors.sidebar(user=alice, project=project_a, now=NOW)

    assert [c.title for c in sidebar.pinned] == ["pinned"]
    assert [(g.label, [c.title for c in g.conversations]) for g in sidebar.folders] == [
        ("Empty", []),
        ("Work", ["filed"]),
    ]
    assert [(str(g.label), [c.title for c in g.conversations]) for g in sidebar.by_date] == [
        ("Today", ["today"]),
        ("Yesterday", ["yesterday"]),
        ("March 2025", ["old"]),
    ]


def test_pin_archive_and_move_from_the_page(chat, alice, client_for, project_a):
    client = client_for(alice)
    folder = Folder.objects.create(project=project_a, owner=alice, name="Travel")

    client.post(page("conversation_pin", project_a, pk=chat.pk), {"pinned": "1"})
    client.post(page("conversation_move", project_a, pk=chat.pk), {"folder": folder.pk})
    chat.refresh_from_db()
    assert (chat.pinned, chat.folder) == (True, folder)

    body = client.get(page("conversation_detail", project_a, pk=chat.pk)).content.decode()
    assert 'id="chats-pinned"' in body
    assert 'aria-pressed="true"' in body  # the toolbar's Pin button says it is pinned

    client.post(page("conversation_pin", project_a, pk=chat.pk), {"pinned": "0"})
    client.post(page("conversation_move", project_a, pk=chat.pk), {"folder": ""})
    response = client.post(page("conversation_archive", project_a, pk=chat.pk), {"archived": "1"})
    chat.refresh_from_db()
    assert (chat.pinned, chat.folder, chat.archived) == (False, None, True)
    assert response.url == page("chat_home", project_a)
    sidebar = selectors.sidebar(user=alice, project=project_a)
    assert chat not in sidebar.chats

    archived = client.get(page("chat_archived", project_a))
    assert [c.pk for c in archived.context["archived"]] == [chat.pk]
    client.post(
        page("conversation_archive", project_a, pk=chat.pk),
        {"archived": "0", "next": page("chat_archived", project_a)},
    )
    chat.refresh_from_db()
    assert not chat.archived


def test_folders_are_made_renamed_and_deleted_and_their_chats_stay(
    chat, alice, client_for, project_a
):
    client = client_for(alice)

    client.post(page("folder_create", project_a), {"name": "  Trips   2026 "})
    folder = Folder.objects.get()
    assert (folder.owner, folder.project, folder.name) == (alice, project_a, "Trips 2026")
    refused = client.post(page("folder_create", project_a), {"name": "Trips 2026"}, follow=True)
    assert "You already have a folder called" in refused.content.decode()
    assert Folder.objects.count() == 1

    client.post(page("folder_rename", project_a, folder_id=folder.pk), {"name": "Holidays"})
    folder.refresh_from_db()
    assert folder.name == "Holidays"

    services.conversation_move(
        actor=Actor(user=alice), conversation_id=chat.pk, folder_id=folder.pk
    )
    client.post(page("folder_delete", project_a, folder_id=folder.pk))
    chat.refresh_from_db()
    assert not Folder.objects.exists()
    assert chat.folder is None  # the chat is kept, in no folder


@pytest.mark.parametrize("name", ["", "   ", "x" * 81, None])
def test_a_folder_needs_a_name_of_at_most_80_characters(alice, project_a, name):
    with pytest.raises(services.ServiceError):
        services.folder_create(actor=Actor(user=alice), project=project_a, name=name)


def test_a_persons_folders_are_theirs_alone(chat, alice, bob, client_for, project_a):
    bobs = Folder.objects.create(project=project_a, owner=bob, name="Bob's")
    alices = Folder.objects.create(project=project_a, owner=alice, name="Alice's")

    # Alice cannot file her chat in Bob's folder; Bob cannot touch Alice's folder or chat.
    response = client_for(alice).post(
        page("conversation_move", project_a, pk=chat.pk), {"folder": bobs.pk}
    )
    assert response.status_code == 404
    with pytest.raises(services.ServiceError) as refused:
        services.conversation_move(
            actor=Actor(user=alice), conversation_id=chat.pk, folder_id=bobs.pk
        )
    assert refused.value.code == "not_found"
    bob_client = client_for(bob)
    for name in ("folder_rename", "folder_delete"):
        assert (
            bob_client.post(page(name, project_a, folder_id=alices.pk), {"name": "x"}).status_code
            == 404
        )
    assert (
        bob_client.post(
            page("conversation_pin", project_a, pk=chat.pk), {"pinned": "1"}
        ).status_code
        == 404
    )
    assert [g.label for g in selectors.sidebar(user=bob, project=project_a).folders] == ["Bob's"]
    chat.refresh_from_db()
    assert (chat.folder, chat.pinned) == (None, False)
    alices.refresh_from_db()
    assert alices.name == "Alice's"


def test_a_room_is_not_pinned_archived_or_filed(make_conversation, alice, project_a):
    room = make_conversation(alice, project_a, sharing="project")

    for service, change in (
        (services.conversation_pin, {"pinned": True}),
        (services.conversation_archive, {"archived": True}),
        (services.conversation_move, {"folder_id": None}),
    ):
        with pytest.raises(services.ServiceError) as refused:
            service(actor=Actor(user=alice), conversation_id=room.pk, **change)
        assert refused.value.code == "not_in_rooms"


# --- REST ------------------------------------------------------------------------------------


def test_rest_pins_and_files_a_chat_and_manages_folders(chat, alice, client_for, project_a):
    client = client_for(alice)
    folders = reverse("api-folders", kwargs={"project_id": project_a.pk})

    created = client.post(folders, {"name": "Work"}, content_type="application/json")
    assert created.status_code == 201
    folder_id = created.json()["id"]
    conversation = reverse(
        "api-conversation", kwargs={"project_id": project_a.pk, "conversation_id": chat.pk}
    )
    patched = client.patch(
        conversation, {"pinned": True, "folder": folder_id}, content_type="application/json"
    )

    assert patched.status_code == 200
    assert (patched.json()["pinned"], patched.json()["folder"]) == (True, folder_id)
    folder = reverse("api-folder", kwargs={"project_id": project_a.pk, "folder_id": folder_id})
    renamed = client.patch(folder, {"name": "Jobs"}, content_type="application/json")
    assert renamed.json()["name"] == "Jobs"
    assert [f["name"] for f in client.get(folders).json()["results"]] == ["Jobs"]
    assert client.delete(folder).status_code == 204
    assert client.get(conversation).json()["folder"] is None


def test_rest_an_api_key_has_no_folders_and_files_nothing(
    alice, org_a, project_a, client, make_conversation
):
    from tests.chat.conftest import make_key

    key = make_key(alice, org_a, project_a, scopes=["chat", "read"])
    Folder.objects.create(project=project_a, owner=alice, name="Alice's")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    folders = reverse("api-folders", kwargs={"project_id": project_a.pk})

    listed = client.get(folders, **auth)
    assert (listed.status_code, listed.json()["error"]["code"]) == (403, "keys_not_allowed")
    made = client.post(folders, {"name": "Bot"}, content_type="application/json", **auth)
    assert made.status_code == 403
    started = client.post(
        reverse("api-conversations", kwargs={"project_id": project_a.pk}),
        {"pinned": True},
        content_type="application/json",
        **auth,
    )
    assert started.status_code == 403
    assert not Conversation.objects.filter(owner=None).exists()  # all or nothing
