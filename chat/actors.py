"""Who acts on conversations: a signed-in person, or a project API key.

A person reaches their own conversations; a key reaches its project's API conversations (those
started with a key, owned by nobody). Every read and write on conversations goes through
``Actor.conversations()``, so the two can never see each other's.
"""

from __future__ import annotations

from dataclasses import dataclass

from accounts.models import ApiKey, User

from .models import Conversation, ConversationQuerySet


@dataclass(frozen=True)
class Actor:
    user: User | None = None
    api_key: ApiKey | None = None

    def __post_init__(self) -> None:
        if (self.user is None) == (self.api_key is None):
            raise ValueError("An actor is a user or an API key, exactly one of them.")

    @classmethod
    def of(cls, principal: User | ApiKey) -> Actor:
        if isinstance(principal, ApiKey):
            return cls(api_key=principal)
        return cls(user=principal)

    @property
    def user_id(self) -> int | None:
        return self.user.pk if self.user is not None else None

    @property
    def api_key_id(self) -> int | None:
        return self.api_key.pk if self.api_key is not None else None

    @property
    def tag(self) -> str:
        """Passed upstream as OpenAI's ``user`` field: stable, and no personal data."""
        return f"user-{self.user_id}" if self.user is not None else f"key-{self.api_key_id}"

    def conversations(self) -> ConversationQuerySet:
        if self.api_key is not None:
            return Conversation.objects.for_api_key(self.api_key)
        if self.user is not None:
            return Conversation.objects.for_user(self.user)
        return Conversation.objects.none()  # never: an actor is one of them (__post_init__)
