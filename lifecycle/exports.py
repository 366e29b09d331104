"""Everything of a person's, as a zip of JSON files they download (``account_export``).

The zip is written to a file (a temporary one, by the view) entry by entry, each JSON array
written item by item from database iterators: a big account is never held in memory whole.
Money is a string (``"0.001250000000"``: the ledger's exact figure), times ISO 8601 in UTC.

What it holds (``export.json`` lists it again, for whoever opens the zip):

- ``profile.json``: the account (never the password's hash, nor two-factor secrets or codes).
- ``memberships.json``: their organizations and roles.
- ``api_keys.json``: the keys they created (name, project, prefix…last four; never a secret).
- ``conversations/<id>.json``: each conversation they own (private chats and rooms they made)
  in organizations they belong to, with every message of every branch, its tool calls and its
  images' details. In their rooms other people's messages are there too (the room is theirs;
  its page shows them to them) but whose they are is not: only ``by_you``.
- ``room_messages.json``: what they wrote (or called a persona for) in rooms others made.
- ``usage.json``: the ledger rows of their own calls: model, tokens, cost, time.
- ``attachments/<conversation>/<id>-<name>``: the images of their conversations, as uploaded,
  until ``LIFECYCLE_EXPORT_IMAGE_BYTES`` (100 MB unless set) is reached; images past it are
  described in their message with ``"file": null`` and ``"omitted": "size"``.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import ApiKey, Membership, Organization, User
from accounts.two_factor import has_two_factor
from billing.models import UsageRecord
from chat.models import Attachment, Conversation, Message

FORMAT_VERSION = 1
CHUNK = 500


def image_budget() -> int:
    return int(settings.LIFECYCLE_EXPORT_IMAGE_BYTES)


def _json(value: Any) -> str:
    return json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


class _JsonWriter:
    """A JSON document written piece by piece into one entry of the zip."""

    def __init__(self, archive: zipfile.ZipFile, name: str) -> None:
        # force_zip64: the size is not known beforehand, and may pass 2 GiB.
        self._raw = archive.open(name, "w", force_zip64=True)

    def write(self, text: str) -> None:
        self._raw.write(text.encode("utf-8"))

    def array(self, items: Iterable[Any]) -> int:
        """``items`` as a JSON array, one per line; how many."""
        count = 0
        for item in items:
            self.write(("[\n" if count == 0 else ",\n") + _json(item))
            count += 1
        self.write("\n]" if count else "[]")
        return count

    def close(self) -> None:
        self._raw.close()


@dataclass
class _Images:
    """The images to copy into the zip, and what is left of the size allowed for them."""

    left: int
    included: int = 0
    omitted: int = 0
    pending: list[tuple[str, str]] = field(default_factory=list)  # (storage name, zip name)

    def take(self, attachment: Attachment) -> str | None:
        """Where the image goes in the zip, or None if it does not fit any more."""
        if attachment.size > self.left or not attachment.file.name:
            self.omitted += 1
            return None
        self.left -= attachment.size
        self.included += 1
        safe = re.sub(r"[^\w.\-]+", "_", attachment.name).strip("._") or "image"
        zip_name = f"attachments/{attachment.conversation_id}/{attachment.pk}-{safe[:80]}"
        self.pending.append((attachment.file.name, zip_name))
        return zip_name


# --- the pieces ---------------------------------------------------------------------------------


def _organizations(user: User) -> QuerySet[Organization]:
    return Organization.objects.for_user(user)


def profile(user: User) -> dict[str, Any]:
    return {
        "id": user.pk,
        "email": user.email,
        "name": user.name,
        "language": user.language or None,
        "date_joined": _iso(user.date_joined),
        "last_login": _iso(user.last_login),
        "email_verified_at": _iso(user.email_verified_at),
        "two_factor_enabled": has_two_factor(user),
    }


def memberships(user: User) -> Iterator[dict[str, Any]]:
    for m in Membership.objects.filter(user=user).select_related("organization").order_by("pk"):
        yield {
            "organization": {
                "id": m.organization_id,
                "name": m.organization.name,
                "slug": m.organization.slug,
                "personal": m.organization.is_personal,
            },
            "role": m.role,
            "joined_at": _iso(m.created_at),
        }


def api_keys(user: User) -> Iterator[dict[str, Any]]:
    keys = (
        ApiKey.objects.filter(created_by=user, project__organization__in=_organizations(user))
        .select_related("project")
        .order_by("pk")
    )
    for key in keys.iterator(chunk_size=CHUNK):
        yield {
            "id": key.pk,
            "name": key.name,
            "project": {"id": key.project_id, "name": key.project.name},
            "key": key.display,  # prefix and last four: never the secret
            "scopes": key.scope_list(),
            "created_at": _iso(key.created_at),
            "expires_at": _iso(key.expires_at),
            "revoked_at": _iso(key.revoked_at),
            "last_used_at": _iso(key.last_used_at),
        }


def own_conversations(user: User) -> QuerySet[Conversation]:
    """The conversations they own, through the scoped path: in organizations they belong to."""
    return (
        Conversation.objects.for_user(user)
        .filter(owner=user)
        .select_related("project__organization", "folder", "persona")
        .order_by("pk")
    )


def _conversation(conversation: Conversation) -> dict[str, Any]:
    project = conversation.project
    return {
        "id": conversation.pk,
        "title": conversation.title,
        "organization": {"id": project.organization_id, "name": project.organization.name},
        "project": {"id": project.pk, "name": project.name},
        "sharing": conversation.sharing,
        "model": conversation.model,
        "system_prompt": conversation.system_prompt,
        "temperature": conversation.temperature,
        "top_p": conversation.top_p,
        "max_tokens": conversation.max_tokens,
        "presence_penalty": conversation.presence_penalty,
        "frequency_penalty": conversation.frequency_penalty,
        "stop": conversation.stop,
        "seed": conversation.seed,
        "json_mode": conversation.json_mode,
        "json_schema": conversation.json_schema,
        "tools": conversation.tools,
        "persona": conversation.persona.tag if conversation.persona else None,
        "folder": conversation.folder.name if conversation.folder else None,
        "archived": conversation.archived,
        "pinned": conversation.pinned,
        "summary": conversation.summary,
        "created_at": _iso(conversation.created_at),
        "last_message_at": _iso(conversation.last_message_at),
    }


def _attachment(attachment: Attachment, images: _Images) -> dict[str, Any]:
    zip_name = images.take(attachment)
    return {
        "id": attachment.pk,
        "name": attachment.name,
        "content_type": attachment.content_type,
        "width": attachment.width,
        "height": attachment.height,
        "size": attachment.size,
        "sha256": attachment.sha256,
        "created_at": _iso(attachment.created_at),
        "file": zip_name,
        **({} if zip_name else {"omitted": "size"}),
    }


def _message(message: Message, *, user: User, images: _Images) -> dict[str, Any]:
    return {
        "id": message.pk,
        "parent_id": message.parent_id,
        "role": message.role,
        "by_you": message.author_id == user.pk,
        "persona": message.persona.tag if message.persona else None,
        "content": message.content,
        "state": message.state,
        "model": message.model or None,
        "selected": message.selected,
        "on_current_branch": message.on_path,
        "flagged": message.flagged,
        "error_code": message.error_code or None,
        "error_message": message.error_message or None,
        "finish_reason": message.finish_reason or None,
        "prompt_tokens": message.prompt_tokens,
        "cached_tokens": message.cached_tokens,
        "completion_tokens": message.completion_tokens,
        "usage_estimated": message.usage_estimated,
        "created_at": _iso(message.created_at),
        "updated_at": _iso(message.updated_at),
        "tool_calls": [
            {
                "round": call.round,
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
                "result": call.result,
                "is_error": call.is_error,
                "duration_ms": call.duration_ms,
                "created_at": _iso(call.created_at),
            }
            for call in message.tool_calls.all()
        ],
        "attachments": [_attachment(a, images) for a in message.attachments.all()],
    }


def _messages(messages: QuerySet[Message], *, user: User, images: _Images) -> Iterator[Any]:
    rows = (
        messages.select_related("persona")
        .prefetch_related("tool_calls", "attachments")
        .order_by("pk")
        .iterator(chunk_size=CHUNK)
    )
    for message in rows:
        yield _message(message, user=user, images=images)


def room_messages(user: User) -> QuerySet[Message]:
    """What they wrote, or called a persona for, in rooms others made that they still reach."""
    rooms = Conversation.objects.for_user(user).rooms().exclude(owner=user)
    return Message.objects.filter(author=user, conversation__in=rooms.values("pk"))


def _room_message(message: Message, *, user: User, images: _Images) -> dict[str, Any]:
    conversation = message.conversation
    return {
        "room": {"id": conversation.pk, "title": conversation.title},
        **_message(message, user=user, images=images),
    }


def usage_rows(user: User) -> Iterator[dict[str, Any]]:
    """The ledger rows of their own calls, in organizations they belong to, oldest first."""
    rows = (
        UsageRecord.objects.filter(user=user, organization__in=_organizations(user))
        .order_by("created_at", "pk")
        .values(
            "request_id",
            "created_at",
            "organization_id",
            "organization__name",
            "project_id",
            "project__name",
            "conversation_id",
            "source",
            "model",
            "status",
            "prompt_tokens",
            "cached_tokens",
            "completion_tokens",
            "cost",
            "estimated",
            "latency_ms",
        )
    )
    for row in rows.iterator(chunk_size=2000):
        yield {
            "request_id": str(row["request_id"]),
            "created_at": _iso(row["created_at"]),
            "organization": {"id": row["organization_id"], "name": row["organization__name"]},
            "project": (
                {"id": row["project_id"], "name": row["project__name"]}
                if row["project_id"]
                else None
            ),
            "conversation_id": row["conversation_id"],
            "source": row["source"],
            "model": row["model"],
            "status": row["status"],
            "prompt_tokens": row["prompt_tokens"],
            "cached_tokens": row["cached_tokens"],
            "completion_tokens": row["completion_tokens"],
            "cost_usd": str(row["cost"]),  # exact, as the ledger keeps it: never a float
            "estimated": row["estimated"],
            "latency_ms": row["latency_ms"],
        }


# --- the zip -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSummary:
    conversations: int
    room_messages: int
    usage_rows: int
    images_included: int
    images_omitted: int


def _copy_images(archive: zipfile.ZipFile, images: _Images) -> None:
    for storage_name, zip_name in images.pending:
        # Images are compressed already: stored as they are.
        entry = zipfile.ZipInfo(zip_name, date_time=timezone.now().timetuple()[:6])
        try:
            with (
                default_storage.open(storage_name, "rb") as source,
                archive.open(entry, "w") as target,
            ):
                shutil.copyfileobj(source, target, 1024 * 1024)
        except OSError:  # the file is gone from storage: its details are in the message
            pass
    images.pending.clear()


def _write(archive: zipfile.ZipFile, name: str, value: Any) -> None:
    archive.writestr(name, _json(value))


def _write_array(archive: zipfile.ZipFile, name: str, items: Iterable[Any]) -> int:
    writer = _JsonWriter(archive, name)
    try:
        return writer.array(items)
    finally:
        writer.close()


def export_user_data(*, user: User, out: IO[bytes], now: datetime | None = None) -> ExportSummary:
    """Write the zip of everything of ``user``'s into ``out`` (a file open for writing)."""
    now = now or timezone.now()
    images = _Images(left=image_budget())
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        _write(archive, "profile.json", profile(user))
        _write_array(archive, "memberships.json", memberships(user))
        _write_array(archive, "api_keys.json", api_keys(user))

        conversations = 0
        for conversation in own_conversations(user).iterator(chunk_size=CHUNK):
            writer = _JsonWriter(archive, f"conversations/{conversation.pk}.json")
            try:
                writer.write('{"conversation": ' + _json(_conversation(conversation)))
                writer.write(', "messages": ')
                writer.array(_messages(conversation.messages.all(), user=user, images=images))
                writer.write("}")
            finally:
                writer.close()
            _copy_images(archive, images)
            conversations += 1

        in_rooms = (
            room_messages(user)
            .select_related("conversation", "persona")
            .prefetch_related("tool_calls", "attachments")
            .order_by("pk")
        )
        room_count = _write_array(
            archive,
            "room_messages.json",
            (
                _room_message(m, user=user, images=images)
                for m in in_rooms.iterator(chunk_size=CHUNK)
            ),
        )
        _copy_images(archive, images)
        usage = _write_array(archive, "usage.json", usage_rows(user))

        summary = ExportSummary(
            conversations=conversations,
            room_messages=room_count,
            usage_rows=usage,
            images_included=images.included,
            images_omitted=images.omitted,
        )
        _write(
            archive,
            "export.json",
            {
                "format": FORMAT_VERSION,
                "exported_at": _iso(now),
                "user_id": user.pk,
                "counts": {
                    "conversations": summary.conversations,
                    "room_messages": summary.room_messages,
                    "usage_rows": summary.usage_rows,
                    "images_included": summary.images_included,
                    "images_omitted": summary.images_omitted,
                },
                "image_bytes_allowed": image_budget(),
                "files": {
                    "profile.json": "your account",
                    "memberships.json": "your organizations and roles",
                    "api_keys.json": "API keys you created (never their secrets)",
                    "conversations/<id>.json": "each conversation you own, every message of "
                    "every branch; by_you marks yours in your rooms",
                    "room_messages.json": "your messages in rooms other people made",
                    "usage.json": "the ledger rows of your calls; cost_usd is exact",
                    "attachments/<conversation>/<id>-<name>": "your conversations' images, "
                    "up to image_bytes_allowed; the others say omitted",
                },
            },
        )
    return summary


def export_filename(now: datetime) -> str:
    return f"llm-gateway-export-{now:%Y%m%d}.zip"
