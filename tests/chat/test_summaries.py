"""Summaries: a long conversation's oldest turns folded into a running summary (chat.summaries).

The upstream is the fake OpenAI server over real HTTP. The summary persona writes on
``fake-gpt@words30`` (thirty lorem-ipsum words), so a summary never repeats the turns it folds
and a prompt can be searched for them. Celery runs eagerly (the test settings); tasks queued on
commit run when the test's commit callbacks do, or for real in the transactional tests.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from billing.models import Budget, Hold, ModelPrice, UsageRecord
from chat import rooms, selectors, services, summaries
from chat.actors import Actor
from chat.models import ChatSettings, Conversation, Message, Persona
from chat.prompt import SUMMARY_HEADING
from chat.tasks import summarize_conversation
from tests.chat.conftest import make_key, serve

pytestmark = pytest.mark.django_db

WRITER = "fake-gpt@words30"


def turn(n: int, words: int = 80) -> str:
    return f"turn {n} " + "word " * words


def add_turns(conversation: Conversation, count: int, *, words: int = 80) -> list[Message]:
    Message.objects.bulk_create(
        Message(
            conversation=conversation,
            role="user" if n % 2 == 0 else "assistant",
            content=turn(n, words),
            author=conversation.owner if n % 2 == 0 else None,
        )
        for n in range(count)
    )
    return list(conversation.messages.order_by("id"))


def summary_persona(project, model: str = WRITER) -> Persona:
    persona = Persona.objects.for_project(project).get(tag="summary")
    persona.model = model
    persona.save()
    return persona


def summary_rows() -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(source=UsageRecord.Source.SUMMARY).order_by("id"))


def sent_contents(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"]]


@pytest.fixture(autouse=True)
def no_locks_left():
    """The fold lock lives in the cache, which outlives a test (and ids repeat after one)."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def priced(db) -> ModelPrice:
    """fake-gpt* at $1,000 / $2,000 per 1M tokens: every call costs something."""
    return ModelPrice.objects.create(
        model="fake-gpt*",
        input_per_million=Decimal("1000"),
        cached_input_per_million=Decimal("500"),
        output_per_million=Decimal("2000"),
        effective_from="2024-01-01",
    )


@pytest.fixture
def project(project_a, fake_upstream, priced):
    serve(project_a, fake_upstream, "fake-gpt", WRITER, "fake-gpt@500", "fake-gpt@words0")
    summary_persona(project_a)
    return project_a


@pytest.fixture
def long_chat(make_conversation, alice, project) -> Conversation:
    """Forty turns of about 80 tokens: far more than fake-gpt's 4,096-token window holds."""
    conversation = make_conversation(alice, project, title="A long one")
    add_turns(conversation, 40)
    return conversation


def conversation_url(name: str, conversation: Conversation) -> str:
    project = conversation.project
    return reverse(name, args=[project.organization.slug, project.slug, conversation.pk])


def summary_url(conversation: Conversation) -> str:
    return reverse(
        "api-summary",
        kwargs={"project_id": conversation.project_id, "conversation_id": conversation.pk},
    )


# --- folding -------------------------------------------------------------------------------


def test_it_folds_the_oldest_turns_and_keeps_a_recent_tail(long_chat, alice, fake_upstream):
    result = summaries.summary_fold(
        conversation_id=long_chat.pk, user_id=alice.pk, trigger=summaries.WINDOW
    )

    assert result == "folded"
    long_chat.refresh_from_db()
    assert long_chat.summary.startswith("lorem ipsum")
    assert long_chat.summary_error == ""
    assert long_chat.summary_updated_at is not None
    messages = list(long_chat.messages.order_by("id"))
    folded = [m for m in messages if m.pk <= long_chat.summary_through]
    kept = [m for m in messages if m.pk > long_chat.summary_through]
    assert folded[0].content == turn(0)
    assert len(kept) >= summaries.KEEP_RECENT
    # What was sent: the persona's instructions and the folding rules, the turns to fold, oldest
    # first, with who said them — and none of the tail.
    [request] = fake_upstream.requests
    assert request["model"] == WRITER
    system, ask = request["messages"]
    assert system["content"].startswith("Summarize the conversation so far")
    assert summaries.FOLD_RULES in system["content"]
    assert ask["content"].startswith("Summary so far:\n(none yet)")
    assert f"User: {turn(0)}" in ask["content"]
    assert f"Assistant: {turn(1)}" in ask["content"]
    assert all(m.content not in ask["content"] for m in kept)


def test_a_summary_is_one_ledger_row_billed_to_who_asked_and_no_hold_is_left(long_chat, alice):
    summaries.summary_fold(conversation_id=long_chat.pk, user_id=alice.pk, trigger="window")

    [row] = summary_rows()
    assert (row.source, row.status, row.model) == ("summary", "ok", WRITER)
    assert (row.user_id, row.conversation_id, row.message_id) == (alice.pk, long_chat.pk, None)
    assert isinstance(row.cost, Decimal)
    assert row.cost > 0
    assert row.completion_tokens == 30  # the thirty words the writer sent
    assert Hold.objects.count() == 0


def test_the_next_fold_carries_the_summary_so_far(long_chat, alice, fake_upstream):
    summaries.summary_fold(conversation_id=long_chat.pk, user_id=alice.pk, trigger="asked")
    long_chat.refresh_from_db()
    first, through = long_chat.summary, long_chat.summary_through
    add_turns(long_chat, 4, words=10)

    assert summaries.summary_fold(conversation_id=long_chat.pk, user_id=alice.pk) == "folded"

    long_chat.refresh_from_db()
    assert long_chat.summary_through > through
    ask = fake_upstream.requests[-1]["messages"][1]["content"]
    assert ask.startswith(f"Summary so far:\n{first}\n\n")
    assert turn(0) not in ask  # folded already: only the summary of it is sent again


def test_without_a_summary_persona_a_built_in_instruction_writes_it(
    long_chat, alice, project, fake_upstream
):
    Persona.objects.for_project(project).filter(tag="summary").update(enabled=False)

    summaries.summary_fold(conversation_id=long_chat.pk, user_id=alice.pk, trigger="asked")

    # No persona, so no persona's model: the conversation's own (the project's default is the
    # built-in local model, which keeps its time for replies).
    [request] = fake_upstream.requests
    assert request["model"] == "fake-gpt"
    assert request["messages"][0]["content"].startswith(summaries.BUILT_IN_PROMPT)


def test_the_projects_chosen_persona_writes_on_its_own_model(
    long_chat, alice, project, fake_upstream
):
    scribe = Persona.objects.create(
        project=project, name="Scribe", tag="scribe", system_prompt="Write minutes.", model=WRITER
    )
    ChatSettings.objects.create(project=project, summary_persona=scribe)

    summaries.summary_fold(conversation_id=long_chat.pk, user_id=alice.pk, trigger="asked")

    [request] = fake_upstream.requests
    assert request["model"] == WRITER
    assert request["messages"][0]["content"].startswith("Write minutes.")


def test_a_short_conversation_is_not_folded_until_it_passes_the_projects_setting(
    make_conversation, alice, project, fake_upstream
):
    conversation = make_conversation(alice, project, title="Short")
    add_turns(conversation, 6, words=30)

    assert (
        summaries.summary_fold(
            conversation_id=conversation.pk, user_id=alice.pk, trigger="threshold"
        )
        == "not_due"
    )
    ChatSettings.objects.create(project=project, summarize_after_tokens=100)
    assert (
        summaries.summary_fold(
            conversation_id=conversation.pk, user_id=alice.pk, trigger="threshold"
        )
        == "folded"
    )

    conversation.refresh_from_db()
    assert conversation.messages.filter(pk__gt=conversation.summary_through).count() == 2
    assert len(fake_upstream.requests) == 1


# --- failures: the conversation stays usable and says why ----------------------------------


def test_a_failing_upstream_keeps_the_old_summary_and_says_why(long_chat, alice, project):
    summary_persona(project, "fake-gpt@500")
    first = long_chat.messages.order_by("id").first()
    Conversation.objects.filter(pk=long_chat.pk).update(
        summary="The old summary.", summary_through=first.pk
    )

    assert summaries.summary_fold(conversation_id=long_chat.pk, user_id=alice.pk) == "failed"

    long_chat.refresh_from_db()
    assert (long_chat.summary, long_chat.summary_through) == ("The old summary.", first.pk)
    assert "model provider failed" in long_chat.summary_error
    [row] = summary_rows()  # the call was made: it is in the ledger, free
    assert (row.status, row.cost) == ("error", 0)
    assert Hold.objects.count() == 0
    assert cache.add(summaries._lock_key(long_chat.pk), True)  # the lock was given back


def test_an_empty_summary_is_refused(long_chat, alice, project):
    summary_persona(project, "fake-gpt@words0")

    assert summaries.summary_fold(conversation_id=long_chat.pk, user_id=alice.pk) == "failed"

    long_chat.refresh_from_db()
    assert (long_chat.summary, long_chat.summary_through) == ("", None)
    assert long_chat.summary_error == summaries.EMPTY
    assert len(summary_rows()) == 1


def test_a_budget_refusal_sends_nothing_and_says_so(long_chat, alice, project, fake_upstream):
    Budget.objects.create(
        organization=project.organization,
        scope="project",
        project=project,
        limit_usd=Decimal("0.000001"),
    )

    summaries.summary_fold(conversation_id=long_chat.pk, user_id=alice.pk)

    long_chat.refresh_from_db()
    assert "This would go over" in long_chat.summary_error
    assert fake_upstream.requests == []
    assert summary_rows() == []
    assert Hold.objects.count() == 0


def test_a_bug_of_ours_is_caught_logged_and_billed_once(long_chat, alice, monkeypatch):
    def broken(**_):
        raise RuntimeError("a bug")

    monkeypatch.setattr(summaries, "_store", broken)

    assert summaries.summary_fold(conversation_id=long_chat.pk, user_id=alice.pk) == "failed"

    long_chat.refresh_from_db()
    assert long_chat.summary_error == summaries.BROKEN
    assert len(summary_rows()) == 1
    assert Hold.objects.count() == 0


def test_a_local_only_project_says_why_it_does_not_summarize(alice, project_a):
    conversation = services.conversation_create(actor=Actor(user=alice), project=project_a)
    Persona.objects.for_project(project_a).filter(tag="summary").update(model="")
    add_turns(conversation, 6)

    summaries.summary_fold(conversation_id=conversation.pk, user_id=alice.pk)

    conversation.refresh_from_db()
    assert conversation.summary_error == summaries.LOCAL_ONLY
    assert UsageRecord.objects.count() == 0


# --- two folds of one conversation ---------------------------------------------------------


def test_a_fold_already_running_keeps_a_second_from_calling(long_chat, alice, fake_upstream):
    cache.add(summaries._lock_key(long_chat.pk), True)
    try:
        result = summaries.summary_fold(conversation_id=long_chat.pk, user_id=alice.pk)
    finally:
        cache.delete(summaries._lock_key(long_chat.pk))

    assert result == "busy"
    assert fake_upstream.requests == []


def test_a_fold_that_another_beat_to_it_lands_nothing(long_chat, alice, monkeypatch):
    real_write = summaries._write
    last = long_chat.messages.order_by("id").last()

    def meanwhile_another_lands(**kwargs):
        text = real_write(**kwargs)
        Conversation.objects.filter(pk=long_chat.pk).update(
            summary="The other fold's.", summary_through=last.pk - 2
        )
        return text

    monkeypatch.setattr(summaries, "_write", meanwhile_another_lands)

    assert summaries.summary_fold(conversation_id=long_chat.pk, user_id=alice.pk) == "lost"

    long_chat.refresh_from_db()
    assert (long_chat.summary, long_chat.summary_through) == ("The other fold's.", last.pk - 2)
    assert len(summary_rows()) == 1  # the losing call is billed, once


def test_an_edit_of_a_folded_message_drops_the_summary(long_chat, alice):
    summaries.summary_fold(conversation_id=long_chat.pk, user_id=alice.pk)
    long_chat.refresh_from_db()
    first_user = long_chat.messages.order_by("id").first()

    services.reply_edit(
        actor=Actor(user=alice),
        conversation_id=long_chat.pk,
        message_id=first_user.pk,
        content="Start over",
    )

    long_chat.refresh_from_db()
    assert (long_chat.summary, long_chat.summary_through) == ("", None)


def test_the_task_is_safe_to_run_for_a_conversation_that_is_gone(alice, fake_upstream):
    summarize_conversation(999_999, user_id=alice.pk, trigger="window")
    summarize_conversation(999_999, user_id=alice.pk, trigger="nonsense")

    assert fake_upstream.requests == []


def test_an_outsider_cannot_be_billed_for_someone_elses_conversation(long_chat, charlie):
    result = summaries.summary_fold(conversation_id=long_chat.pk, user_id=charlie.pk)

    assert result == "unreachable"
    assert summary_rows() == []


# --- the prompt: the summary in place of the turns it folds; the last N messages -----------


def test_the_history_is_what_comes_after_the_summary(long_chat):
    messages = list(long_chat.messages.order_by("id"))
    long_chat.summary, long_chat.summary_through = "Earlier.", messages[29].pk

    history = list(selectors.history_for_prompt(long_chat, before=messages[-1].pk))

    assert [m.pk for m in history] == [m.pk for m in reversed(messages[30:-1])]


def test_history_limit_keeps_the_last_n_messages(make_conversation, alice, project):
    conversation = make_conversation(alice, project, title="Limited", history_limit=4)
    add_turns(conversation, 10, words=5)

    pending = services.reply_start(
        actor=Actor(user=alice), conversation_id=conversation.pk, content="and now?"
    )

    sent = pending.call.request.messages
    assert [m["content"] for m in sent] == [turn(n, 5) for n in range(6, 10)] + ["and now?"]
    assert pending.omitted == 0  # left out by the setting, not by the window


def test_at_summary_in_a_room_sees_the_running_summary(make_conversation, alice, bob, project):
    room = make_conversation(alice, project, title="Team", sharing="project")
    turns = add_turns(room, 6, words=5)
    Conversation.objects.filter(pk=room.pk).update(
        summary="Alice booked Jeju for May.", summary_through=turns[3].pk
    )

    post = rooms.room_post(
        actor=Actor(user=bob), conversation_id=room.pk, content="@summary what did we decide?"
    )

    assert post.pending is not None
    sent = post.pending.call.request.messages
    assert sent[0]["content"].startswith("Summarize the conversation so far")
    assert {"role": "system", "content": f"{SUMMARY_HEADING}\nAlice booked Jeju for May."} in sent
    contents = [m["content"] for m in sent]
    assert not any(turn(n, 5) in c for n in range(4) for c in contents)
    assert f"Alice: {turn(4, 5)}" in contents


# --- end to end: a reply that no longer fits queues the fold; the next one sends it ---------


@pytest.mark.django_db(transaction=True)
def test_a_long_conversation_is_summarized_after_a_reply_and_sent_in_its_place(
    long_chat, alice, client_for, fake_upstream
):
    client = client_for(alice)
    url = reverse(
        "api-messages", kwargs={"project_id": long_chat.project_id, "conversation_id": long_chat.pk}
    )

    first = client.post(url, {"content": "where were we?"}, content_type="application/json")

    assert first.status_code == 201
    assert first.json()["omitted_messages"] > 0  # the window was full: the fold was queued
    long_chat.refresh_from_db()
    assert long_chat.summary.startswith("lorem ipsum")
    folded = list(long_chat.messages.filter(pk__lte=long_chat.summary_through))
    assert len(summary_rows()) == 1

    second = client.post(url, {"content": "and then?"}, content_type="application/json")

    assert second.status_code == 201
    reply = [r for r in fake_upstream.requests if r["model"] == "fake-gpt"][-1]
    contents = sent_contents(reply)
    assert f"{SUMMARY_HEADING}\n{long_chat.summary}" in contents
    assert not any(m.content in contents for m in folded)
    assert contents[-1] == "and then?"
    assert Hold.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_failing_summary_leaves_the_conversation_answering(
    long_chat, alice, project, client_for, fake_upstream
):
    summary_persona(project, "fake-gpt@500")
    client = client_for(alice)
    url = reverse(
        "api-messages", kwargs={"project_id": long_chat.project_id, "conversation_id": long_chat.pk}
    )

    first = client.post(url, {"content": "hello?"}, content_type="application/json")
    long_chat.refresh_from_db()
    second = client.post(url, {"content": "still there?"}, content_type="application/json")

    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json()["content"] == "Echo: still there?"
    assert "model provider failed" in long_chat.summary_error
    assert long_chat.summary == ""
    assert [r.status for r in summary_rows()] == ["error", "error"]  # one per attempt
    assert Hold.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_passing_the_projects_setting_summarizes_after_the_reply(
    make_conversation, alice, project, client_for
):
    ChatSettings.objects.create(project=project, summarize_after_tokens=150)
    conversation = make_conversation(alice, project, title="Chatty")
    add_turns(conversation, 6, words=30)
    url = reverse(
        "api-messages",
        kwargs={"project_id": conversation.project_id, "conversation_id": conversation.pk},
    )

    response = client_for(alice).post(url, {"content": "ok"}, content_type="application/json")

    assert response.json()["omitted_messages"] == 0  # it fits; the setting asked for it
    conversation.refresh_from_db()
    assert conversation.summary.startswith("lorem ipsum")
    assert [row.user_id for row in summary_rows()] == [alice.pk]


# --- pages -----------------------------------------------------------------------------------


def test_the_transcript_marks_where_the_summary_begins(long_chat, alice, client_for):
    messages = list(long_chat.messages.order_by("id"))
    Conversation.objects.filter(pk=long_chat.pk).update(
        summary="**Alice** chose Jeju.",
        summary_through=messages[29].pk,
        summary_updated_at=timezone.now(),
    )

    body = (
        client_for(alice).get(conversation_url("conversation_detail", long_chat)).content.decode()
    )

    marker = body.index("Earlier messages are summarized — read the summary")
    assert (
        body.index(f'data-id="{messages[29].pk}"')
        < marker
        < body.index(f'data-id="{messages[30].pk}"')
    )
    assert "<strong>Alice</strong> chose Jeju." in body  # readable, rendered and sanitized
    assert "<details" in body[marker - 200 : marker]


def test_the_transcript_shows_why_the_last_summary_failed(long_chat, alice, client_for):
    Conversation.objects.filter(pk=long_chat.pk).update(summary_error="The budget ran out.")

    body = (
        client_for(alice).get(conversation_url("conversation_detail", long_chat)).content.decode()
    )

    assert "The last summary failed: The budget ran out." in body
    assert "Earlier messages are summarized" not in body


def test_keep_the_last_n_messages_is_a_conversation_setting(long_chat, alice, client_for):
    client = client_for(alice)
    page = client.get(conversation_url("conversation_detail", long_chat)).content.decode()
    assert "Keep the last N messages" in page

    client.post(
        conversation_url("conversation_settings", long_chat),
        {"model": "fake-gpt", "history_limit": "6"},
    )
    long_chat.refresh_from_db()
    assert long_chat.history_limit == 6

    client.post(conversation_url("conversation_settings", long_chat), {"model": "fake-gpt"})
    long_chat.refresh_from_db()
    assert long_chat.history_limit is None  # empty: all that fit


def test_summarize_now_folds_and_bills_whoever_asks(
    make_conversation, alice, bob, project, client_for, django_capture_on_commit_callbacks
):
    room = make_conversation(alice, project, title="Team", sharing="project")
    add_turns(room, 6, words=10)

    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(bob).post(conversation_url("conversation_summarize", room))

    assert response.status_code == 302
    room.refresh_from_db()
    assert room.summary.startswith("lorem ipsum")
    assert room.messages.filter(pk__gt=room.summary_through).count() == summaries.KEEP_RECENT
    assert [row.user_id for row in summary_rows()] == [bob.pk]  # in a room, who clicked pays


def test_summarize_now_with_nothing_to_fold_calls_nobody(
    make_conversation, alice, project, client_for, fake_upstream, django_capture_on_commit_callbacks
):
    conversation = make_conversation(alice, project, title="Hi")
    add_turns(conversation, 2, words=5)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client_for(alice).post(conversation_url("conversation_summarize", conversation))

    assert response.status_code == 302
    assert callbacks == []
    assert fake_upstream.requests == []


def test_chat_settings_are_for_managers_to_change_and_members_to_read(
    alice, bob, charlie, project, client_for
):
    url = reverse("chat_settings", args=[project.organization.slug, project.slug])
    scribe = Persona.objects.for_project(project).get(tag="summary")

    saved = client_for(alice).post(
        url, {"summarize_after_tokens": "2000", "summary_persona": str(scribe.pk)}
    )
    assert saved.status_code == 302
    settings = ChatSettings.objects.get(project=project)
    assert (settings.summarize_after_tokens, settings.summary_persona) == (2000, scribe)

    as_member = client_for(bob).get(url)
    assert as_member.status_code == 200
    assert "2000 tokens" in as_member.content.decode()
    assert 'method="post"' not in as_member.content.decode().split("<main", 1)[-1]
    assert client_for(bob).post(url, {"summarize_after_tokens": "100"}).status_code == 403
    assert client_for(charlie).get(url).status_code == 404
    assert client_for(charlie).post(url, {"summarize_after_tokens": "100"}).status_code == 404
    assert ChatSettings.objects.get(project=project).summarize_after_tokens == 2000


def test_chat_settings_refuse_a_threshold_too_small_and_a_foreign_persona(
    alice, project, project_b, client_for
):
    url = reverse("chat_settings", args=[project.organization.slug, project.slug])
    theirs = Persona.objects.for_project(project_b).get(tag="summary")

    too_small = client_for(alice).post(url, {"summarize_after_tokens": "5"})
    foreign = client_for(alice).post(url, {"summary_persona": str(theirs.pk)})

    assert (too_small.status_code, foreign.status_code) == (400, 400)
    assert "at least 100 tokens" in too_small.content.decode()
    assert not ChatSettings.objects.filter(project=project).exists()


# --- REST ------------------------------------------------------------------------------------


def test_the_api_reads_and_asks_for_a_summary(
    alice, org_a, project, fake_upstream, client, django_capture_on_commit_callbacks
):
    key = make_key(alice, org_a, project, ["chat", "read"])
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    created = client.post(
        reverse("api-conversations", kwargs={"project_id": project.pk}),
        data=json.dumps({"model": "fake-gpt", "history_limit": 20}),
        content_type="application/json",
        **headers,
    ).json()
    conversation = Conversation.objects.get(pk=created["id"])
    assert created["history_limit"] == 20
    add_turns(conversation, 6, words=10)

    before = client.get(summary_url(conversation), **headers)
    with django_capture_on_commit_callbacks(execute=True):
        asked = client.post(summary_url(conversation), **headers)
    after = client.get(summary_url(conversation), **headers)

    assert before.json() == {
        "summary": "",
        "through_message_id": None,
        "updated_at": None,
        "error": "",
        "history_limit": 20,
    }
    assert asked.status_code == 202
    assert asked.json()["queued"] is True
    assert after.status_code == 200
    assert after.json()["summary"].startswith("lorem ipsum")
    assert after.json()["through_message_id"] == conversation.messages.order_by("id")[3].pk
    [row] = summary_rows()
    assert (row.api_key_id, row.user_id) == (conversation.api_key_id, None)


def test_the_api_says_when_there_is_nothing_to_summarize(
    alice, project, client_for, make_conversation
):
    conversation = make_conversation(alice, project)

    response = client_for(alice).post(summary_url(conversation))

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "nothing_to_summarize"


def test_the_api_summary_is_private_to_its_conversation(
    long_chat, alice, bob, charlie, org_a, project, client, client_for
):
    key = make_key(alice, org_a, project, ["chat", "read"])

    assert client_for(alice).get(summary_url(long_chat)).status_code == 200
    for outsider in (client_for(bob), client_for(charlie)):
        assert outsider.get(summary_url(long_chat)).status_code == 404
        assert outsider.post(summary_url(long_chat)).status_code == 404
    # A key reaches the project's API conversations only, never a person's own.
    by_key = client.get(summary_url(long_chat), HTTP_AUTHORIZATION=f"Bearer {key}")
    assert by_key.status_code == 404
    assert summary_rows() == []
