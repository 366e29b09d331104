"""Tests of the provider interface and its implementations (providers.llm)."""
