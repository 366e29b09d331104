"""Rooms end to end: two people on two sockets, plain messages between them, a persona called by
its @tag answering everyone and billed to its caller, the model remembering who said what, and
everyone else (another organization, a member not in the room, a member removed) kept out."""

import pytest
from channels.db import database_sync_to_async
from django.urls import reverse

from accounts.models import Role
from billing.models import UsageRecord
from billing.services import rate_take
from chat import rooms, services
from chat.actors import Actor
from chat.models import Conversation, Message, Persona
from core.errors import ServiceError
from tests.chat.conftest import make_key, serve
from tests.conftest import wait_for_background
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dave(org_a):
    """In Alice's organization, but in none of her rooms unless she adds him."""
    user = UserFactory(email="dave@example.com", name="Dave")
    MembershipFactory(user=user, organization=org_a, role=Role.MEMBER)
    return user


def make_room(
    owner, project, upstream, *, sharing="members", members=(), title="Team"
) -> Conversation:
    serve(project, upstream)
    return rooms.room_create(
        actor=Actor(user=owner),
        project=project,
        title=title,
        sharing=sharing,
        member_ids=[m.pk for m in members],
        model="fake-gpt",
    )


@database_sync_to_async
def a_room(*args, **kwargs) -> Conversation:
    return make_room(*args, **kwargs)


@database_sync_to_async
def ledger(conversation: Conversation) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(conversation_id=conversation.pk).order_by("id"))


@database_sync_to_async
def saved(conversation: Conversation) -> list[Message]:
    return list(conversation.messages.select_related("author", "persona").order_by("id"))


async def presence_of(socket, user) -> dict:
    """The next presence event about ``user`` (a socket also hears of itself arriving)."""
    while True:
        event = (await socket.until("presence"))[-1]
        if event["user"]["id"] == user.pk:
            return event


async def two_sockets(open_socket, room, first, second):
    """Both people on the room's socket; each has heard that the other is here."""
    ok1, one = await open_socket(first, room.pk)
    ok2, two = await open_socket(second, room.pk)
    assert ok1
    assert ok2
    assert (await presence_of(one, second))["here"] is True
    assert (await presence_of(two, first))["here"] is True
    return one, two


# --- people talking: plain messages -----------------------------------------------------------


async def test_plain_messages_reach_both_people_and_bill_nothing(
    open_socket, alice, bob, project_a, fake_upstream
):
    room = await a_room(alice, project_a, fake_upstream, members=[bob])
    one, two = await two_sockets(open_socket, room, alice, bob)
    calls_before = sum(fake_upstream.request_counts.values())

    await one.send(type="message", content="Lunch at noon?")
    await two.send(type="message", content="Sounds good")

    for socket in (one, two):
        first = (await socket.until("message"))[-1]["message"]
        second = (await socket.until("message"))[-1]["message"]
        assert (first["content"], first["author"]["name"]) == ("Lunch at noon?", "Alice")
        assert (second["content"], second["author"]["name"]) == ("Sounds good", "Bob")
        assert first["created_at"]
        assert first["persona"] is None
        assert await socket.nothing_more()  # no reply started: nobody called a persona
    assert [(m.role, m.author.name) for m in await saved(room)] == [
        ("user", "Alice"),
        ("user", "Bob"),
    ]
    assert await ledger(room) == []
    assert sum(fake_upstream.request_counts.values()) == calls_before


async def test_typing_reaches_the_others(open_socket, alice, bob, project_a, fake_upstream):
    room = await a_room(alice, project_a, fake_upstream, members=[bob])
    one, two = await two_sockets(open_socket, room, alice, bob)

    await two.send(type="typing")

    typing = (await one.until("typing"))[-1]
    assert typing["user"] == {"id": bob.pk, "name": "Bob"}


async def test_leaving_the_page_says_so(open_socket, alice, bob, project_a, fake_upstream):
    room = await a_room(alice, project_a, fake_upstream, members=[bob])
    one, two = await two_sockets(open_socket, room, alice, bob)

    await two.close()

    assert (await presence_of(one, bob))["here"] is False


async def test_a_tag_that_names_no_persona_is_a_plain_message_and_the_sender_is_told(
    open_socket, alice, bob, project_a, fake_upstream
):
    room = await a_room(alice, project_a, fake_upstream, members=[bob])
    one, two = await two_sockets(open_socket, room, alice, bob)

    await one.send(type="message", content="@nobody are you there?")

    # The notice comes straight to the sender; the message through the room's group: either
    # may arrive first.
    events = await one.until("notice")
    if "message" not in [e["type"] for e in events]:
        events += await one.until("message")
    notice = next(e for e in events if e["type"] == "notice")
    assert "@nobody" in notice["message"]
    assert "plain message" in notice["message"]
    heard = (await two.until("message"))[-1]["message"]
    assert heard["content"] == "@nobody are you there?"
    assert await two.nothing_more()  # the notice is the sender's alone
    assert await ledger(room) == []


# --- a persona answering: streamed to everyone, billed to its caller --------------------------


async def test_chatbot_streams_to_both_and_bills_the_person_who_called_it(
    open_socket, alice, bob, project_a, fake_upstream
):
    room = await a_room(alice, project_a, fake_upstream, members=[bob])
    one, two = await two_sockets(open_socket, room, alice, bob)

    await two.send(type="message", content="@chatbot tell us a joke")

    for socket in (one, two):
        events = await socket.until("done")
        kinds = [e["type"] for e in events]
        assert kinds[:2] == ["message", "assistant.started"]
        started = events[1]["message"]
        assert started["persona"]["tag"] == "chatbot"
        assert started["author"]["name"] == "Bob"
        # The persona is asked the message without its tag.
        assert (
            "".join(e["text"] for e in events if e["type"] == "delta")
            == "Echo: Bob: tell us a joke"
        )
        done = events[-1]["message"]
        assert done["state"] == "complete"
        assert done["persona"]["name"] == "Chatbot"
    await wait_for_background()
    [row] = await ledger(room)
    assert row.user_id == bob.pk  # Bob called it: Bob pays, not the room's maker
    assert row.completion_tokens > 0
    messages = await saved(room)
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].author_id == bob.pk
    assert messages[1].persona.tag == "chatbot"


async def test_the_bot_answers_with_what_another_person_said_earlier(
    open_socket, alice, bob, project_a, fake_upstream
):
    room = await a_room(alice, project_a, fake_upstream, members=[bob])
    one, two = await two_sockets(open_socket, room, alice, bob)

    await one.send(type="message", content="actually my name is Minseo")
    await two.until("message")
    await two.send(type="message", content="@chatbot what is the name Alice gave?")
    await two.until("done")

    [request] = [
        body
        for body in fake_upstream.requests
        if "what is the name Alice gave?" in str(body["messages"][-1]["content"])
    ]
    said = [(m["role"], m["content"]) for m in request["messages"]]
    # The fact, said only by Alice, reaches the model with her name on it; the caller's
    # question with his.
    assert ("user", "Alice: actually my name is Minseo") in said
    assert said[-1] == ("user", "Bob: what is the name Alice gave?")
    assert said[0][0] == "system"
    assert "group chat" in said[0][1]
    assert "@example.com" not in str(request)  # names, never e-mail addresses


async def test_a_disabled_persona_answers_with_a_clear_error(
    open_socket, alice, bob, project_a, fake_upstream
):
    room = await a_room(alice, project_a, fake_upstream, members=[bob])
    await database_sync_to_async(Persona.objects.filter(project=project_a, tag="chatbot").update)(
        enabled=False
    )
    _, socket = await open_socket(alice, room.pk)

    await socket.send(type="message", content="@chatbot hello?")

    error = (await socket.until("error"))[-1]
    assert error["code"] == "persona_disabled"
    assert "@chatbot is turned off" in error["message"]
    assert await ledger(room) == []


async def test_a_room_message_over_the_limit_is_refused_with_the_limit(
    open_socket, alice, project_a, fake_upstream, settings
):
    settings.CHAT_MAX_MESSAGE_CHARS = 20
    room = await a_room(alice, project_a, fake_upstream, sharing="project")
    _, socket = await open_socket(alice, room.pk)

    await socket.send(type="message", content="x" * 21)

    error = (await socket.until("error"))[-1]
    assert error["code"] == "message_too_long"
    assert "21 characters" in error["message"]
    assert "the limit is 20" in error["message"]
    assert await saved(room) == []


async def test_a_flood_of_plain_messages_is_throttled(
    open_socket, alice, project_a, fake_upstream, settings
):
    settings.CHAT_ROOM_MESSAGES_PER_MINUTE = 0
    room = await a_room(alice, project_a, fake_upstream, sharing="project")
    _, socket = await open_socket(alice, room.pk)

    await socket.send(type="message", content="spam")

    error = (await socket.until("error"))[-1]
    assert error["code"] == "rate_limit_exceeded"
    assert error["retryable"] is True
    assert error["retry_after"] >= 1
    assert await saved(room) == []


async def test_persona_calls_have_a_per_member_limit(
    open_socket, alice, bob, project_a, fake_upstream, settings
):
    settings.CHAT_MEMBER_PERSONA_CALLS_PER_MINUTE = 0
    room = await a_room(alice, project_a, fake_upstream, members=[bob])
    _, socket = await open_socket(bob, room.pk)
    calls_before = sum(fake_upstream.request_counts.values())

    await socket.send(type="message", content="@chatbot hi")

    error = (await socket.until("error"))[-1]
    assert error["code"] == "rate_limit_exceeded"
    assert "Persona calls per person" in error["message"]
    assert await ledger(room) == []
    assert sum(fake_upstream.request_counts.values()) == calls_before


def test_the_room_throttle_counts_per_minute(db):
    minute = 1_800_000_000.0  # a fixed clock: the test does not depend on when it runs
    for _ in range(3):
        rate_take(bucket="test-room-flood", allowed=3, what="Messages", now=minute)
    with pytest.raises(ServiceError) as refused:
        rate_take(bucket="test-room-flood", allowed=3, what="Messages", now=minute + 1)
    assert refused.value.code == "rate_limit_exceeded"
    assert "3 per minute" in refused.value.message
    # A sliding window: the last minute still counts in full at the start of the next one.
    rate_take(bucket="test-room-flood", allowed=3, what="Messages", now=minute + 120)


async def test_regenerate_and_edit_are_refused_in_a_room(
    open_socket, alice, project_a, fake_upstream
):
    room = await a_room(alice, project_a, fake_upstream, sharing="project")
    _, socket = await open_socket(alice, room.pk)
    await socket.send(type="message", content="@chatbot hi")
    await socket.until("done")

    await socket.send(type="regenerate")
    assert (await socket.until("error"))[-1]["code"] == "not_in_rooms"


# --- who is in: outsiders, members not chosen, members removed ---------------------------------


async def test_only_the_rooms_people_can_open_its_socket(
    open_socket, alice, bob, charlie, dave, project_a, fake_upstream
):
    room = await a_room(alice, project_a, fake_upstream, members=[bob])

    for outsider in (charlie, dave, None):
        connected, _ = await open_socket(outsider, room.pk)
        assert not connected, outsider
    for member in (alice, bob):
        connected, _ = await open_socket(member, room.pk)
        assert connected, member


async def test_a_room_shared_with_the_project_lets_every_member_in(
    open_socket, alice, dave, charlie, project_a, fake_upstream
):
    room = await a_room(alice, project_a, fake_upstream, sharing="project")

    assert (await open_socket(dave, room.pk))[0]
    assert not (await open_socket(charlie, room.pk))[0]


async def test_a_removed_member_is_cut_off_at_once(
    open_socket, alice, bob, project_a, fake_upstream
):
    room = await a_room(alice, project_a, fake_upstream, members=[bob])
    _one, two = await two_sockets(open_socket, room, alice, bob)

    await database_sync_to_async(rooms.room_remove_member)(
        actor=Actor(user=alice), conversation_id=room.pk, user_id=bob.pk
    )

    removed = (await two.until("removed"))[-1]
    assert "removed" in removed["message"]
    assert (await two.communicator.receive_output(30))["type"] == "websocket.close"
    # Coming back is refused, and so is any write through the services.
    assert not (await open_socket(bob, room.pk))[0]
    with pytest.raises(ServiceError) as refused:
        await database_sync_to_async(rooms.message_post)(
            actor=Actor(user=bob), conversation_id=room.pk, content="still here?"
        )
    assert refused.value.code == "not_found"


def test_only_the_maker_changes_who_is_in_it(alice, bob, dave, project_a, fake_upstream):
    room = make_room(alice, project_a, fake_upstream, members=[bob])

    with pytest.raises(ServiceError) as refused:
        rooms.room_add_members(actor=Actor(user=bob), conversation_id=room.pk, member_ids=[dave.pk])
    assert refused.value.code == "not_room_owner"
    with pytest.raises(ServiceError):
        rooms.room_remove_member(actor=Actor(user=bob), conversation_id=room.pk, user_id=alice.pk)
    # Anyone may leave.
    rooms.room_remove_member(actor=Actor(user=bob), conversation_id=room.pk, user_id=bob.pk)
    assert not Conversation.objects.for_user(bob).filter(pk=room.pk).exists()


def test_a_room_cannot_be_shared_with_another_organization(
    alice, charlie, project_a, fake_upstream
):
    with pytest.raises(ServiceError) as refused:
        make_room(alice, project_a, fake_upstream, members=[charlie])
    assert refused.value.code == "not_found"
    assert not Conversation.objects.filter(project=project_a).rooms().exists()


def test_making_a_room_private_again_shuts_the_others_out(alice, bob, project_a, fake_upstream):
    room = make_room(alice, project_a, fake_upstream, members=[bob])

    rooms.room_share(actor=Actor(user=alice), conversation_id=room.pk, sharing="private")

    assert not Conversation.objects.for_user(bob).filter(pk=room.pk).exists()
    assert Conversation.objects.for_user(alice).filter(pk=room.pk, sharing="private").exists()


def test_a_private_conversation_still_answers_every_message(alice, project_a, fake_upstream):
    serve(project_a, fake_upstream)
    conversation = services.conversation_create(
        actor=Actor(user=alice), project=project_a, model="fake-gpt"
    )

    post = rooms.message_post(
        actor=Actor(user=alice), conversation_id=conversation.pk, content="no tag here"
    )

    assert post.pending is not None
    assert post.pending.persona is None


# --- pages -----------------------------------------------------------------------------------


def _room_url(project, room) -> str:
    return reverse("conversation_detail", args=[project.organization.slug, project.slug, room.pk])


def test_the_rooms_page_lists_my_rooms_and_opens_a_new_one(
    client_for, alice, bob, project_a, fake_upstream
):
    serve(project_a, fake_upstream)
    url = reverse("room_list", args=[project_a.organization.slug, project_a.slug])
    client = client_for(alice)

    response = client.post(url, {"title": "Design", "sharing": "members", "members": [bob.pk]})

    room = Conversation.objects.get(title="Design")
    assert response.status_code == 302
    assert response.url == _room_url(project_a, room)
    assert room.sharing == "members"
    assert rooms.members_of(room).count() == 2
    page = client_for(bob).get(url).content.decode()
    assert "Design" in page
    assert "made by Alice" in page


def test_the_rooms_page_says_what_is_wrong(client_for, alice, project_a, fake_upstream):
    serve(project_a, fake_upstream)
    url = reverse("room_list", args=[project_a.organization.slug, project_a.slug])

    response = client_for(alice).post(url, {"title": "x", "sharing": "everyone"})

    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    assert not Conversation.objects.filter(title="x").exists()


def test_the_room_page_shows_people_personas_and_who_paid(
    client_for, alice, bob, project_a, fake_upstream
):
    room = make_room(alice, project_a, fake_upstream, members=[bob])
    Message.objects.create(conversation=room, role="user", content="hi all", author=bob)

    page = client_for(bob).get(_room_url(project_a, room)).content.decode()

    assert 'data-room="1"' in page
    assert "hi all" in page
    assert ">Bob<" not in page
    assert "Alice" in page
    assert "made the room" in page
    assert '"tag": "chatbot"' in page  # the composer's @tag suggestions
    assert "Who pays" in page
    assert "Save who is in it" not in page  # only the maker changes who is in it
    assert "Leave" in page


def test_only_the_maker_renames_or_deletes_a_room(client_for, alice, bob, project_a, fake_upstream):
    room = make_room(alice, project_a, fake_upstream, members=[bob])
    args = [project_a.organization.slug, project_a.slug, room.pk]

    client = client_for(bob)
    client.post(reverse("conversation_rename", args=args), {"title": "Mine now"})
    client.post(reverse("conversation_delete", args=args))

    room.refresh_from_db()
    assert room.title == "Team"
    response = client.get(_room_url(project_a, room))
    assert "Only the person who made this room can change it." in response.content.decode()


def test_leaving_a_room_from_its_page(client_for, alice, bob, project_a, fake_upstream):
    room = make_room(alice, project_a, fake_upstream, members=[bob])
    url = reverse(
        "room_remove", args=[project_a.organization.slug, project_a.slug, room.pk, bob.pk]
    )

    response = client_for(bob).post(url, follow=True)

    assert "You left “Team”." in response.content.decode()
    assert client_for(bob).get(_room_url(project_a, room)).status_code == 404


def test_a_member_not_in_the_room_gets_404_everywhere(
    client_for, alice, bob, dave, project_a, fake_upstream
):
    room = make_room(alice, project_a, fake_upstream, members=[bob])
    slug = [project_a.organization.slug, project_a.slug, room.pk]
    client = client_for(dave)

    assert client.get(_room_url(project_a, room)).status_code == 404
    for name in ("room_share", "conversation_rename", "conversation_delete"):
        assert client.post(reverse(name, args=slug), {"sharing": "project"}).status_code == 404
    assert client.post(reverse("room_remove", args=[*slug, bob.pk])).status_code == 404
    api = f"/api/v1/projects/{project_a.pk}/rooms/{room.pk}/"
    for url in (
        api,
        api + "members/",
        f"/api/v1/projects/{project_a.pk}/conversations/{room.pk}/messages/",
    ):
        assert client.get(url).status_code == 404, url
    assert room.pk not in [
        r["id"] for r in client.get(f"/api/v1/projects/{project_a.pk}/rooms/").json()["results"]
    ]


# --- REST ------------------------------------------------------------------------------------


def test_rooms_over_rest(client_for, alice, bob, dave, project_a, fake_upstream):
    serve(project_a, fake_upstream)
    base = f"/api/v1/projects/{project_a.pk}/rooms/"
    client = client_for(alice)

    made = client.post(
        base,
        {"title": "Ops", "sharing": "members", "members": [bob.pk]},
        content_type="application/json",
    )
    assert made.status_code == 201, made.json()
    room = made.json()
    assert room["sharing"] == "members"
    assert room["owner"]["name"] == "Alice"
    assert {m["name"] for m in room["members"]} == {"Alice", "Bob"}
    assert "email" not in str(room)

    added = client.post(
        f"{base}{room['id']}/members/", {"members": [dave.pk]}, content_type="application/json"
    )
    assert {m["name"] for m in added.json()} == {"Alice", "Bob", "Dave"}
    refused = client_for(bob).patch(
        f"{base}{room['id']}/", {"title": "Bob's"}, content_type="application/json"
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "not_room_owner"
    assert client_for(dave).delete(f"{base}{room['id']}/members/{dave.pk}/").status_code == 204
    assert client_for(dave).get(f"{base}{room['id']}/").status_code == 404
    assert [r["id"] for r in client_for(bob).get(base).json()["results"]] == [room["id"]]


def test_room_messages_over_rest_are_plain_or_answered(
    client_for, alice, bob, project_a, fake_upstream
):
    room = make_room(alice, project_a, fake_upstream, members=[bob])
    url = f"/api/v1/projects/{project_a.pk}/conversations/{room.pk}/messages/"
    client = client_for(bob)

    plain = client.post(url, {"content": "morning!"}, content_type="application/json")
    assert plain.status_code == 201
    assert plain.json()["role"] == "user"
    assert plain.json()["author"]["name"] == "Bob"
    assert not UsageRecord.objects.filter(conversation_id=room.pk).exists()

    unknown = client.post(url, {"content": "@ghost hi"}, content_type="application/json")
    assert unknown.status_code == 201
    assert "@ghost" in unknown["X-Room-Notice"]

    answered = client.post(url, {"content": "@chatbot morning"}, content_type="application/json")
    assert answered.status_code == 201, answered.json()
    reply = answered.json()
    assert reply["role"] == "assistant"
    assert reply["content"] == "Echo: Bob: morning"  # the fake echoes what it was asked
    assert reply["persona"]["tag"] == "chatbot"
    assert reply["author"]["name"] == "Bob"
    [row] = UsageRecord.objects.filter(conversation_id=room.pk)
    assert row.user_id == bob.pk


def test_api_keys_reach_no_rooms(client, alice, org_a, project_a, fake_upstream):
    room = make_room(alice, project_a, fake_upstream, sharing="project")
    key = make_key(alice, org_a, project_a, scopes=["chat", "read"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    base = f"/api/v1/projects/{project_a.pk}/rooms/"

    assert client.get(base, **auth).json()["results"] == []
    assert client.get(f"{base}{room.pk}/", **auth).status_code == 404
    made = client.post(base, {"title": "bots"}, content_type="application/json", **auth)
    assert made.status_code == 403
    assert made.json()["error"]["code"] == "keys_not_allowed"
