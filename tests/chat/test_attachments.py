"""Image attachments (chat.attachments): what is refused and why, what is stored where, the data
URLs a model is sent, the prompt's count of them, and the files going with their rows."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import zlib
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from PIL import Image

from accounts.models import ApiKey
from chat import attachments, exports, rooms, services
from chat.actors import Actor
from chat.attachments import (
    attachment_create,
    attachments_claim,
    attachments_link,
    attachments_purge_unsent,
    image_parts,
)
from chat.models import Attachment, Message
from chat.prompt import build_prompt
from core.errors import ServiceError
from providers.llm.catalog import LOCAL_MODEL_NAME
from providers.models import ConnectionModel
from tests.chat.conftest import make_key

pytestmark = pytest.mark.django_db

MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
EXTENSION = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}


@pytest.fixture(autouse=True)
def media(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buffer, fmt)
    return buffer.getvalue()


def upload(name: str, data: bytes, content_type: str | None = None) -> SimpleUploadedFile:
    guessed = MIME.get(name.rsplit(".", 1)[-1].upper().replace("JPG", "JPEG"))
    return SimpleUploadedFile(name, data, content_type=content_type or guessed or "")


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height``: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def stored_files(media: Path) -> list[Path]:
    return sorted(p for p in media.rglob("*") if p.is_file()) if media.exists() else []


def refusal(actor, conversation, file) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        attachment_create(actor=actor, conversation=conversation, upload=file)
    return info.value


@pytest.fixture
def chat(make_conversation, alice, project_a):
    return make_conversation(alice, project_a)


# --- what is stored ----------------------------------------------------------------------------


def test_it_stores_an_image_under_its_tenant_with_what_it_is(chat, alice, org_a, project_a, media):
    data = image_bytes("PNG", (640, 480))

    attachment = attachment_create(
        actor=Actor(user=alice), conversation=chat, upload=upload("../../Cat photo.png", data)
    )

    attachment.refresh_from_db()
    assert attachment.file.name.startswith(f"attachments/o{org_a.pk}/p{project_a.pk}/")
    assert attachment.name == "Cat photo.png"  # the path parts of the uploaded name are gone
    assert (attachment.content_type, attachment.width, attachment.height) == ("image/png", 640, 480)
    assert attachment.size == len(data)
    assert attachment.sha256 == hashlib.sha256(data).hexdigest()
    assert (attachment.uploaded_by, attachment.api_key, attachment.message) == (alice, None, None)
    assert (media / attachment.file.name).read_bytes() == data
    thumbnail = Image.open(io.BytesIO(attachments.attachment_thumbnail(attachment)))
    assert thumbnail.format == "PNG"
    assert max(thumbnail.size) == 256
    assert thumbnail.size[0] > thumbnail.size[1]
    assert len(stored_files(media)) == 2  # the image and its thumbnail, side by side


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_it_takes_each_format_models_read(chat, alice, fmt):
    attachment = attachment_create(
        actor=Actor(user=alice),
        conversation=chat,
        upload=upload(f"picture.{EXTENSION[fmt]}", image_bytes(fmt)),
    )

    assert attachment.content_type == MIME[fmt]
    assert (attachment.width, attachment.height) == (64, 48)


def test_a_name_without_an_extension_or_type_is_taken_by_its_bytes(chat, alice):
    file = SimpleUploadedFile("clipboard", image_bytes("JPEG"), "application/octet-stream")

    attachment = attachment_create(actor=Actor(user=alice), conversation=chat, upload=file)

    assert (attachment.name, attachment.content_type) == ("clipboard", "image/jpeg")


# --- what is refused ---------------------------------------------------------------------------


class Unreadable(SimpleUploadedFile):
    """An upload that must not be read: refused on its size alone."""

    def read(self, *args, **kwargs):
        raise AssertionError("read before its size was checked")


def test_an_image_over_the_byte_limit_is_refused_before_it_is_read(chat, alice, settings, media):
    settings.CHAT_IMAGE_MAX_BYTES = 1000
    big = Unreadable("big.png", b"\x89PNG" + b"\x00" * 2000, "image/png")

    error = refusal(Actor(user=alice), chat, big)

    assert (error.code, error.status, error.param) == ("image_too_large", 400, "file")
    assert "big.png" in error.message
    assert "1000" in error.message.replace("\xa0", " ")
    assert stored_files(media) == []
    assert not Attachment.objects.exists()


def test_a_corrupt_file_is_refused(chat, alice):
    error = refusal(Actor(user=alice), chat, upload("noise.png", b"\x89PNG\r\n\x1a\nnot really"))

    assert error.code == "image_invalid"


def test_a_truncated_image_is_refused(chat, alice, media):
    data = image_bytes("PNG", (300, 200))

    error = refusal(Actor(user=alice), chat, upload("cut.png", data[: len(data) // 2]))

    assert error.code == "image_invalid"
    assert "damaged or incomplete" in error.message
    assert stored_files(media) == []


def test_a_truncated_jpeg_is_refused_too(chat, alice):
    data = image_bytes("JPEG", (300, 200))

    assert refusal(Actor(user=alice), chat, upload("cut.jpg", data[:-200])).code == "image_invalid"


def test_a_pdf_named_png_is_refused_as_mislabelled(chat, alice):
    pdf = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"

    error = refusal(Actor(user=alice), chat, upload("scan.png", pdf))

    assert error.code == "image_mislabelled"
    assert "PNG" in error.message
    assert "PDF" in error.message


def test_a_pdf_is_not_an_image(chat, alice):
    pdf = b"%PDF-1.7\n%%EOF\n"

    error = refusal(Actor(user=alice), chat, upload("scan.pdf", pdf, "application/pdf"))

    assert error.code == "image_type_not_allowed"
    assert "PDF" in error.message


def test_a_jpeg_named_png_is_mislabelled(chat, alice):
    error = refusal(Actor(user=alice), chat, upload("photo.png", image_bytes("JPEG")))

    assert error.code == "image_mislabelled"


def test_a_declared_type_that_is_not_the_bytes_is_mislabelled(chat, alice):
    file = SimpleUploadedFile("photo", image_bytes("PNG"), "image/gif")

    assert refusal(Actor(user=alice), chat, file).code == "image_mislabelled"


def test_an_image_of_another_format_is_refused(chat, alice):
    error = refusal(Actor(user=alice), chat, upload("old.bmp", image_bytes("BMP"), "image/bmp"))

    assert error.code == "image_type_not_allowed"
    assert "PNG, JPEG, WebP or GIF" in error.message


def test_a_decompression_bomb_is_refused(chat, alice, media):
    bomb = png_claiming(100_000, 100_000)  # 10 billion pixels in a few dozen bytes

    error = refusal(Actor(user=alice), chat, upload("bomb.png", bomb))

    assert error.code == "image_too_large"
    assert "pixels" in error.message
    assert stored_files(media) == []


def test_more_pixels_than_the_setting_allows_are_refused(chat, alice, settings):
    settings.CHAT_IMAGE_MAX_PIXELS = 1000

    error = refusal(Actor(user=alice), chat, upload("wide.png", image_bytes("PNG", (50, 30))))

    assert error.code == "image_too_large"
    assert "50 x 30" in error.message


def test_more_unsent_images_than_a_message_takes_are_refused(
    make_conversation, alice, bob, project_a, settings
):
    settings.CHAT_IMAGE_MAX_COUNT = 2
    room = rooms.room_create(actor=Actor(user=alice), project=project_a, title="Pictures")
    for n in range(2):
        attachment_create(
            actor=Actor(user=alice), conversation=room, upload=upload(f"{n}.png", image_bytes())
        )

    error = refusal(Actor(user=alice), room, upload("third.png", image_bytes()))
    # Someone else's uploads in the same room are theirs: bob still has room for his.
    bobs = attachment_create(
        actor=Actor(user=bob), conversation=room, upload=upload("bob.png", image_bytes())
    )

    assert (error.code, error.param) == ("too_many_images", "file")
    assert bobs.uploaded_by == bob


def test_a_missing_file_is_refused(chat, alice):
    assert refusal(Actor(user=alice), chat, None).code == "image_missing"


# --- claimed by a message, sent as data URLs ---------------------------------------------------


def test_upload_claim_and_send_round_trip(chat, alice):
    actor = Actor(user=alice)
    png, jpeg = image_bytes("PNG"), image_bytes("JPEG", (32, 32))
    first = attachment_create(actor=actor, conversation=chat, upload=upload("a.png", png))
    second = attachment_create(actor=actor, conversation=chat, upload=upload("b.jpg", jpeg))

    claimed = attachments_claim(actor=actor, conversation=chat, ids=[second.pk, first.pk])
    message = Message.objects.create(conversation=chat, role="user", content="what is this?")
    attachments_link(attachments=claimed, message=message)
    parts = image_parts(claimed)

    assert claimed == [second, first]  # in the order given
    assert set(message.attachments.all()) == {first, second}
    assert attachments.sent_attachments_by_message(chat) == {message.pk: [first, second]}
    assert [p["type"] for p in parts] == ["image_url", "image_url"]
    assert parts[0]["image_url"]["detail"] == "auto"
    header, encoded = parts[0]["image_url"]["url"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    assert base64.b64decode(encoded) == jpeg
    assert base64.b64decode(parts[1]["image_url"]["url"].split(",", 1)[1]) == png
    assert attachments.message_content("hi", claimed) == [{"type": "text", "text": "hi"}, *parts]
    assert attachments.message_content("hi", []) == "hi"
    # Sent: no longer the composer's to claim again.
    with pytest.raises(ServiceError) as again:
        attachments_claim(actor=actor, conversation=chat, ids=[first.pk])
    assert (again.value.code, again.value.param) == ("invalid_attachments", "attachments")


@pytest.mark.parametrize("ids", ["1", [True], [1.0], [1, 1], {"id": 1}, [None]])
def test_claim_refuses_what_is_not_a_list_of_ids(chat, alice, ids):
    attachment_create(
        actor=Actor(user=alice), conversation=chat, upload=upload("a.png", image_bytes())
    )

    with pytest.raises(ServiceError) as info:
        attachments_claim(actor=Actor(user=alice), conversation=chat, ids=ids)

    assert (info.value.code, info.value.param) == ("invalid_attachments", "attachments")


def test_claim_takes_nothing_for_no_ids(chat, alice):
    assert attachments_claim(actor=Actor(user=alice), conversation=chat, ids=None) == []
    assert attachments_claim(actor=Actor(user=alice), conversation=chat, ids=[]) == []


def test_claim_refuses_more_than_a_message_takes(chat, alice, settings):
    settings.CHAT_IMAGE_MAX_COUNT = 1
    with pytest.raises(ServiceError) as info:
        attachments_claim(actor=Actor(user=alice), conversation=chat, ids=[1, 2])

    assert info.value.code == "invalid_attachments"


def test_claim_refuses_someone_elses_upload_and_another_conversations(
    make_conversation, alice, bob, project_a
):
    room = rooms.room_create(actor=Actor(user=alice), project=project_a, title="Shared")
    other = make_conversation(alice, project_a)
    bobs = attachment_create(
        actor=Actor(user=bob), conversation=room, upload=upload("b.png", image_bytes())
    )
    elsewhere = attachment_create(
        actor=Actor(user=alice), conversation=other, upload=upload("a.png", image_bytes())
    )

    for ids in ([bobs.pk], [elsewhere.pk], [987654]):
        with pytest.raises(ServiceError) as info:
            attachments_claim(actor=Actor(user=alice), conversation=room, ids=ids)
        assert info.value.code == "invalid_attachments"


def test_a_key_uploads_and_claims_in_its_projects_api_conversation(
    alice, org_a, project_a, fake_upstream
):
    make_key(alice, org_a, project_a, ["chat", "read"])
    key = ApiKey.objects.get(project=project_a)
    conversation = services.conversation_start(
        actor=Actor(api_key=key), project=project_a, changes={"title": "api"}
    )

    attachment = attachment_create(
        actor=Actor(api_key=key), conversation=conversation, upload=upload("k.png", image_bytes())
    )

    assert (attachment.api_key, attachment.uploaded_by) == (key, None)
    assert attachments_claim(
        actor=Actor(api_key=key), conversation=conversation, ids=[attachment.pk]
    ) == [attachment]
    # A person's uploads are never a key's to send, nor the other way round.
    with pytest.raises(ServiceError):
        attachments_claim(actor=Actor(user=alice), conversation=conversation, ids=[attachment.pk])


# --- files go with their rows ------------------------------------------------------------------


def test_the_files_go_with_the_conversation(chat, alice, media, django_capture_on_commit_callbacks):
    attachment_create(
        actor=Actor(user=alice), conversation=chat, upload=upload("a.png", image_bytes())
    )
    assert len(stored_files(media)) == 2

    with django_capture_on_commit_callbacks(execute=True):
        services.conversation_delete(conversation=chat)

    assert stored_files(media) == []


def test_the_files_go_with_the_message_and_with_the_project(
    make_conversation, alice, project_a, media, django_capture_on_commit_callbacks
):
    chat = make_conversation(alice, project_a)
    sent = attachment_create(
        actor=Actor(user=alice), conversation=chat, upload=upload("a.png", image_bytes())
    )
    message = Message.objects.create(conversation=chat, role="user", content="look")
    attachments_link(attachments=[sent], message=message)
    kept = attachment_create(
        actor=Actor(user=alice), conversation=chat, upload=upload("b.png", image_bytes())
    )

    with django_capture_on_commit_callbacks(execute=True):
        message.delete()
    left = stored_files(media)
    with django_capture_on_commit_callbacks(execute=True):
        project_a.delete()

    assert {p.parent.name for p in left} == {Path(kept.file.name).parent.name}
    assert stored_files(media) == []


def test_a_rolled_back_delete_keeps_the_files(
    chat, alice, media, django_capture_on_commit_callbacks
):
    attachment = attachment_create(
        actor=Actor(user=alice), conversation=chat, upload=upload("a.png", image_bytes())
    )

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        attachment.delete()

    assert len(callbacks) == 1  # waiting for a commit that, here, never comes
    assert len(stored_files(media)) == 2


def test_unsent_uploads_older_than_a_day_are_purged(
    chat, alice, media, django_capture_on_commit_callbacks
):
    actor = Actor(user=alice)
    old = attachment_create(actor=actor, conversation=chat, upload=upload("old.png", image_bytes()))
    sent = attachment_create(
        actor=actor, conversation=chat, upload=upload("sent.png", image_bytes())
    )
    recent = attachment_create(
        actor=actor, conversation=chat, upload=upload("new.png", image_bytes())
    )
    attachments_link(
        attachments=[sent], message=Message.objects.create(conversation=chat, role="user")
    )
    two_days_ago = timezone.now() - timedelta(days=2)
    Attachment.objects.filter(pk__in=[old.pk, sent.pk]).update(created_at=two_days_ago)

    with django_capture_on_commit_callbacks(execute=True):
        purged = attachments_purge_unsent(older_than=timedelta(days=1))

    assert purged == 1
    assert set(Attachment.objects.values_list("pk", flat=True)) == {sent.pk, recent.pk}
    assert not (media / old.file.name).exists()
    assert (media / sent.file.name).exists()


def test_an_unsent_upload_is_removed_by_its_uploader_only_before_it_is_sent(
    chat, alice, media, django_capture_on_commit_callbacks
):
    actor = Actor(user=alice)
    draft = attachment_create(actor=actor, conversation=chat, upload=upload("a.png", image_bytes()))
    sent = attachment_create(actor=actor, conversation=chat, upload=upload("b.png", image_bytes()))
    attachments_link(
        attachments=[sent], message=Message.objects.create(conversation=chat, role="user")
    )

    with django_capture_on_commit_callbacks(execute=True):
        attachments.attachment_delete(actor=actor, attachment=draft)
    with pytest.raises(ServiceError) as info:
        attachments.attachment_delete(actor=actor, attachment=sent)

    assert info.value.code == "attachment_sent"
    assert list(Attachment.objects.all()) == [sent]
    assert not (media / draft.file.name).exists()


# --- which models read images ------------------------------------------------------------------


def test_a_model_not_marked_for_vision_refuses_images(chat, project_a):
    with pytest.raises(ServiceError) as info:
        attachments.check_model_sees_images(project=project_a, model=LOCAL_MODEL_NAME)
    with pytest.raises(ServiceError):
        attachments.check_model_sees_images(project=project_a, model="fake-gpt")

    assert (info.value.code, info.value.param, info.value.status) == (
        "model_lacks_vision",
        "attachments",
        400,
    )
    assert info.value.message == (
        f"The model {LOCAL_MODEL_NAME} cannot read images; pick a vision model."
    )


def test_a_vision_model_takes_images(chat, project_a):
    model = ConnectionModel.objects.get(name="fake-gpt", connection__project=project_a)
    model.supports_vision = True
    model.save()

    attachments.check_model_sees_images(project=project_a, model="fake-gpt")
    settings_ = attachments.composer_settings(chat)

    assert settings_["vision"] == "true"
    assert settings_["vision_reason"] == ""
    assert settings_["url"].endswith(f"/chat/{chat.pk}/attachments/")
    assert attachments.composer_settings(chat, model=LOCAL_MODEL_NAME)["vision"] == "false"


# --- the prompt counts images, and keeps or drops a message whole ------------------------------


def image_content(text: str, size: tuple[int, int] = (1024, 1024)) -> list[dict]:
    url = f"data:image/png;base64,{base64.b64encode(image_bytes('PNG', size)).decode()}"
    return [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]


def test_the_prompt_counts_each_image_by_the_providers_rule():
    plain = build_prompt(
        system_prompt="",
        latest={"role": "user", "content": "what is this?"},
        history_newest_first=[],
        history_count=0,
        context_window=128_000,
        reply_tokens=1000,
    )
    with_image = build_prompt(
        system_prompt="",
        latest={"role": "user", "content": image_content("what is this?")},
        history_newest_first=[("user", image_content("and this?", (512, 512)))],
        history_count=1,
        context_window=128_000,
        reply_tokens=1000,
    )

    assert with_image.omitted == 0
    assert with_image.messages[-1]["content"][1]["type"] == "image_url"
    # 765 for the 1024 x 1024 image; the earlier one: 255 for its image, its text, overhead.
    assert with_image.prompt_tokens - plain.prompt_tokens >= 765 + 255
    assert with_image.prompt_tokens - plain.prompt_tokens < 765 + 255 + 20


def test_an_earlier_message_with_images_is_dropped_whole():
    prompt = build_prompt(
        system_prompt="",
        latest={"role": "user", "content": "now"},
        history_newest_first=[("assistant", "a short answer"), ("user", image_content("look"))],
        history_count=2,
        context_window=1200,  # 1080 usable, less 300 for the reply: no room for 765 more
        reply_tokens=300,
    )

    assert [m["content"] for m in prompt.messages] == ["a short answer", "now"]
    assert prompt.omitted == 1


# --- the export ----------------------------------------------------------------------------------


def test_the_export_shows_the_images_of_each_message(chat, alice, project_a):
    actor = Actor(user=alice)
    attachment = attachment_create(
        actor=actor, conversation=chat, upload=upload("cat.png", image_bytes())
    )
    message = Message.objects.create(conversation=chat, role="user", content="my cat")
    attachments_link(attachments=[attachment], message=message)

    data = json.loads(json.dumps(exports.as_dict(chat)))
    markdown = exports.as_markdown(chat)

    [exported] = data["messages"][0]["attachments"]
    assert exported["name"] == "cat.png"
    assert exported["url"].endswith(f"/attachments/{attachment.pk}/")
    assert exported["sha256"] == attachment.sha256
    assert "[![cat.png](data:image/png;base64," in markdown
    assert f"/attachments/{attachment.pk}/)" in markdown
