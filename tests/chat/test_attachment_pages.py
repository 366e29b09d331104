"""Image attachments over HTTP: the chat page's upload and image routes (session), and the REST
API's (key or session). Only those who may read the conversation see its images; an outsider
gets 404 on every route, the same as for a missing one."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.template.loader import render_to_string
from django.test import Client
from django.urls import reverse
from PIL import Image

from accounts.models import ApiKey
from chat import rooms, services
from chat.actors import Actor
from chat.attachments import attachment_create, attachments_link
from chat.models import Attachment, Message
from tests.chat.conftest import make_key

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def png(size: tuple[int, int] = (400, 300)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 160, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def page(name: str, conversation, *extra) -> str:
    project = conversation.project
    return reverse(name, args=[project.organization.slug, project.slug, conversation.pk, *extra])


def send_with(conversation, user, attachment: Attachment) -> Message:
    message = Message.objects.create(conversation=conversation, role="user", author=user)
    attachments_link(attachments=[attachment], message=message)
    return message


@pytest.fixture
def chat(make_conversation, alice, project_a):
    return make_conversation(alice, project_a)


# --- the chat page's routes --------------------------------------------------------------------


def test_alice_uploads_an_image_and_gets_it_back(client_for, alice, chat):
    client = client_for(alice)
    data = png()

    created = client.post(
        page("attachment_upload", chat),
        {"file": SimpleUploadedFile("garden.png", data, "image/png")},
    )
    body = created.json()
    served = client.get(body["url"])
    thumbnail = client.get(body["thumbnail_url"])

    assert created.status_code == 201
    assert {k: body[k] for k in ("name", "content_type", "width", "height", "size")} == {
        "name": "garden.png",
        "content_type": "image/png",
        "width": 400,
        "height": 300,
        "size": len(data),
    }
    assert body["url"] == page("attachment_file", chat, body["id"])
    assert (body["thumbnail_width"], body["thumbnail_height"]) == (256, 192)
    assert served.status_code == 200
    assert b"".join(served.streaming_content) == data
    assert served["Content-Type"] == "image/png"
    assert served["X-Content-Type-Options"] == "nosniff"
    assert served["Content-Disposition"] == 'inline; filename="garden.png"'
    assert served["Cache-Control"].startswith("private")
    assert thumbnail.status_code == 200
    assert thumbnail["Content-Type"] == "image/png"
    assert thumbnail["X-Content-Type-Options"] == "nosniff"
    assert Image.open(io.BytesIO(thumbnail.content)).size == (256, 192)


def test_a_refused_upload_is_a_400_saying_why(client_for, alice, chat):
    pdf = SimpleUploadedFile("scan.png", b"%PDF-1.4\n%%EOF\n", "image/png")

    answer = client_for(alice).post(page("attachment_upload", chat), {"file": pdf})

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "image_mislabelled"
    assert "scan.png" in error["message"]
    assert not Attachment.objects.exists()


def test_the_upload_needs_the_csrf_token(alice, chat):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    answer = client.post(
        page("attachment_upload", chat), {"file": SimpleUploadedFile("a.png", png(), "image/png")}
    )

    assert answer.status_code == 403
    assert not Attachment.objects.exists()


def test_unsent_uploads_are_listed_for_the_composer_and_can_be_removed(client_for, alice, chat):
    client = client_for(alice)
    ids = [
        client.post(
            page("attachment_upload", chat),
            {"file": SimpleUploadedFile(f"{n}.png", png(), "image/png")},
        ).json()["id"]
        for n in range(2)
    ]

    listed = client.get(page("attachment_upload", chat)).json()["attachments"]
    removed = client.post(page("attachment_delete", chat, ids[0]))
    after = client.get(page("attachment_upload", chat)).json()["attachments"]

    assert [a["id"] for a in listed] == ids
    assert removed.status_code == 204
    assert [a["id"] for a in after] == ids[1:]


def test_a_sent_image_cannot_be_removed_from_the_composer(client_for, alice, chat):
    attachment = attachment_create(
        actor=Actor(user=alice),
        conversation=chat,
        upload=SimpleUploadedFile("a.png", png(), "image/png"),
    )
    send_with(chat, alice, attachment)

    answer = client_for(alice).post(page("attachment_delete", chat, attachment.pk))

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "attachment_sent"
    assert Attachment.objects.filter(pk=attachment.pk).exists()


def test_bob_cannot_see_alices_private_images(client_for, alice, bob, chat):
    attachment = attachment_create(
        actor=Actor(user=alice),
        conversation=chat,
        upload=SimpleUploadedFile("a.png", png(), "image/png"),
    )
    send_with(chat, alice, attachment)
    client = client_for(bob)

    answers = [
        client.get(page("attachment_file", chat, attachment.pk)),
        client.get(page("attachment_thumbnail", chat, attachment.pk)),
        client.get(page("attachment_upload", chat)),
        client.post(
            page("attachment_upload", chat),
            {"file": SimpleUploadedFile("b.png", png(), "image/png")},
        ),
        client.post(page("attachment_delete", chat, attachment.pk)),
    ]

    assert [a.status_code for a in answers] == [404] * 5
    assert Attachment.objects.count() == 1


def test_in_a_room_bob_sees_what_was_sent_but_not_alices_drafts(client_for, alice, bob, project_a):
    room = rooms.room_create(actor=Actor(user=alice), project=project_a, title="Garden")
    actor = Actor(user=alice)
    sent = attachment_create(
        actor=actor, conversation=room, upload=SimpleUploadedFile("sent.png", png(), "image/png")
    )
    send_with(room, alice, sent)
    draft = attachment_create(
        actor=actor, conversation=room, upload=SimpleUploadedFile("draft.png", png(), "image/png")
    )
    client = client_for(bob)

    assert client.get(page("attachment_file", room, sent.pk)).status_code == 200
    assert client.get(page("attachment_thumbnail", room, sent.pk)).status_code == 200
    assert client.get(page("attachment_file", room, draft.pk)).status_code == 404
    assert client.post(page("attachment_delete", room, draft.pk)).status_code == 404
    assert client.get(page("attachment_upload", room)).json() == {"attachments": []}
    uploaded = client.post(
        page("attachment_upload", room), {"file": SimpleUploadedFile("b.png", png(), "image/png")}
    )
    assert uploaded.status_code == 201
    assert Attachment.objects.get(pk=uploaded.json()["id"]).uploaded_by == bob


def test_charlie_gets_404_on_every_page_route(client_for, alice, charlie, project_a):
    room = rooms.room_create(actor=Actor(user=alice), project=project_a, title="Everyone")
    attachment = attachment_create(
        actor=Actor(user=alice),
        conversation=room,
        upload=SimpleUploadedFile("a.png", png(), "image/png"),
    )
    send_with(room, alice, attachment)
    client = client_for(charlie)

    answers = [
        client.get(page("attachment_file", room, attachment.pk)),
        client.get(page("attachment_thumbnail", room, attachment.pk)),
        client.get(page("attachment_upload", room)),
        client.post(
            page("attachment_upload", room),
            {"file": SimpleUploadedFile("c.png", png(), "image/png")},
        ),
        client.post(page("attachment_delete", room, attachment.pk)),
    ]

    assert [a.status_code for a in answers] == [404] * 5
    assert Attachment.objects.count() == 1


def test_an_image_of_another_conversation_is_not_found_through_this_one(
    client_for, make_conversation, alice, project_a, chat
):
    other = make_conversation(alice, project_a)
    attachment = attachment_create(
        actor=Actor(user=alice),
        conversation=other,
        upload=SimpleUploadedFile("a.png", png(), "image/png"),
    )

    answer = client_for(alice).get(page("attachment_file", chat, attachment.pk))

    assert answer.status_code == 404


def test_the_transcript_template_shows_thumbnails_linking_to_the_images(alice, chat, project_a):
    attachment = attachment_create(
        actor=Actor(user=alice),
        conversation=chat,
        upload=SimpleUploadedFile('a "quoted" <name>.png', png(), "image/png"),
    )

    html = render_to_string(
        "chat/_attachments.html", {"attachments": [attachment], "project": project_a}
    )
    empty = render_to_string("chat/_attachments.html", {"attachments": [], "project": project_a})

    assert f'href="{page("attachment_file", chat, attachment.pk)}"' in html
    assert f'src="{page("attachment_thumbnail", chat, attachment.pk)}"' in html
    assert 'alt="a &quot;quoted&quot; &lt;name&gt;.png"' in html
    assert 'width="400" height="300"' in html
    assert empty.strip() == ""


# --- REST ----------------------------------------------------------------------------------------


def api(name: str, conversation, *extra) -> str:
    return reverse(
        name,
        kwargs={
            "project_id": conversation.project_id,
            "conversation_id": conversation.pk,
            **dict(zip(("attachment_id",), extra, strict=False)),
        },
    )


@pytest.fixture
def keyed(alice, org_a, project_a, fake_upstream):
    """A project key (chat, read) and one of the project's API conversations."""
    key = make_key(alice, org_a, project_a, ["chat", "read"])
    conversation = services.conversation_start(
        actor=Actor(api_key=ApiKey.objects.get(project=project_a)),
        project=project_a,
        changes={"title": "api"},
    )
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}"), conversation


def test_a_key_uploads_lists_reads_and_downloads(keyed):
    client, conversation = keyed
    data = png((64, 64))

    created = client.post(
        api("api-attachments", conversation),
        {"file": SimpleUploadedFile("k.png", data, "image/png")},
    )
    attachment_id = created.json()["id"]
    listed = client.get(api("api-attachments", conversation))
    detail = client.get(api("api-attachment", conversation, attachment_id))
    download = client.get(api("api-attachment-file", conversation, attachment_id))

    assert created.status_code == 201, created.content
    assert created.json()["message"] is None
    assert created.json()["url"] == (
        f"http://testserver{api('api-attachment-file', conversation, attachment_id)}"
    )
    assert [a["id"] for a in listed.json()["results"]] == [attachment_id]
    assert detail.json()["sha256"] == Attachment.objects.get().sha256
    assert (detail.json()["width"], detail.json()["content_type"]) == (64, "image/png")
    assert download.status_code == 200
    assert download["Content-Type"] == "image/png"
    assert download["X-Content-Type-Options"] == "nosniff"
    assert b"".join(download.streaming_content) == data
    # Asking for an image type only still gets the image.
    accepted = client.get(
        api("api-attachment-file", conversation, attachment_id), HTTP_ACCEPT="image/png"
    )
    assert accepted.status_code == 200


def test_a_key_upload_refused_answers_in_the_apis_error_shape(keyed):
    client, conversation = keyed

    answer = client.post(
        api("api-attachments", conversation),
        {"file": SimpleUploadedFile("doc.pdf", b"%PDF-1.4\n%%EOF\n", "application/pdf")},
    )
    as_json = client.post(
        api("api-attachments", conversation),
        data=json.dumps({"file": "x"}),
        content_type="application/json",
    )

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "image_type_not_allowed"
    assert answer.json()["error"]["param"] == "file"
    assert as_json.status_code == 415
    assert not Attachment.objects.exists()


def test_a_key_removes_its_unsent_upload(keyed):
    client, conversation = keyed
    created = client.post(
        api("api-attachments", conversation),
        {"file": SimpleUploadedFile("k.png", png(), "image/png")},
    ).json()

    removed = client.delete(api("api-attachment", conversation, created["id"]))

    assert removed.status_code == 204
    assert not Attachment.objects.exists()


def test_a_read_only_key_may_not_upload(alice, org_a, project_a, fake_upstream):
    key = make_key(alice, org_a, project_a, ["read"])
    conversation = services.conversation_start(
        actor=Actor(api_key=ApiKey.objects.get(project=project_a)), project=project_a, changes={}
    )

    answer = Client(HTTP_AUTHORIZATION=f"Bearer {key}").post(
        api("api-attachments", conversation),
        {"file": SimpleUploadedFile("k.png", png(), "image/png")},
    )

    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "insufficient_scope"


def test_members_and_keys_never_see_each_others_images(client_for, keyed, alice, bob, chat):
    key_client, api_conversation = keyed
    alices = attachment_create(
        actor=Actor(user=alice),
        conversation=chat,
        upload=SimpleUploadedFile("a.png", png(), "image/png"),
    )
    send_with(chat, alice, alices)
    keys = key_client.post(
        api("api-attachments", api_conversation),
        {"file": SimpleUploadedFile("k.png", png(), "image/png")},
    ).json()

    # The key reaches the project's API conversations, never a member's own chat…
    assert key_client.get(api("api-attachments", chat)).status_code == 404
    assert key_client.get(api("api-attachment-file", chat, alices.pk)).status_code == 404
    # …nor does a member reach the API conversations, or bob alice's chat.
    alice_client, bob_client = client_for(alice), client_for(bob)
    assert alice_client.get(api("api-attachment", api_conversation, keys["id"])).status_code == 404
    assert bob_client.get(api("api-attachments", chat)).status_code == 404
    assert bob_client.get(api("api-attachment", chat, alices.pk)).status_code == 404
    # Alice reads her own through the session.
    assert alice_client.get(api("api-attachment", chat, alices.pk)).status_code == 200


def test_charlie_gets_404_on_every_rest_route(
    client_for, alice, charlie, org_b, project_b, fake_upstream, chat
):
    attachment = attachment_create(
        actor=Actor(user=alice),
        conversation=chat,
        upload=SimpleUploadedFile("a.png", png(), "image/png"),
    )
    send_with(chat, alice, attachment)
    charlies_key = make_key(charlie, org_b, project_b, ["chat", "read"])
    session = client_for(charlie)

    answers = [
        session.get(api("api-attachments", chat)),
        session.post(
            api("api-attachments", chat), {"file": SimpleUploadedFile("c.png", png(), "image/png")}
        ),
        session.get(api("api-attachment", chat, attachment.pk)),
        session.delete(api("api-attachment", chat, attachment.pk)),
        session.get(api("api-attachment-file", chat, attachment.pk)),
    ]
    # Another project's key is no key at all here (the API's rule): 401, never the image.
    keyed_answer = Client(HTTP_AUTHORIZATION=f"Bearer {charlies_key}").get(
        api("api-attachment-file", chat, attachment.pk)
    )

    assert [a.status_code for a in answers] == [404] * 5
    assert keyed_answer.status_code == 401
    assert Attachment.objects.count() == 1
