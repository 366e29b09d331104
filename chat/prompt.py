"""Build the prompt: the system prompt plus as many recent turns as fit the context window."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from providers.llm.tokens import count_message_tokens, count_text_tokens

# tiktoken's cl100k only estimates other tokenizers (the gpt-4o family, local models): keep a
# margin so an estimate that runs short never overflows the real window.
SAFETY_MARGIN = 0.9
PER_MESSAGE_OVERHEAD = 4


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, Any]]
    omitted: int  # older messages left out
    prompt_tokens: int  # our estimate


class PromptTooLong(Exception):
    def __init__(self, needed: int, available: int) -> None:
        super().__init__(f"needs {needed} tokens, {available} available")
        self.needed = needed
        self.available = available


def build_prompt(
    *,
    system_prompt: str,
    latest: dict[str, Any],
    history_newest_first: Iterable[tuple[str, str]],
    history_count: int,
    context_window: int,
    reply_tokens: int,
) -> Prompt:
    """``latest`` is always sent; older (role, content) pairs are added newest first while they
    fit, and the rest are counted as omitted."""
    budget = int(context_window * SAFETY_MARGIN) - reply_tokens
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    used = count_message_tokens([*head, latest])
    if used > budget:
        raise PromptTooLong(used, max(budget, 0))

    kept: list[dict[str, Any]] = []
    for role, content in history_newest_first:
        cost = count_text_tokens(content) + PER_MESSAGE_OVERHEAD
        if used + cost > budget:
            break
        used += cost
        kept.append({"role": role, "content": content})
    kept.reverse()
    return Prompt(
        messages=[*head, *kept, latest], omitted=history_count - len(kept), prompt_tokens=used
    )
