"""A conversation as Markdown or JSON, for download: its current branch, as the page shows it.

Images sent with a message go with it: in JSON their details and where to download each, in
Markdown their thumbnails, embedded (a downloaded file has no session to fetch them with),
each linking to the full image on the site.
"""

import base64
from typing import Any

from .attachments import (
    attachment_thumbnail,
    attachments_by_message,
    serialize_attachment,
    thumbnail_content_type,
)
from .models import Attachment, Conversation, Message

ROLE_LABELS = {"user": "You", "assistant": "Assistant", "system": "System", "tool": "Tool"}


def _branch(conversation: Conversation) -> tuple[list[Message], dict[int, list[Attachment]]]:
    messages = list(conversation.messages.on_branch().order_by("id").iterator(chunk_size=500))
    return messages, attachments_by_message(m.pk for m in messages)


def _attachment_dict(attachment: Attachment) -> dict[str, Any]:
    data = serialize_attachment(attachment)
    return {
        key: data[key] for key in ("id", "name", "content_type", "width", "height", "size", "url")
    } | {"sha256": attachment.sha256}


def as_dict(conversation: Conversation) -> dict[str, Any]:
    messages, images = _branch(conversation)
    return {
        "id": conversation.pk,
        "title": conversation.display_title,
        "model": conversation.model,
        "system_prompt": conversation.system_prompt,
        "temperature": conversation.temperature,
        "max_tokens": conversation.max_tokens,
        "created_at": conversation.created_at.isoformat(),
        "messages": [
            {
                "id": m.pk,
                "role": m.role,
                "content": m.content,
                "attachments": [_attachment_dict(a) for a in images.get(m.pk, [])],
                "state": m.state,
                "model": m.model or None,
                "prompt_tokens": m.prompt_tokens,
                "completion_tokens": m.completion_tokens,
                "finish_reason": m.finish_reason or None,
                "created_at": m.created_at.isoformat(),
            }
            for m in messages
        ],
    }


def _markdown_image(attachment: Attachment) -> str:
    url = serialize_attachment(attachment)["url"]
    alt = attachment.name.replace("[", "(").replace("]", ")")
    try:
        thumbnail = attachment_thumbnail(attachment)
    except OSError:  # the file is gone from storage: a link is all there is
        return f"[{alt}]({url})"
    encoded = base64.b64encode(thumbnail).decode("ascii")
    return f"[![{alt}](data:{thumbnail_content_type(attachment)};base64,{encoded})]({url})"


def as_markdown(conversation: Conversation) -> str:
    messages, images = _branch(conversation)
    lines = [f"# {conversation.display_title}", "", f"Model: {conversation.model}", ""]
    if conversation.system_prompt:
        lines += ["## System", "", conversation.system_prompt, ""]
    for m in messages:
        label = ROLE_LABELS.get(m.role, m.role)
        note = "" if m.state == "complete" else f" ({m.state})"
        lines += [f"## {label}{note}", "", m.content, ""]
        if m.pk in images:
            lines += [" ".join(_markdown_image(a) for a in images[m.pk]), ""]
    return "\n".join(lines)
