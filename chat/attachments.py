"""Images attached to messages: upload, checks, storage, the data URLs models are sent, cleanup.

An image is uploaded first (``attachment_create``: the composer uploads each as it is picked,
the REST API takes a multipart upload), unsent, then claimed by the message it goes with
(``attachments_claim`` and ``attachments_link``, inside ``chat.services.reply_start``'s
transaction). Until then only its uploader sees it; once sent, whoever may read the
conversation may read it.

What is stored is what was checked: the bytes must be an image Pillow opens and decodes whole
(not corrupt, not truncated), of a format we send models (PNG, JPEG, WebP, GIF — known from the
bytes, never from the name), no bigger than ``CHAT_IMAGE_MAX_BYTES`` and
``CHAT_IMAGE_MAX_PIXELS`` (a small file that claims a huge size is a decompression bomb), and
named and declared as what it is (a PDF named ``.png`` is refused as mislabelled, not quietly
accepted as whatever its bytes are). Files live in Django's default storage under their tenant
(``chat.models.attachment_path``: ``attachments/o<org>/p<project>/<uuid>/``) with a thumbnail
beside them, and go when their row goes (``attachment_files_delete``, on commit).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import mimetypes
import posixpath
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Q
from django.db.models.signals import post_delete
from django.http import Http404
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from PIL import Image, ImageOps, UnidentifiedImageError

from accounts.models import Project
from core.config_cache import cached
from core.errors import ServiceError
from providers import selectors as provider_selectors

from .actors import Actor
from .models import Attachment, AttachmentQuerySet, Conversation, Message

logger = logging.getLogger(__name__)

# Pillow's format -> the content type we store and send, and the file extension we store it as.
# MPO is the JPEG of cameras that add a second picture (a depth map): a JPEG to everyone else.
FORMATS: dict[str, tuple[str, str]] = {
    "PNG": ("image/png", ".png"),
    "JPEG": ("image/jpeg", ".jpg"),
    "MPO": ("image/jpeg", ".jpg"),
    "WEBP": ("image/webp", ".webp"),
    "GIF": ("image/gif", ".gif"),
}
ALLOWED_TYPES = frozenset(content_type for content_type, _ext in FORMATS.values())
ACCEPT = ",".join(sorted(ALLOWED_TYPES))  # the file picker's accept attribute

# What a file's extension says it is (the common ones; others are asked of ``mimetypes``).
EXTENSION_TYPES = {
    ".png": "image/png",
    ".apng": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".jpe": "image/jpeg",
    ".jfif": "image/jpeg",
    ".pjpeg": "image/jpeg",
    ".pjp": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".pdf": "application/pdf",
    ".svg": "image/svg+xml",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".avif": "image/avif",
}
# Declared content types that mean the same, and those that say nothing.
TYPE_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
UNSPECIFIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
# Files Pillow does not open, known by their first bytes, so a refusal can say what they are.
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"<svg", "image/svg+xml"),
    (b"<?xml", "image/svg+xml"),
)

THUMBNAIL_SIZE = 256
ORIGINAL_STEM = "original"
THUMBNAIL_STEM = "thumbnail"
NAME_MAX_CHARS = 200


# --- checks ------------------------------------------------------------------------------------


def _clean_name(raw: object) -> str:
    """The name shown for an upload: its last path part, without control characters, at most
    ``NAME_MAX_CHARS`` long (its extension kept)."""
    name = str(raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    if len(name) > NAME_MAX_CHARS:
        stem, dot, suffix = name.rpartition(".")
        if dot and stem and len(suffix) <= 10:
            name = f"{stem[: NAME_MAX_CHARS - len(suffix) - 1]}.{suffix}"
        else:
            name = name[:NAME_MAX_CHARS]
    return name


def _named_type(name: str) -> str | None:
    """The type a file's extension says it is, when it says one."""
    extension = posixpath.splitext(name.lower())[1]
    if not extension:
        return None
    return EXTENSION_TYPES.get(extension) or mimetypes.guess_type(f"x{extension}")[0]


def _declared_type(content_type: object) -> str | None:
    declared = str(content_type or "").split(";", 1)[0].strip().lower()
    declared = TYPE_ALIASES.get(declared, declared)
    return None if declared in UNSPECIFIC_TYPES else declared


def _sniffed_type(head: bytes) -> str | None:
    stripped = head.lstrip()
    for signature, content_type in SIGNATURES:
        if stripped.startswith(signature):
            return content_type
    return None


def _format_type(image_format: str | None) -> str | None:
    if image_format is None:
        return None
    if image_format in FORMATS:
        return FORMATS[image_format][0]
    return Image.MIME.get(image_format) or f"image/{image_format.lower()}"


def _kind(content_type: str) -> str:
    """A type as a person reads it: "a PDF document", "a PNG image"."""
    if content_type == "application/pdf":
        return _("a PDF document")
    if content_type == "application/zip":
        return _("a ZIP archive")
    if content_type == "image/svg+xml":
        return _("an SVG drawing")
    if content_type.startswith("image/"):
        return _("a %(format)s image") % {"format": content_type[6:].upper()}
    return content_type


def _refuse(message: str, code: str) -> ServiceError:
    return ServiceError(message, code=code, param="file")


def _own_unsent(actor: Actor, conversation: Conversation) -> AttachmentQuerySet:
    """The actor's uploads in this conversation not sent yet: a person's own, or (for a key)
    those of the project's keys."""
    unsent = Attachment.objects.for_project(conversation.project).filter(
        conversation=conversation, message__isnull=True
    )
    if actor.user is not None:
        return unsent.filter(uploaded_by=actor.user)
    return unsent.filter(uploaded_by__isnull=True)


def _open_checked(data: bytes, *, name: str) -> tuple[str, int, int]:
    """(Pillow's format, width, height), from the header alone; ``("", 0, 0)`` for what Pillow
    cannot open. A header claiming absurdly many pixels is refused here (Pillow's decompression
    bomb check: an error, or a warning where warnings are errors)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format, (width, height) = image.format, image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _refuse(
            _("“%(name)s” has more pixels than an image may have (%(limit)s).")
            % {"name": name, "limit": f"{settings.CHAT_IMAGE_MAX_PIXELS:,}"},
            "image_too_large",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "", 0, 0
    return image_format or "", int(width), int(height)


def _thumbnail(data: bytes, image_format: str) -> tuple[bytes, str]:
    """A thumbnail (at most ``THUMBNAIL_SIZE`` pixels a side) and its extension: a JPEG of a
    JPEG, a PNG (transparency kept) of the others. Decoding it is what finds a truncated file:
    raises OSError (or SyntaxError, ValueError) for one that is."""
    with Image.open(io.BytesIO(data)) as image:
        image.verify()  # checksums and structure, before anything is decoded
    with Image.open(io.BytesIO(data)) as image:
        # JPEG decodes at a fraction of its size when only a thumbnail is wanted.
        image.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        image.load()
        small = ImageOps.exif_transpose(image) or image
        small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        out = io.BytesIO()
        if FORMATS[image_format][0] == "image/jpeg":
            small.convert("RGB").save(out, "JPEG", quality=82)
            return out.getvalue(), ".jpg"
        transparent = "A" in small.getbands() or "transparency" in small.info
        small.convert("RGBA" if transparent else "RGB").save(out, "PNG", optimize=True)
        return out.getvalue(), ".png"


# --- writes ------------------------------------------------------------------------------------


def attachment_create(
    *, actor: Actor, conversation: Conversation, upload: UploadedFile | None
) -> Attachment:
    """Check and store an image for the actor's next message in ``conversation`` (which the
    caller resolved through ``actor.conversations()``: every conversation an actor reaches is
    one it may post in)."""
    if upload is None:
        raise _refuse(_("Choose an image to attach."), "image_missing")
    name = _clean_name(upload.name)
    shown = name or _("The image")
    limit = settings.CHAT_IMAGE_MAX_BYTES
    # Before reading it: a huge upload is refused by its size alone.
    if upload.size is not None and upload.size > limit:
        raise _refuse(
            _("“%(name)s” is %(size)s; an image may be at most %(limit)s.")
            % {"name": shown, "size": filesizeformat(upload.size), "limit": filesizeformat(limit)},
            "image_too_large",
        )
    most = settings.CHAT_IMAGE_MAX_COUNT
    if _own_unsent(actor, conversation).count() >= most:
        raise _refuse(
            ngettext(
                "A message takes at most %(count)s image: remove it before adding another.",
                "A message takes at most %(count)s images: remove one before adding another.",
                most,
            )
            % {"count": most},
            "too_many_images",
        )
    upload.seek(0)
    data = upload.read(limit + 1)
    if len(data) > limit:  # a size that lied
        raise _refuse(
            _("“%(name)s” is larger than %(limit)s.")
            % {"name": shown, "limit": filesizeformat(limit)},
            "image_too_large",
        )

    image_format, width, height = _open_checked(data, name=shown)
    real = _format_type(image_format) if image_format else _sniffed_type(data[:64])
    if real is not None:
        for claimed in (_named_type(name), _declared_type(upload.content_type)):
            if claimed is not None and claimed != real:
                raise _refuse(
                    _(
                        "“%(name)s” says it is %(claimed)s, but its content is %(real)s. Attach "
                        "the file under its real type, or export it as PNG or JPEG."
                    )
                    % {"name": shown, "claimed": _kind(claimed), "real": _kind(real)},
                    "image_mislabelled",
                )
    if not image_format:
        if real is not None:  # a PDF, a ZIP…: not an image at all
            raise _refuse(
                _("“%(name)s” is %(kind)s; attach a PNG, JPEG, WebP or GIF image.")
                % {"name": shown, "kind": _kind(real)},
                "image_type_not_allowed",
            )
        raise _refuse(
            _("“%(name)s” cannot be read as an image: it is damaged or not an image.")
            % {"name": shown},
            "image_invalid",
        )
    if image_format not in FORMATS:
        raise _refuse(
            _("“%(name)s” is %(kind)s; attach a PNG, JPEG, WebP or GIF image.")
            % {"name": shown, "kind": _kind(real or image_format)},
            "image_type_not_allowed",
        )
    if width * height > settings.CHAT_IMAGE_MAX_PIXELS:
        raise _refuse(
            _(
                "“%(name)s” is %(width)s x %(height)s pixels; an image may have at most "
                "%(limit)s pixels."
            )
            % {
                "name": shown,
                "width": width,
                "height": height,
                "limit": f"{settings.CHAT_IMAGE_MAX_PIXELS:,}",
            },
            "image_too_large",
        )
    try:
        thumbnail, thumbnail_extension = _thumbnail(data, image_format)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning):
        raise _refuse(
            _("“%(name)s” cannot be read as an image: it is damaged or incomplete.")
            % {"name": shown},
            "image_invalid",
        ) from None

    content_type, extension = FORMATS[image_format]
    attachment = Attachment(
        project=conversation.project,
        conversation=conversation,
        uploaded_by=actor.user,
        api_key=actor.api_key,
        name=name or f"image{extension}",
        content_type=content_type,
        width=width,
        height=height,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    attachment.file.save(f"{ORIGINAL_STEM}{extension}", ContentFile(data), save=False)
    try:
        default_storage.save(
            _thumbnail_name(attachment, thumbnail_extension), ContentFile(thumbnail)
        )
        attachment.save()
    except BaseException:
        # Nothing stored without its row: the files go if the row cannot be written.
        _delete_files(attachment.file.name)
        raise
    return attachment


def attachments_claim(*, actor: Actor, conversation: Conversation, ids: object) -> list[Attachment]:
    """The actor's unsent uploads of ``conversation`` named by ``ids`` (a list of ints, at most
    ``CHAT_IMAGE_MAX_COUNT``), in that order. ``None`` or ``[]``: none. Call it inside the
    transaction that creates the message, then ``attachments_link``."""
    if ids is None:
        return []
    refused = ServiceError(
        _("The images to send are not valid: upload them again."),
        code="invalid_attachments",
        param="attachments",
    )
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise refused
    if len(ids) > settings.CHAT_IMAGE_MAX_COUNT:
        most = settings.CHAT_IMAGE_MAX_COUNT
        raise ServiceError(
            ngettext(
                "A message takes at most %(count)s image.",
                "A message takes at most %(count)s images.",
                most,
            )
            % {"count": most},
            code="invalid_attachments",
            param="attachments",
        )
    if len(set(ids)) != len(ids):
        raise refused
    if not ids:
        return []
    found = {a.pk: a for a in _own_unsent(actor, conversation).filter(pk__in=ids)}
    if len(found) != len(ids):
        raise refused
    return [found[i] for i in ids]


def attachments_link(*, attachments: list[Attachment], message: Message) -> None:
    """Attach claimed uploads to the message they were sent with."""
    if not attachments:
        return
    Attachment.objects.filter(pk__in=[a.pk for a in attachments]).update(message=message)
    for attachment in attachments:
        attachment.message = message


def attachment_delete(*, actor: Actor, attachment: Attachment) -> None:
    """Remove one of the actor's uploads not sent yet (its files go too). One sent with a
    message stays with it: it goes with the message or the conversation."""
    if attachment.message_id is not None:
        raise ServiceError(
            _("This image was sent with a message; it stays with it."),
            code="attachment_sent",
        )
    if not _own_unsent(actor, attachment.conversation).filter(pk=attachment.pk).exists():
        raise ServiceError(code="not_found")  # someone else's draft: as if it were not there
    attachment.delete()


def attachments_purge_unsent(*, older_than: timedelta) -> int:
    """Delete uploads never sent with a message, older than ``older_than`` (files too); how
    many went."""
    stale = Attachment.objects.filter(
        message__isnull=True, created_at__lt=timezone.now() - older_than
    )
    _total, by_model = stale.delete()
    return by_model.get(Attachment._meta.label, 0)


# --- files -------------------------------------------------------------------------------------


def _thumbnail_name(attachment: Attachment, extension: str | None = None) -> str:
    """The thumbnail beside the original, in the attachment's own folder."""
    if extension is None:
        extension = ".jpg" if attachment.content_type == "image/jpeg" else ".png"
    folder = posixpath.dirname(attachment.file.name or "")
    return posixpath.join(folder, f"{THUMBNAIL_STEM}{extension}")


def thumbnail_content_type(attachment: Attachment) -> str:
    return "image/jpeg" if attachment.content_type == "image/jpeg" else "image/png"


def _delete_files(original: str | None) -> None:
    if not original:
        return
    folder = posixpath.dirname(original)
    names = [original, *(posixpath.join(folder, f"{THUMBNAIL_STEM}{e}") for e in (".jpg", ".png"))]
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:  # already gone, or the storage is down: logged, never fatal
            logger.warning("Could not delete the attachment file %s", name, exc_info=True)


def attachment_files_delete(sender: type, instance: Attachment, **_: Any) -> None:
    """``post_delete`` of Attachment: its files go once the delete is committed (a rolled back
    delete keeps them)."""
    name = instance.file.name
    transaction.on_commit(lambda: _delete_files(name))


# Connected here, so importing the module is enough; chat.apps connects it too (same uid) for
# processes that never import it (Celery purging unsent uploads).
post_delete.connect(
    attachment_files_delete, sender=Attachment, dispatch_uid="chat.attachment_files"
)


def attachment_read(attachment: Attachment) -> bytes:
    with attachment.file.open("rb") as handle:
        data: bytes = handle.read()
    return data


def attachment_thumbnail(attachment: Attachment) -> bytes:
    """The stored thumbnail; made again (and stored) if it went missing."""
    name = _thumbnail_name(attachment)
    if default_storage.exists(name):
        with default_storage.open(name, "rb") as handle:
            data: bytes = handle.read()
        return data
    thumbnail, extension = _thumbnail(attachment_read(attachment), _pillow_format(attachment))
    default_storage.save(_thumbnail_name(attachment, extension), ContentFile(thumbnail))
    return thumbnail


def _pillow_format(attachment: Attachment) -> str:
    return next(f for f, (t, _e) in FORMATS.items() if t == attachment.content_type)


def data_url(attachment: Attachment) -> str:
    encoded = base64.b64encode(attachment_read(attachment)).decode("ascii")
    return f"data:{attachment.content_type};base64,{encoded}"


def image_parts(attachments: list[Attachment]) -> list[dict[str, Any]]:
    """The images as OpenAI content parts, each a data URL of the stored bytes."""
    return [
        {"type": "image_url", "image_url": {"url": data_url(a), "detail": "auto"}}
        for a in attachments
    ]


def message_content(text: str, attachments: list[Attachment]) -> str | list[dict[str, Any]]:
    """A message's content for the model: its text alone, or its text and its images as
    content parts (what ``chat.prompt.build_prompt`` takes)."""
    if not attachments:
        return text
    return [{"type": "text", "text": text}, *image_parts(attachments)]


# --- reads -------------------------------------------------------------------------------------


def attachments_by_message(message_ids: Iterable[int]) -> dict[int, list[Attachment]]:
    """The attachments of these messages (sent ones), by message, in upload order: one query.
    The caller got the messages through the scoped path."""
    by_message: dict[int, list[Attachment]] = defaultdict(list)
    ids = list(message_ids)
    if not ids:
        return {}
    for attachment in (
        Attachment.objects.filter(message_id__in=ids)
        .select_related("project__organization")
        .order_by("id")
    ):
        if attachment.message_id is not None:
            by_message[attachment.message_id].append(attachment)
    return dict(by_message)


def sent_attachments_by_message(conversation: Conversation) -> dict[int, list[Attachment]]:
    """Every image sent in ``conversation``, by message (what the prompt's history needs):
    one query."""
    by_message: dict[int, list[Attachment]] = defaultdict(list)
    for attachment in (
        Attachment.objects.for_project(conversation.project)
        .filter(conversation=conversation, message__isnull=False)
        .select_related("project__organization")
        .order_by("id")
    ):
        if attachment.message_id is not None:
            by_message[attachment.message_id].append(attachment)
    return dict(by_message)


def visible_attachments(*, actor: Actor, conversation: Conversation) -> AttachmentQuerySet:
    """What the actor may read of a conversation it reaches: every sent attachment, and its
    own unsent uploads (someone else's draft stays theirs)."""
    qs = Attachment.objects.for_project(conversation.project).filter(conversation=conversation)
    own = Q(uploaded_by=actor.user) if actor.user is not None else Q(uploaded_by__isnull=True)
    return qs.filter(Q(message__isnull=False) | own).select_related("project__organization")


def get_attachment_or_404(*, actor: Actor, conversation: Conversation, pk: int) -> Attachment:
    attachment = visible_attachments(actor=actor, conversation=conversation).filter(pk=pk).first()
    if attachment is None:
        raise Http404("No such attachment.")
    return attachment


def thumbnail_box(attachment: Attachment) -> tuple[int, int]:
    """The thumbnail's size (as ``Image.thumbnail`` makes it, give or take a pixel)."""
    width, height = attachment.width, attachment.height
    scale = min(1.0, THUMBNAIL_SIZE / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _page_url(name: str, attachment: Attachment) -> str:
    project = attachment.project
    return reverse(
        name,
        args=[project.organization.slug, project.slug, attachment.conversation_id, attachment.pk],
    )


def serialize_attachment(attachment: Attachment) -> dict[str, Any]:
    """An attachment as the page and the socket show it (its URLs are the pages', which check
    the reader's session)."""
    thumbnail_width, thumbnail_height = thumbnail_box(attachment)
    return {
        "id": attachment.pk,
        "name": attachment.name,
        "content_type": attachment.content_type,
        "width": attachment.width,
        "height": attachment.height,
        "size": attachment.size,
        "url": _page_url("attachment_file", attachment),
        "thumbnail_url": _page_url("attachment_thumbnail", attachment),
        "thumbnail_width": thumbnail_width,
        "thumbnail_height": thumbnail_height,
    }


# --- what the model can take -------------------------------------------------------------------


def model_sees_images(*, project: Project, model: str) -> bool:
    """Whether ``model``, as ``project`` resolves it, is marked vision-capable (kept in memory
    with the other model settings: no query per call)."""
    seen = cached(
        ("vision", project.pk, model),
        lambda: _vision_of(project, model),
        keep=lambda value: value is not None,  # a made-up name is not kept
    )
    return bool(seen)


def _vision_of(project: Project, model: str) -> bool | None:
    connection_model = provider_selectors.resolve_model(project, model)
    return None if connection_model is None else connection_model.supports_vision


def vision_refusal(model: str) -> str:
    return _("The model %(model)s cannot read images; pick a vision model.") % {"model": model}


def check_model_sees_images(*, project: Project, model: str) -> None:
    """Refuse images for a model that cannot read them, before anything is sent."""
    if not model_sees_images(project=project, model=model):
        raise ServiceError(vision_refusal(model), code="model_lacks_vision", param="attachments")


def composer_settings(conversation: Conversation, *, model: str | None = None) -> dict[str, Any]:
    """What the composer's form carries as data attributes for static/js/attachments.js."""
    project = conversation.project
    model = model or conversation.model
    vision = model_sees_images(project=project, model=model)
    return {
        "url": reverse(
            "attachment_upload", args=[project.organization.slug, project.slug, conversation.pk]
        ),
        "vision": "true" if vision else "false",
        "vision_reason": "" if vision else vision_refusal(model),
        "max_images": settings.CHAT_IMAGE_MAX_COUNT,
        "max_bytes": settings.CHAT_IMAGE_MAX_BYTES,
        "accept": ACCEPT,
    }
