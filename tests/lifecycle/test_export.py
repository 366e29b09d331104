"""A person downloads everything of theirs: a zip of JSON, nothing of anyone else's."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from billing.models import UsageRecord
from chat.models import Conversation, Message
from tests.accounts.test_two_factor import turn_on, verified_client
from tests.chat.conftest import make_key
from tests.factories import PASSWORD

from .conftest import conversation, image, message, spend

pytestmark = pytest.mark.django_db


def unzip(response) -> dict[str, bytes]:
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"] == "application/zip"
    body = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


def load(files: dict[str, bytes], name: str) -> Any:
    return json.loads(files[name])


def everything(files: dict[str, bytes]) -> str:
    return "\n".join(data.decode("utf-8", "replace") for data in files.values())


@pytest.fixture
def world(fake_price, alice, bob, charlie, org_a, project_a, project_b):
    """alice's chat (with a reply and a tool call), bob's and charlie's chats, and the ledger
    rows of each one's calls."""
    mine = conversation(alice, project_a, title="Alice's plan")
    asked = message(mine, "How do I grow tomatoes?", author=alice)
    reply = message(
        mine, "Sunlight and water.", author=alice, role=Message.Role.ASSISTANT, parent=asked
    )
    reply.tool_calls.create(round=1, call_id="call_1", name="weather", arguments="{}", result="sun")
    bobs = conversation(bob, project_a, title="Bob's diary")
    message(bobs, "bob private words", author=bob)
    charlies = conversation(charlie, project_b, title="Charlie's secrets")
    message(charlies, "charlie private words", author=charlie)
    rows = {
        "alice": [
            spend(project_a, user=alice, conversation=mine, reply=reply),
            spend(project_a, user=alice, conversation=mine, prompt=7, completion=3),
        ],
        "bob": [spend(project_a, user=bob, conversation=bobs)],
        "charlie": [spend(project_b, user=charlie, conversation=charlies)],
    }
    return {"mine": mine, "reply": reply, "rows": rows}


def test_it_exports_alices_conversation_and_usage_and_nothing_of_bob_or_charlie(
    client_for, world, alice
):
    files = unzip(client_for(alice).get(reverse("account_export_download")))

    mine = world["mine"]
    assert load(files, "profile.json")["email"] == "alice@example.com"
    exported = load(files, f"conversations/{mine.pk}.json")
    assert exported["conversation"]["title"] == "Alice's plan"
    assert [m["content"] for m in exported["messages"]] == [
        "How do I grow tomatoes?",
        "Sunlight and water.",
    ]
    reply = exported["messages"][1]
    assert (reply["role"], reply["model"], reply["state"]) == ("assistant", "fake-gpt", "complete")
    assert reply["tool_calls"][0]["name"] == "weather"
    assert reply["created_at"] == world["reply"].created_at.isoformat()

    usage = load(files, "usage.json")
    expected = sorted(world["rows"]["alice"], key=lambda r: (r.created_at, r.pk))
    assert [row["request_id"] for row in usage] == [str(r.request_id) for r in expected]
    for row, record in zip(usage, expected, strict=True):
        assert isinstance(row["cost_usd"], str)
        assert row["cost_usd"] == str(UsageRecord.objects.get(pk=record.pk).cost)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            record.prompt_tokens,
            record.completion_tokens,
        )
        assert row["model"] == "fake-gpt"
    assert usage[0]["cost_usd"] == "0.200000000000"  # 100 in at $0.001, 50 out at $0.002

    text = everything(files)
    assert "Bob's diary" not in text
    assert "bob private words" not in text
    assert "Charlie" not in text
    assert "charlie" not in text
    others = {str(r.request_id) for r in world["rows"]["bob"] + world["rows"]["charlie"]}
    assert not any(request_id in text for request_id in others)
    assert not [name for name in files if name.startswith("conversations/")][1:]


def test_it_never_holds_a_password_hash_or_two_factor_secret(alice):
    device, recovery_codes = turn_on(alice)

    files = unzip(verified_client(alice).get(reverse("account_export_download")))

    profile = load(files, "profile.json")
    assert profile["two_factor_enabled"] is True
    text = everything(files)
    assert alice.password not in text
    assert "password" not in profile
    assert device.key not in text
    assert not [code for code in recovery_codes if code in text]


def test_in_rooms_it_keeps_whose_words_they_are_but_not_who_the_others_are(
    client_for, alice, bob, org_a, project_a
):
    alices_room = conversation(alice, project_a, title="Garden", sharing="project")
    message(alices_room, "alice opens the room", author=alice)
    message(alices_room, "bob answers in alice's room", author=bob)
    bobs_room = conversation(bob, project_a, title="Kitchen", sharing="project")
    message(bobs_room, "bob opens his room", author=bob)
    message(bobs_room, "alice speaks in bob's room", author=alice)

    files = unzip(client_for(alice).get(reverse("account_export_download")))

    room = load(files, f"conversations/{alices_room.pk}.json")
    assert [(m["content"], m["by_you"]) for m in room["messages"]] == [
        ("alice opens the room", True),
        ("bob answers in alice's room", False),
    ]
    elsewhere = load(files, "room_messages.json")
    assert [(m["room"]["title"], m["content"]) for m in elsewhere] == [
        ("Kitchen", "alice speaks in bob's room")
    ]
    text = everything(files)
    assert "bob@example.com" not in text
    assert "bob opens his room" not in text
    assert f"conversations/{bobs_room.pk}.json" not in files


def test_images_go_in_until_the_size_allowed_and_the_rest_are_described(
    client_for, alice, project_a, media, settings
):
    chat = conversation(alice, project_a, title="Pictures")
    first = image(message(chat, "look", author=alice), name="first.png", uploaded_by=alice)
    second = image(message(chat, "and this", author=alice), name="second.png", uploaded_by=alice)
    settings.LIFECYCLE_EXPORT_IMAGE_BYTES = first.size  # room for one only

    files = unzip(client_for(alice).get(reverse("account_export_download")))

    described = [
        a
        for m in load(files, f"conversations/{chat.pk}.json")["messages"]
        for a in m["attachments"]
    ]
    assert [(a["name"], a["size"]) for a in described] == [
        ("first.png", first.size),
        ("second.png", second.size),
    ]
    assert described[0]["file"] == f"attachments/{chat.pk}/{first.pk}-first.png"
    assert files[described[0]["file"]] == first.file.open("rb").read()
    assert (described[1]["file"], described[1]["omitted"]) == (None, "size")
    counts = load(files, "export.json")["counts"]
    assert (counts["images_included"], counts["images_omitted"]) == (1, 1)


def test_conversations_of_an_organization_she_left_are_not_hers_to_take(
    client_for, alice, bob, org_a, project_a
):
    # bob's chat stays with org A once he leaves it (the organization's scoped path).
    kept = conversation(bob, project_a, title="Left behind")
    bob.memberships.filter(organization=org_a).delete()

    files = unzip(client_for(bob).get(reverse("account_export_download")))

    assert f"conversations/{kept.pk}.json" not in files
    assert load(files, "memberships.json") == []


def test_the_rest_endpoint_gives_the_same_zip_to_a_signed_in_person_only(
    client_for, world, alice, org_a, project_a
):
    url = reverse("api-me-export")
    assert url == "/api/v1/me/export/"

    files = unzip(client_for(alice).get(url))
    assert f"conversations/{world['mine'].pk}.json" in files

    keyed = Client().get(url, HTTP_AUTHORIZATION=f"Bearer {make_key(alice, org_a, project_a)}")
    assert keyed.status_code == 403
    assert keyed.json()["error"]["code"] == "keys_not_allowed"
    anonymous = Client().get(url)
    assert anonymous.status_code == 401


def test_exports_are_limited_per_minute(client_for, alice):
    client = client_for(alice)
    for _ in range(3):
        assert client.get(reverse("api-me-export")).status_code == 200

    refused = client.get(reverse("api-me-export"))

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_the_page_explains_and_links_the_download(client_for, alice):
    page = client_for(alice).get(reverse("account_export"))

    assert page.status_code == 200
    assert reverse("account_export_download") in page.content.decode()
    account = client_for(alice).get(reverse("account")).content.decode()
    assert reverse("account_export") in account
    assert reverse("account_delete") in account


def test_nobody_signed_in_is_sent_to_log_in(client):
    for name in ("account_export", "account_export_download", "account_delete"):
        response = client.get(reverse(name))
        assert response.status_code == 302
        assert response.url.startswith(reverse("login"))


def test_a_large_account_is_written_conversation_by_conversation(
    client_for, alice, project_a, django_assert_max_num_queries
):
    for n in range(30):
        chat = conversation(alice, project_a, title=f"chat {n}")
        message(chat, f"words {n}", author=alice)

    with django_assert_max_num_queries(200):
        files = unzip(client_for(alice).get(reverse("account_export_download")))

    assert len([name for name in files if name.startswith("conversations/")]) == 30
    assert Conversation.objects.filter(owner=alice).count() == 30
    assert PASSWORD not in everything(files)
