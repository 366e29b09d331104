"""Model providers: connections (keys encrypted at rest), the models they serve, the models each
project allows, and the provider interface with its implementations (``providers.llm``).

Knows no money: billing builds on it, never the other way. ``providers.llm`` knows no tenants
either: it is handed a base URL and a key and speaks to the model.
"""
