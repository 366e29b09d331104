"""The prompt: history trimmed to the model's context window, oldest turns first."""

import pytest

from chat.prompt import SUMMARY_HEADING, PromptTooLong, build_prompt
from providers.llm.catalog import context_window


def history(n: int, words: int = 50) -> list[tuple[str, str]]:
    """n earlier messages, newest first, each about ``words`` tokens."""
    return [("user" if i % 2 else "assistant", f"turn {i} " + "word " * words) for i in range(n)]


def test_everything_fits_in_a_big_window():
    prompt = build_prompt(
        system_prompt="Be brief.",
        latest={"role": "user", "content": "now"},
        history_newest_first=history(4),
        history_count=4,
        context_window=128_000,
        reply_tokens=1000,
    )

    assert prompt.omitted == 0
    assert [m["role"] for m in prompt.messages] == [
        "system", "user", "assistant", "user", "assistant", "user",
    ]  # fmt: skip
    assert prompt.messages[1]["content"].startswith("turn 3")  # oldest first
    assert prompt.messages[-1]["content"] == "now"


def test_the_oldest_turns_are_left_out_first_and_counted():
    prompt = build_prompt(
        system_prompt="",
        latest={"role": "user", "content": "now"},
        history_newest_first=history(100),
        history_count=100,
        context_window=2048,
        reply_tokens=1000,
    )

    kept = len(prompt.messages) - 1
    assert 0 < kept < 100
    assert prompt.omitted == 100 - kept
    assert prompt.messages[-2]["content"].startswith("turn 0 ")  # the newest earlier turn
    assert prompt.prompt_tokens <= 2048 * 0.9 - 1000


def test_a_message_that_cannot_fit_is_refused():
    with pytest.raises(PromptTooLong) as info:
        build_prompt(
            system_prompt="",
            latest={"role": "user", "content": "word " * 5000},
            history_newest_first=[],
            history_count=0,
            context_window=4096,
            reply_tokens=1000,
        )

    assert info.value.needed > info.value.available


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o", 128_000),
        ("gpt-4o-mini-2024-07-18", 128_000),
        ("gpt-3.5-turbo", 16_385),
        ("fake-gpt@slow10", 4_096),
        ("some-local-model", 8_192),
    ],
)
def test_context_windows_by_model_name(model, window):
    assert context_window(model) == window


# --- the running summary (chat.summaries) ---------------------------------------------------


def test_the_summary_is_sent_after_the_system_prompt_before_the_recent_turns():
    prompt = build_prompt(
        system_prompt="Be brief.",
        latest={"role": "user", "content": "now"},
        history_newest_first=history(2),
        history_count=2,
        context_window=128_000,
        reply_tokens=1000,
        summary="Minseo booked the flight to Jeju.",
    )

    assert prompt.summarized
    assert prompt.messages[0] == {"role": "system", "content": "Be brief."}
    assert prompt.messages[1] == {
        "role": "system",
        "content": f"{SUMMARY_HEADING}\nMinseo booked the flight to Jeju.",
    }
    assert [m["content"].split()[1] for m in prompt.messages[2:4]] == ["1", "0"]
    assert prompt.messages[-1]["content"] == "now"


def test_the_summary_takes_its_room_from_the_turns_that_fit():
    without = build_prompt(
        system_prompt="",
        latest={"role": "user", "content": "now"},
        history_newest_first=history(100),
        history_count=100,
        context_window=4096,
        reply_tokens=1000,
    )
    summary = "word " * 500
    with_summary = build_prompt(
        system_prompt="",
        latest={"role": "user", "content": "now"},
        history_newest_first=history(100),
        history_count=100,
        context_window=4096,
        reply_tokens=1000,
        summary=summary,
    )

    assert with_summary.summarized
    assert with_summary.omitted > without.omitted
    assert with_summary.prompt_tokens <= 4096 * 0.9 - 1000


def test_a_summary_that_would_crowd_out_the_message_is_left_out():
    prompt = build_prompt(
        system_prompt="",
        latest={"role": "user", "content": "word " * 1000},
        history_newest_first=[],
        history_count=0,
        context_window=4096,
        reply_tokens=1000,
        summary="word " * 3000,
    )

    assert not prompt.summarized
    assert len(prompt.messages) == 1


def test_without_a_summary_nothing_changes():
    prompt = build_prompt(
        system_prompt="Be brief.",
        latest={"role": "user", "content": "now"},
        history_newest_first=history(2),
        history_count=2,
        context_window=128_000,
        reply_tokens=1000,
        summary="",
    )

    assert not prompt.summarized
    assert [m["role"] for m in prompt.messages] == ["system", "user", "assistant", "user"]
