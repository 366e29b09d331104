"""Rows the lifecycle tests build directly: conversations, messages, images and ledger rows at
explicit times (the reply path itself is tested in tests/chat and tests/billing)."""

from __future__ import annotations

import io
from datetime import datetime
from decimal import Decimal
from unittest.mock import patch

import pytest
from django.core.files.base import ContentFile
from PIL import Image

from accounts.models import Organization, Project, User
from billing import services as billing_services
from billing.models import UsageRecord
from billing.pricing import cost_units_sum, units_to_cost
from billing.services import CallContext
from chat.models import Attachment, Conversation, Message
from tests.chat.conftest import make_conversation  # noqa: F401 - shared with the chat tests


@pytest.fixture
def media(settings, tmp_path):
    """Uploaded files go to a folder of this test's own."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def conversation(
    owner: User | None,
    project: Project,
    *,
    title: str = "",
    sharing: str = Conversation.Sharing.PRIVATE,
    last_message_at: datetime | None = None,
) -> Conversation:
    made = Conversation.objects.create(
        project=project, owner=owner, title=title, model="fake-gpt", sharing=sharing
    )
    if last_message_at is not None:
        Conversation.objects.filter(pk=made.pk).update(last_message_at=last_message_at)
        made.refresh_from_db()
    return made


def message(
    conversation: Conversation,
    content: str,
    *,
    author: User | None,
    role: str = Message.Role.USER,
    state: str = Message.State.COMPLETE,
    parent: Message | None = None,
) -> Message:
    return Message.objects.create(
        conversation=conversation,
        parent=parent,
        role=role,
        content=content,
        author=author,
        state=state,
        model="fake-gpt" if role == Message.Role.ASSISTANT else "",
    )


def png(width: int = 4, height: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def image(
    message: Message, *, name: str = "photo.png", uploaded_by: User | None = None
) -> Attachment:
    data = png()
    conversation = message.conversation
    attachment = Attachment(
        project=conversation.project,
        conversation=conversation,
        message=message,
        uploaded_by=uploaded_by,
        name=name,
        content_type="image/png",
        width=4,
        height=4,
        size=len(data),
        sha256="0" * 64,
    )
    attachment.file.save(name, ContentFile(data), save=False)
    attachment.save()
    return attachment


def spend(
    project: Project,
    *,
    user: User | None,
    conversation: Conversation | None = None,
    reply: Message | None = None,
    prompt: int = 100,
    completion: int = 50,
    when: datetime | None = None,
) -> UsageRecord:
    """One call, reserved and settled as every upstream call is: a ledger row and its rollup."""
    context = CallContext(
        organization_id=project.organization_id,
        project_id=project.pk,
        user_id=user.pk if user else None,
        model="fake-gpt",
        conversation_id=conversation.pk if conversation else None,
    )
    if when is None:
        reservation = billing_services.quota_reserve(
            context=context, prompt_tokens=prompt, max_tokens=completion
        )
        return billing_services.quota_settle(
            reservation=reservation,
            status=UsageRecord.Status.OK,
            prompt_tokens=prompt,
            completion_tokens=completion,
            message_id=reply.pk if reply else None,
        )
    with patch("django.utils.timezone.now", return_value=when):
        return spend(
            project,
            user=user,
            conversation=conversation,
            reply=reply,
            prompt=prompt,
            completion=completion,
        )


def ledger_total(organization: Organization) -> tuple[int, Decimal]:
    """The organization's ledger: rows and their summed cost."""
    rows = UsageRecord.objects.filter(organization=organization)
    return rows.count(), units_to_cost(rows.aggregate(units=cost_units_sum())["units"])
