"""The chat pages: home, new chat, a conversation, rename, settings, delete, export."""

import json

import pytest
from django.urls import reverse

from billing.models import UsageRecord
from chat import services
from chat.actors import Actor
from chat.models import Conversation, Message
from chat.tasks import TITLE_PROMPT, title_conversation

pytestmark = pytest.mark.django_db


def url(name, conversation, **extra):
    project = conversation.project
    return reverse(name, args=[project.organization.slug, project.slug, conversation.pk], **extra)


def add_messages(conversation, count: int) -> None:
    Message.objects.bulk_create(
        Message(
            conversation=conversation,
            role="user" if n % 2 == 0 else "assistant",
            content=f"message number {n}",
        )
        for n in range(count)
    )


@pytest.fixture
def conversation(make_conversation, alice, project_a) -> Conversation:
    return make_conversation(alice, project_a)


def test_chat_home_opens_the_latest_conversation(client_for, alice, project_a, make_conversation):
    make_conversation(alice, project_a)
    latest = make_conversation(alice, project_a)

    response = client_for(alice).get(reverse("chat_home", args=["org-a", "project-a"]))

    assert response.status_code == 302
    assert response.url == url("conversation_detail", latest)


def test_chat_home_offers_a_new_chat_when_there_is_none(client_for, alice, project_a):
    response = client_for(alice).get(reverse("chat_home", args=["org-a", "project-a"]))

    assert response.status_code == 200
    assert reverse("conversation_new", args=["org-a", "project-a"]) in response.content.decode()


def test_new_chat_uses_the_project_defaults(client_for, alice, project_a, fake_upstream):
    project_a.default_system_prompt = "You answer in Korean."
    project_a.save()

    response = client_for(alice).post(reverse("conversation_new", args=["org-a", "project-a"]))

    conversation = Conversation.objects.get()
    assert response.url == url("conversation_detail", conversation)
    # Until the project curates its models, new chats use the built-in local model.
    assert (conversation.owner, conversation.model) == (alice, "smollm2-135m-instruct")
    assert conversation.system_prompt == "You answer in Korean."


def test_a_conversation_of_10000_messages_opens_with_a_bounded_number_of_queries(
    client_for, alice, conversation, django_assert_max_num_queries, settings
):
    add_messages(conversation, 10_000)
    client = client_for(alice)

    # However long the conversation: the page, its versions (one query), the sidebar's chats
    # and folders, the models with their prices, the budget banner, the page's tool calls and
    # images (one query each), the tools the settings offer, and what the model can do,
    # whether replies are checked and which organizations are scheduled for deletion (each
    # read once, then kept in memory).
    with django_assert_max_num_queries(25):
        response = client.get(url("conversation_detail", conversation))

    body = response.content.decode()
    assert "message number 9999" in body
    assert f"message number {10_000 - settings.CHAT_PAGE_SIZE}" in body
    assert f"message number {10_000 - settings.CHAT_PAGE_SIZE - 1}<" not in body
    oldest = conversation.messages.order_by("-id")[settings.CHAT_PAGE_SIZE - 1]
    assert f"?before={oldest.pk}" in body


def test_earlier_messages_are_a_link_away_without_javascript(client_for, alice, conversation):
    add_messages(conversation, 120)
    client = client_for(alice)
    first_page = client.get(url("conversation_detail", conversation))
    oldest_shown = first_page.context["oldest_id"]

    older = client.get(url("conversation_detail", conversation), {"before": oldest_shown})

    contents = [m.content for m in older.context["window"]]
    assert contents[-1] == "message number 69"
    assert contents[0] == "message number 20"
    assert older.context["has_older"]


def test_model_markdown_is_rendered_and_sanitized(client_for, alice, conversation):
    Message.objects.create(
        conversation=conversation,
        role="assistant",
        content="**bold** <script>alert('x')</script> [click](javascript:alert(1))\n\n"
        "```python\nprint('hi')\n```",
    )

    body = client_for(alice).get(url("conversation_detail", conversation)).content.decode()

    assert "<strong>bold</strong>" in body
    assert "<script>alert" not in body
    assert "&lt;script&gt;alert" in body
    assert 'href="javascript:' not in body
    assert '<code class="language-python">' in body


def test_user_text_is_escaped(client_for, alice, conversation):
    Message.objects.create(conversation=conversation, role="user", content="<b>not bold</b>")

    body = client_for(alice).get(url("conversation_detail", conversation)).content.decode()

    assert "&lt;b&gt;not bold&lt;/b&gt;" in body


def test_the_page_says_when_older_messages_were_left_out(client_for, alice, conversation):
    Message.objects.create(
        conversation=conversation, role="assistant", content="hi", omitted_messages=12
    )

    body = client_for(alice).get(url("conversation_detail", conversation)).content.decode()

    assert "12 earlier messages" in body


def test_the_sidebar_searches_titles_and_message_text(
    client_for, alice, project_a, make_conversation
):
    about_cats = make_conversation(alice, project_a)
    about_cats.title = "Cats"
    about_cats.save()
    about_dogs = make_conversation(alice, project_a)
    Message.objects.create(conversation=about_dogs, role="user", content="my dog barks")
    neither = make_conversation(alice, project_a)
    neither.title = "Taxes"
    neither.save()
    client = client_for(alice)

    def found(q):
        response = client.get(url("conversation_detail", neither), {"q": q})
        return {c.pk for c in response.context["conversations"]}

    assert found("cat") == {about_cats.pk}
    assert found("DOG") == {about_dogs.pk}
    assert found("") == {about_cats.pk, about_dogs.pk, neither.pk}


def test_rename_and_delete(client_for, alice, conversation):
    client = client_for(alice)

    client.post(url("conversation_rename", conversation), {"title": "  Trip plans  "})
    conversation.refresh_from_db()
    assert conversation.title == "Trip plans"

    response = client.post(url("conversation_delete", conversation))
    assert response.url == reverse("chat_home", args=["org-a", "project-a"])
    assert not Conversation.objects.exists()


def test_settings_are_saved_and_bad_values_explained(
    client_for, alice, project_a, make_conversation
):
    make_conversation(alice, project_a, model="fake-gpt-mini")
    conversation = make_conversation(alice, project_a, model="fake-gpt")
    client = client_for(alice)
    settings_url = url("conversation_settings", conversation)

    client.post(
        settings_url,
        {"model": "fake-gpt-mini", "system_prompt": "Be terse.", "temperature": "0.7",
         "max_tokens": "256"},
    )  # fmt: skip
    conversation.refresh_from_db()
    assert (conversation.model, conversation.system_prompt) == ("fake-gpt-mini", "Be terse.")
    assert (conversation.temperature, conversation.max_tokens) == (0.7, 256)

    response = client.post(
        settings_url,
        {"model": "fake-gpt", "temperature": "3", "max_tokens": "100000"},
        follow=True,
    )
    body = response.content.decode()
    assert "Temperature" in body
    assert "less than or equal to 2" in body
    response = client.post(settings_url, {"model": "gpt-nope"}, follow=True)
    assert "Select a valid choice" in response.content.decode()
    response = client.post(settings_url, {"model": "fake-gpt", "max_tokens": "5000"}, follow=True)
    assert "Max tokens must be between 1 and 4,095" in response.content.decode()
    conversation.refresh_from_db()
    assert (conversation.model, conversation.max_tokens) == ("fake-gpt-mini", 256)


def test_export_as_json_and_markdown(client_for, alice, conversation):
    conversation.title = "Greetings"
    conversation.save()
    Message.objects.create(conversation=conversation, role="user", content="안녕하세요")
    Message.objects.create(conversation=conversation, role="assistant", content="Hello!")
    client = client_for(alice)

    as_json = client.get(url("conversation_detail", conversation) + "export.json")
    data = json.loads(as_json.content)
    assert as_json["Content-Disposition"] == (
        f'attachment; filename="conversation-{conversation.pk}.json"'
    )
    assert data["title"] == "Greetings"
    assert [(m["role"], m["content"]) for m in data["messages"]] == [
        ("user", "안녕하세요"),
        ("assistant", "Hello!"),
    ]

    as_md = client.get(url("conversation_detail", conversation) + "export.md").content.decode()
    assert as_md.startswith("# Greetings\n")
    assert "## You\n\n안녕하세요" in as_md
    assert "## Assistant\n\nHello!" in as_md

    assert client.get(url("conversation_detail", conversation) + "export.pdf").status_code == 404


# --- titles ---------------------------------------------------------------------------------


def test_the_first_exchange_titles_the_conversation(conversation, fake_upstream):
    Message.objects.create(conversation=conversation, role="user", content="Plan a trip to Jeju")

    title_conversation(conversation.pk)

    conversation.refresh_from_db()
    # The fake upstream echoes the last user message; the title is that reply, cleaned.
    assert conversation.title == "Echo: Plan a trip to Jeju"


def test_titling_falls_back_to_the_first_words(make_conversation, alice, project_a, fake_upstream):
    conversation = make_conversation(alice, project_a, model="fake-gpt@500")
    long = "Please help me write a polite e-mail to my landlord about the broken heating " * 3
    Message.objects.create(conversation=conversation, role="user", content=long)

    title_conversation(conversation.pk)

    conversation.refresh_from_db()
    assert conversation.title.startswith("Please help me write a polite e-mail")
    assert conversation.title.endswith("…")
    assert len(conversation.title) <= services.TITLE_MAX_CHARS + 1


def test_titling_never_overwrites_a_title_someone_chose(conversation, fake_upstream):
    conversation.title = "Mine"
    conversation.save()
    Message.objects.create(conversation=conversation, role="user", content="hello")

    title_conversation(conversation.pk)

    conversation.refresh_from_db()
    assert conversation.title == "Mine"
    assert sum(fake_upstream.request_counts.values()) == 0


def test_a_model_no_longer_allowed_is_explained_and_not_offered(
    client_for, alice, conversation, settings
):
    Conversation.objects.filter(pk=conversation.pk).update(model="gpt-retired")

    response = client_for(alice).get(url("conversation_detail", conversation))

    body = response.content.decode()
    assert "gpt-retired is no longer available in this project" in body
    assert 'value="gpt-retired"' not in body


def test_conversations_on_the_local_model_are_titled_by_their_first_words(alice, project_a):
    conversation = services.conversation_create(actor=Actor(user=alice), project=project_a)
    Message.objects.create(conversation=conversation, role="user", content="Plan a trip to Jeju")

    title_conversation(conversation.pk)

    conversation.refresh_from_db()
    assert conversation.title == "Plan a trip to Jeju"


def test_a_title_call_without_usage_is_billed_by_the_estimate(
    make_conversation, alice, project_a, fake_upstream
):
    conversation = make_conversation(alice, project_a, model="fake-gpt@nousage")
    Message.objects.create(conversation=conversation, role="user", content="Plan a trip to Jeju")

    title_conversation(conversation.pk)

    (row,) = UsageRecord.objects.filter(source=UsageRecord.Source.TITLE)
    assert row.estimated
    # The title prompt and the message were sent: the estimate counts them, never 0.
    assert row.prompt_tokens > len(TITLE_PROMPT.split())
    assert row.completion_tokens > 0  # the reply's text, counted the same way
