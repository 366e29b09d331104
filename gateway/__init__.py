"""The OpenAI-compatible surface (``/v1``): project-key calls that the official ``openai`` SDK
makes unchanged, metered like every other call."""
