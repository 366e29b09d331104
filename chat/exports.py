"""A conversation as Markdown or JSON, for download: its current branch, as the page shows it."""

from typing import Any

from .models import Conversation

ROLE_LABELS = {"user": "You", "assistant": "Assistant", "system": "System", "tool": "Tool"}


def as_dict(conversation: Conversation) -> dict[str, Any]:
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
                "state": m.state,
                "model": m.model or None,
                "prompt_tokens": m.prompt_tokens,
                "completion_tokens": m.completion_tokens,
                "finish_reason": m.finish_reason or None,
                "created_at": m.created_at.isoformat(),
            }
            for m in conversation.messages.on_branch().order_by("id").iterator(chunk_size=500)
        ],
    }


def as_markdown(conversation: Conversation) -> str:
    lines = [f"# {conversation.display_title}", "", f"Model: {conversation.model}", ""]
    if conversation.system_prompt:
        lines += ["## System", "", conversation.system_prompt, ""]
    for m in conversation.messages.on_branch().order_by("id").iterator(chunk_size=500):
        label = ROLE_LABELS.get(m.role, m.role)
        note = "" if m.state == "complete" else f" ({m.state})"
        lines += [f"## {label}{note}", "", m.content, ""]
    return "\n".join(lines)
