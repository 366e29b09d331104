"""Versions of a turn: regenerating any reply and editing a message keep what they replace.

Messages form a tree (``Message.parent``); the conversation shows, and prompts with, its
current branch (``on_path``). These tests drive the services as the socket and REST do, then
the socket, REST and the page end to end.
"""

from __future__ import annotations

import importlib

import pytest
from channels.db import database_sync_to_async
from django.apps import apps
from django.urls import reverse

from billing.metering import Outcome
from billing.models import UsageRecord
from chat import selectors, services
from chat.actors import Actor
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


def answer(pending: services.PendingReply, text: str | None = None) -> Message:
    """End a started reply as the streaming task would (nothing is sent upstream here)."""
    if text is None:
        text = "Echo: " + pending.call.request.messages[-1]["content"]
    outcome = Outcome(finish_reason="stop")
    outcome.parts.append(text)
    message = services.reply_finish(
        pending=pending, outcome=outcome, content=text, state=Message.State.COMPLETE
    )
    assert message is not None
    return message


def say(conversation: Conversation, user, text: str) -> tuple[Message, Message]:
    pending = services.reply_start(
        actor=Actor(user=user), conversation_id=conversation.pk, content=text
    )
    reply = answer(pending)
    return Message.objects.get(pk=pending.user_message["id"]), reply


def branch(conversation: Conversation) -> list[str]:
    return [m.content for m in conversation.messages.on_branch().order_by("id")]


def sent(pending: services.PendingReply) -> list[str]:
    return [m["content"] for m in pending.call.request.messages if m["role"] != "system"]


@pytest.fixture
def chat(make_conversation, alice, project_a) -> Conversation:
    """Three turns: one / two / three, each answered "Echo: …"."""
    conversation = make_conversation(alice, project_a)
    for text in ("one", "two", "three"):
        say(conversation, alice, text)
    return conversation


def test_it_links_each_message_to_the_one_it_follows(chat):
    messages = list(chat.messages.order_by("id"))

    assert [m.parent_id for m in messages] == [None, *(m.pk for m in messages[:-1])]
    assert all(m.selected and m.on_path for m in messages)
    assert selectors.versions_of(messages) == {}


def test_it_regenerates_a_middle_reply_as_a_new_version(chat, alice):
    one, first_reply, *_ = chat.messages.order_by("id")

    pending = services.reply_regenerate(
        actor=Actor(user=alice), conversation_id=chat.pk, message_id=first_reply.pk
    )
    again = answer(pending, "Another answer to one")

    assert pending.truncate_from == first_reply.pk
    assert pending.user_message is None  # the question is asked again, not added
    assert sent(pending) == ["one"]  # the history before it: nothing after the old reply
    assert again.parent_id == one.pk
    assert branch(chat) == ["one", "Another answer to one"]
    assert chat.messages.count() == 7  # nothing was deleted
    versions = selectors.versions_of([again, first_reply])
    assert versions[again.pk] == selectors.Versions(
        index=2, count=2, previous=first_reply.pk, next=None
    )
    assert versions[first_reply.pk].next == again.pk
    assert pending.versions == versions[again.pk].as_dict()


def test_regenerating_without_an_id_answers_the_last_message_again(chat, alice):
    last = chat.messages.on_branch().order_by("-id").first()

    pending = services.reply_regenerate(actor=Actor(user=alice), conversation_id=chat.pk)

    assert pending.truncate_from == last.pk
    assert sent(pending)[-1] == "three"


def test_each_regenerate_is_one_metered_call(chat, alice):
    before = UsageRecord.objects.count()
    reply = chat.messages.filter(role="assistant").order_by("id")[1]

    for _ in range(2):
        answer(
            services.reply_regenerate(
                actor=Actor(user=alice), conversation_id=chat.pk, message_id=reply.pk
            )
        )
        reply = chat.messages.on_branch().order_by("-id").first()

    assert UsageRecord.objects.count() == before + 2
    assert set(UsageRecord.objects.values_list("message_id", flat=True)) >= {reply.pk}


def test_an_edit_keeps_the_earlier_branch_to_browse_back_to(chat, alice):
    two = chat.messages.order_by("id")[2]

    pending = services.reply_edit(
        actor=Actor(user=alice), conversation_id=chat.pk, message_id=two.pk, content="deux"
    )
    answer(pending)
    edited = Message.objects.get(pk=pending.user_message["id"])

    assert pending.truncate_from == two.pk
    assert pending.user_message["versions"] == {
        "index": 2,
        "count": 2,
        "previous": two.pk,
        "next": None,
    }
    assert edited.parent_id == two.parent_id
    assert branch(chat) == ["one", "Echo: one", "deux", "Echo: deux"]

    back = services.message_select(
        actor=Actor(user=alice), conversation_id=chat.pk, message_id=two.pk
    )

    assert back == services.BranchChange(message_id=two.pk, changed_from=two.pk)
    assert branch(chat) == ["one", "Echo: one", "two", "Echo: two", "three", "Echo: three"]
    services.message_select(actor=Actor(user=alice), conversation_id=chat.pk, message_id=edited.pk)
    assert branch(chat) == ["one", "Echo: one", "deux", "Echo: deux"]


def test_the_history_sent_follows_the_selected_branch(chat, alice):
    _, _, two, *_ = chat.messages.order_by("id")
    edit = services.reply_edit(
        actor=Actor(user=alice), conversation_id=chat.pk, message_id=two.pk, content="deux"
    )
    answer(edit)

    on_the_edit = services.reply_start(
        actor=Actor(user=alice), conversation_id=chat.pk, content="four"
    )
    answer(on_the_edit)
    services.message_select(actor=Actor(user=alice), conversation_id=chat.pk, message_id=two.pk)
    on_the_first = services.reply_start(
        actor=Actor(user=alice), conversation_id=chat.pk, content="quatre"
    )

    assert sent(on_the_edit) == ["one", "Echo: one", "deux", "Echo: deux", "four"]
    assert sent(on_the_first) == [
        *("one", "Echo: one", "two", "Echo: two", "three", "Echo: three"),
        "quatre",
    ]


def test_a_branch_remembers_the_versions_chosen_after_it(chat, alice):
    """Back to an earlier version of one turn, and forward again: the later turns come back
    as they were last shown, not as the newest versions."""
    _, first_reply, two, *_ = chat.messages.order_by("id")
    edit = services.reply_edit(
        actor=Actor(user=alice), conversation_id=chat.pk, message_id=two.pk, content="deux"
    )
    answer(edit)
    services.message_select(actor=Actor(user=alice), conversation_id=chat.pk, message_id=two.pk)
    answer(
        services.reply_regenerate(
            actor=Actor(user=alice), conversation_id=chat.pk, message_id=first_reply.pk
        ),
        "Another answer to one",
    )

    services.message_select(
        actor=Actor(user=alice), conversation_id=chat.pk, message_id=first_reply.pk
    )

    assert branch(chat) == ["one", "Echo: one", "two", "Echo: two", "three", "Echo: three"]


def test_selecting_the_version_shown_changes_nothing(chat, alice):
    reply = chat.messages.filter(role="assistant").first()

    change = services.message_select(
        actor=Actor(user=alice), conversation_id=chat.pk, message_id=reply.pk
    )

    assert change.changed_from is None
    assert len(branch(chat)) == 6


@pytest.mark.parametrize("message_id", [999_999, "12", None, True])
def test_selecting_what_is_not_a_message_of_the_conversation_is_refused(chat, alice, message_id):
    with pytest.raises(services.ServiceError) as refused:
        services.message_select(
            actor=Actor(user=alice), conversation_id=chat.pk, message_id=message_id
        )
    assert refused.value.code == "not_found"


def test_a_message_of_another_conversation_cannot_be_selected_or_regenerated(
    chat, alice, make_conversation, project_a
):
    other = make_conversation(alice, project_a)
    _, other_reply = say(other, alice, "elsewhere")

    with pytest.raises(services.ServiceError) as refused:
        services.message_select(
            actor=Actor(user=alice), conversation_id=chat.pk, message_id=other_reply.pk
        )
    assert refused.value.code == "not_found"
    with pytest.raises(services.ServiceError) as refused:
        services.reply_regenerate(
            actor=Actor(user=alice), conversation_id=chat.pk, message_id=other_reply.pk
        )
    assert refused.value.code == "invalid_message"


def test_an_outsider_reaches_no_version(chat, charlie, bob):
    reply = chat.messages.filter(role="assistant").first()
    for outsider in (charlie, bob):
        with pytest.raises(services.ServiceError) as refused:
            services.message_select(
                actor=Actor(user=outsider), conversation_id=chat.pk, message_id=reply.pk
            )
        assert refused.value.code == "not_found"


def test_a_user_message_cannot_be_regenerated_nor_a_reply_edited(chat, alice):
    user_message, reply = chat.messages.order_by("id")[:2]

    with pytest.raises(services.ServiceError) as refused:
        services.reply_regenerate(
            actor=Actor(user=alice), conversation_id=chat.pk, message_id=user_message.pk
        )
    assert refused.value.code == "invalid_message"
    with pytest.raises(services.ServiceError) as refused:
        services.reply_edit(
            actor=Actor(user=alice), conversation_id=chat.pk, message_id=reply.pk, content="x"
        )
    assert refused.value.code == "invalid_message"


def test_a_version_cannot_be_selected_while_a_reply_is_written(chat, alice):
    reply = chat.messages.filter(role="assistant").first()
    services.reply_regenerate(actor=Actor(user=alice), conversation_id=chat.pk, message_id=reply.pk)

    with pytest.raises(services.ServiceError) as refused:
        services.message_select(
            actor=Actor(user=alice), conversation_id=chat.pk, message_id=reply.pk
        )
    assert refused.value.code == "busy"


def test_selecting_across_the_summary_forgets_it(chat, alice):
    _, _, two, two_reply, *_ = chat.messages.order_by("id")
    answer(
        services.reply_regenerate(
            actor=Actor(user=alice), conversation_id=chat.pk, message_id=two_reply.pk
        )
    )
    Conversation.objects.filter(pk=chat.pk).update(summary="Earlier.", summary_through=two.pk)
    chat.refresh_from_db()

    services.message_select(
        actor=Actor(user=alice), conversation_id=chat.pk, message_id=two_reply.pk
    )

    chat.refresh_from_db()
    assert chat.summary_through == two.pk  # the turns it folds did not change
    Conversation.objects.filter(pk=chat.pk).update(summary_through=two_reply.pk)
    chat.refresh_from_db()
    latest = chat.messages.filter(parent=two).order_by("-id").first()
    services.message_select(actor=Actor(user=alice), conversation_id=chat.pk, message_id=latest.pk)
    chat.refresh_from_db()
    assert (chat.summary, chat.summary_through) == ("", None)


def test_existing_conversations_become_one_branch(make_conversation, alice, project_a):
    """The migration: messages saved before versions existed follow each other by id."""
    migration = importlib.import_module("chat.migrations.0011_message_versions_sidebar_folders")
    first = make_conversation(alice, project_a)
    second = make_conversation(alice, project_a)
    rows = [
        Message(conversation=conversation, role=role, content=f"{conversation.pk} {n}")
        for n in range(3)
        for conversation in (first, second)
        for role in ("user", "assistant")
    ]
    Message.objects.bulk_create(rows)
    assert not Message.objects.exclude(parent=None).exists()

    migration.link_existing_messages(apps, None)

    for conversation in (first, second):
        messages = list(conversation.messages.order_by("id"))
        assert [m.parent_id for m in messages] == [None, *(m.pk for m in messages[:-1])]
        assert len(branch(conversation)) == 6
    # and they go on as any conversation does
    _, reply = say(first, alice, "after the upgrade")
    assert branch(first)[-2:] == ["after the upgrade", "Echo: after the upgrade"]
    assert reply.parent.parent_id == messages_of(first)[-3].pk


def messages_of(conversation: Conversation) -> list[Message]:
    return list(conversation.messages.order_by("id"))


def test_a_room_stays_one_branch(make_conversation, alice, bob, project_a):
    from chat import rooms

    room = make_conversation(alice, project_a, sharing="project")
    for person, text in ((alice, "hello"), (bob, "hi alice")):
        rooms.room_post(actor=Actor(user=person), conversation_id=room.pk, content=text)

    messages = messages_of(room)
    assert [m.parent_id for m in messages] == [None, messages[0].pk]
    with pytest.raises(services.ServiceError) as refused:
        services.reply_regenerate(actor=Actor(user=alice), conversation_id=room.pk)
    assert refused.value.code == "not_in_rooms"


def test_the_export_is_the_branch_shown(chat, alice, client_for):
    _, _, two, *_ = chat.messages.order_by("id")
    answer(
        services.reply_edit(
            actor=Actor(user=alice), conversation_id=chat.pk, message_id=two.pk, content="deux"
        )
    )
    project = chat.project
    url = reverse(
        "conversation_export", args=[project.organization.slug, project.slug, chat.pk, "json"]
    )

    exported = client_for(alice).get(url).json()

    assert [m["content"] for m in exported["messages"]] == [
        "one",
        "Echo: one",
        "deux",
        "Echo: deux",
    ]


# --- the page ---------------------------------------------------------------------------------


def test_the_page_shows_which_version_and_the_way_to_the_others(chat, alice, client_for):
    _, first_reply, *_ = chat.messages.order_by("id")
    again = answer(
        services.reply_regenerate(
            actor=Actor(user=alice), conversation_id=chat.pk, message_id=first_reply.pk
        ),
        "Another **answer**",
    )
    project = chat.project
    url = reverse("conversation_detail", args=[project.organization.slug, project.slug, chat.pk])

    response = client_for(alice).get(url)

    body = response.content.decode()
    [shown] = [m for m in response.context["window"] if m.pk == again.pk]
    assert shown.versions == selectors.Versions(
        index=2, count=2, previous=first_reply.pk, next=None
    )
    assert "data-version-label>2/2</span>" in body
    assert f'data-version-prev data-target="{first_reply.pk}"' in body
    assert 'data-source="Another **answer**"' in body  # what Copy copies: the Markdown
    assert "Echo: two" not in body  # the other branch is a click away, not shown


# --- over the socket, end to end -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_versions_over_the_socket(open_socket, make_conversation, alice, project_a):
    conversation = await database_sync_to_async(make_conversation)(alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)
    _, other_tab = await open_socket(alice, conversation.pk)
    for text in ("one", "two"):
        await socket.send(type="message", content=text)
        await socket.until("done")
    await other_tab.until("done")
    await other_tab.until("done")
    first_reply = (await database_sync_to_async(messages_of)(conversation))[1]

    await socket.send(type="regenerate", message_id=first_reply.pk)
    events = await socket.until("done")

    assert events[0] == {"type": "truncate", "from": first_reply.pk}
    started = next(e for e in events if e["type"] == "assistant.started")
    assert started["message"]["versions"] == {
        "index": 2,
        "count": 2,
        "previous": first_reply.pk,
        "next": None,
    }
    await other_tab.until("done")

    await socket.send(type="select", message_id=first_reply.pk)
    event = await other_tab.until("branch")

    assert event[-1] == {"type": "branch", "message_id": first_reply.pk, "from": first_reply.pk}
    await socket.until("branch")
    shown = await database_sync_to_async(branch)(conversation)
    assert shown == ["one", "Echo: one", "two", "Echo: two"]

    await socket.send(type="select", message_id=999_999)
    error = (await socket.until("error"))[-1]
    assert error["code"] == "not_found"


# --- REST ------------------------------------------------------------------------------------


def api(name: str, conversation: Conversation, **kwargs) -> str:
    return reverse(
        name,
        kwargs={
            "project_id": conversation.project_id,
            "conversation_id": conversation.pk,
            **kwargs,
        },
    )


def test_rest_lists_the_branch_with_its_versions(chat, alice, client_for):
    _, first_reply, *_ = chat.messages.order_by("id")
    again = answer(
        services.reply_regenerate(
            actor=Actor(user=alice), conversation_id=chat.pk, message_id=first_reply.pk
        )
    )
    client = client_for(alice)

    listed = client.get(api("api-messages", chat)).json()["results"]
    versions = client.get(api("api-message-versions", chat, message_id=again.pk)).json()

    assert [m["id"] for m in listed] == [first_reply.parent_id, again.pk]
    assert listed[1]["parent"] == first_reply.parent_id
    assert listed[1]["versions"] == {
        "index": 2,
        "count": 2,
        "previous": first_reply.pk,
        "next": None,
    }
    assert listed[0]["versions"] is None
    assert [(v["id"], v["selected"]) for v in versions] == [
        (first_reply.pk, False),
        (again.pk, True),
    ]


def test_rest_selects_a_version(chat, alice, client_for):
    _, first_reply, *_ = chat.messages.order_by("id")
    answer(
        services.reply_regenerate(
            actor=Actor(user=alice), conversation_id=chat.pk, message_id=first_reply.pk
        )
    )
    client = client_for(alice)

    response = client.post(api("api-message-select", chat, message_id=first_reply.pk))

    assert response.status_code == 200
    assert response.json() == {"message_id": first_reply.pk, "changed_from": first_reply.pk}
    listed = client.get(api("api-messages", chat)).json()["results"]
    assert [m["content"] for m in listed] == [
        *("one", "Echo: one", "two", "Echo: two", "three", "Echo: three")
    ]


def test_rest_version_routes_answer_404_to_outsiders_and_to_another_conversation(
    chat, alice, bob, charlie, client_for, make_conversation, project_a
):
    reply = chat.messages.filter(role="assistant").first()
    other = make_conversation(alice, project_a)
    _, elsewhere = say(other, alice, "elsewhere")

    for person in (bob, charlie):
        client = client_for(person)
        assert client.get(api("api-message-versions", chat, message_id=reply.pk)).status_code == 404
        assert client.post(api("api-message-select", chat, message_id=reply.pk)).status_code == 404
    alice_client = client_for(alice)
    assert (
        alice_client.post(api("api-message-select", chat, message_id=elsewhere.pk)).status_code
        == 404
    )
