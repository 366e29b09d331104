"""What we know about models by name: their context windows.

Connections will carry their own model lists later; until then this table (and a safe default)
decides how much history fits into a prompt.
"""

# Tokens of context (prompt + reply) per model family, longest prefix wins.
CONTEXT_WINDOWS = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-3.5-turbo": 16_385,
    "fake-gpt": 4_096,
    "fake-gpt-mini": 2_048,
}
DEFAULT_CONTEXT_WINDOW = 8_192


def context_window(model: str) -> int:
    base = model.split("@", 1)[0]  # the fake upstream's fault markers ride on the name
    matches = [name for name in CONTEXT_WINDOWS if base == name or base.startswith(name + "-")]
    if not matches:
        return DEFAULT_CONTEXT_WINDOW
    return CONTEXT_WINDOWS[max(matches, key=len)]
