"""The provider interface (``base``) and its implementations: the official OpenAI SDK for any
OpenAI-compatible server, and llama.cpp for the built-in local model; token counting, a model
catalog, and the fake upstream tests and benchmarks drive. Plain Python: no Django, no
tenants, no money; credentials are passed in."""
