"""Build the prompt: the system prompt, the running summary of the turns folded into it (see
``chat.summaries``), and as many of the recent turns as fit the context window.

A message's content is its text, or a list of OpenAI content parts (``text`` and ``image_url``)
when images go with it: its text parts are counted as text, each image by the provider's image
token rule (``providers.llm.images``). An earlier message is kept or left out whole, images and
all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from providers.llm.images import content_image_tokens
from providers.llm.tokens import count_message_tokens, count_text_tokens

# tiktoken's cl100k only estimates other tokenizers (the gpt-4o family, local models): keep a
# margin so an estimate that runs short never overflows the real window.
SAFETY_MARGIN = 0.9
PER_MESSAGE_OVERHEAD = 4
SUMMARY_HEADING = "Summary of the earlier conversation:"


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, Any]]
    omitted: int  # older messages left out
    prompt_tokens: int  # our estimate
    summarized: bool = False  # the running summary was sent (in place of the turns it folds)


# A message's content: its text, or OpenAI content parts (text and image_url).
Content = str | list[dict[str, Any]]


class PromptTooLong(Exception):
    def __init__(self, needed: int, available: int) -> None:
        super().__init__(f"needs {needed} tokens, {available} available")
        self.needed = needed
        self.available = available


def content_tokens(content: Content) -> int:
    """The tokens of a message's content: its text, and its images by the provider's rule."""
    if isinstance(content, str):
        return count_text_tokens(content)
    text = "".join(
        part.get("text", "")
        for part in content
        if isinstance(part, dict) and part.get("type") == "text"
    )
    return count_text_tokens(text) + content_image_tokens(content)


def _message_tokens(messages: list[dict[str, Any]]) -> int:
    return count_message_tokens(messages) + sum(
        content_image_tokens(m.get("content")) for m in messages
    )


def build_prompt(
    *,
    system_prompt: str,
    latest: dict[str, Any],
    history_newest_first: Iterable[tuple[str, Content]],
    history_count: int,
    context_window: int,
    reply_tokens: int,
    summary: str = "",
) -> Prompt:
    """``latest`` is always sent; older (role, content) pairs are added newest first while they
    fit, and the rest are counted as omitted. A content is text or content parts
    (``Content``), in ``latest`` as in the history. ``summary``, the running summary of the
    turns before ``history_newest_first``, goes right after the system prompt, in their place;
    it is left out only when the message would not fit with it."""
    budget = int(context_window * SAFETY_MARGIN) - reply_tokens
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    used = _message_tokens([*head, latest])
    if used > budget:
        raise PromptTooLong(used, max(budget, 0))
    summarized = False
    if summary:
        note = {"role": "system", "content": f"{SUMMARY_HEADING}\n{summary}"}
        with_summary = _message_tokens([*head, note, latest])
        if with_summary <= budget:
            head, used, summarized = [*head, note], with_summary, True

    kept: list[dict[str, Any]] = []
    for role, content in history_newest_first:
        cost = content_tokens(content) + PER_MESSAGE_OVERHEAD
        if used + cost > budget:
            break
        used += cost
        kept.append({"role": role, "content": content})
    kept.reverse()
    return Prompt(
        messages=[*head, *kept, latest],
        omitted=history_count - len(kept),
        prompt_tokens=used,
        summarized=summarized,
    )
