"""``/v1`` moderation: with the key's project's moderation on, the texts of a chat completion's
user, developer and system messages are checked after the body is parsed and before the chat
call is reserved. Flagged: a 400 ``content_flagged`` naming the categories, nothing sent to
the chat model, the flag recorded; the only ledger row is the check's own (none when the
project's pattern list decided).

The check itself is the chat's (the project's moderation settings and flags are chat data), yet
the gateway and the chat import nothing of each other: the gateway names what it needs
(``InputModeration``) and finds it by dotted path, ``settings.GATEWAY_INPUT_MODERATION``
(``DEFAULT_MODERATION`` unless set; empty: no moderation on ``/v1``). With moderation off, a
call costs one lookup in memory (the settings are kept by ``core.config_cache``): no query.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

from django.conf import settings
from django.utils.module_loading import import_string

from accounts.models import ApiKey
from billing.models import UsageRecord
from billing.services import CallContext
from core.errors import ServiceError
from providers.specs import ProviderSpec, spec_for

from . import services as gateway_services
from .params import parse_chat_body
from .services import GatewayCall

DEFAULT_MODERATION = "chat.moderation.gateway_moderation"

# Roles whose text is the client's input; assistant and tool messages are what models said.
CHECKED_ROLES = frozenset({"user", "developer", "system"})


class InputCheck(Protocol):
    async def check(self, *, context: CallContext, spec: ProviderSpec, text: str) -> None:
        """Return if ``text`` may be sent to ``spec``'s model; else raise a ``ServiceError``
        (flagged, with the flag recorded; or the check failed), having sent nothing to it."""
        ...


class InputModeration(Protocol):
    def for_project(self, project_id: int) -> InputCheck | None:
        """The project's check; None when it does not moderate. Sync (it may read the
        database, though not once its settings are kept in memory)."""
        ...


@cache
def _moderation(path: str) -> InputModeration | None:
    return import_string(path) if path else None


def input_moderation() -> InputModeration | None:
    return _moderation(getattr(settings, "GATEWAY_INPUT_MODERATION", DEFAULT_MODERATION))


def moderated_text(messages: list[dict[str, Any]]) -> str:
    """The text of the messages moderation checks, one after the other: string contents and
    the ``text`` parts of part lists (images are not checked as text)."""
    texts: list[str] = []
    for message in messages:
        if message.get("role") not in CHECKED_ROLES:
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(
                part["text"]
                for part in content
                if isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            )
    return "\n\n".join(text for text in texts if text)


@dataclass(frozen=True)
class CheckFirst:
    """A call whose input moderation checks before it is reserved (``chat_prepare``)."""

    key: ApiKey
    body: bytes
    check: InputCheck
    context: CallContext
    spec: ProviderSpec
    text: str


def chat_prepare_or_check(*, key: ApiKey, body: bytes) -> GatewayCall | CheckFirst:
    """Database work before the upstream call, for a key already authenticated: the reserved
    call (``gateway.services.chat_prepare``) when the project does not moderate; otherwise what
    to check first. Refusals raise as ``chat_prepare``'s do."""
    moderation = input_moderation()
    check = None if moderation is None else moderation.for_project(key.project_id)
    if check is None:
        return gateway_services.chat_prepare(key=key, body=body)
    parsed = parse_chat_body(body=body)  # a body that is not valid is refused before any check
    project = key.project
    try:
        spec = spec_for(project=project, model=parsed.request.model)
    except ServiceError:
        # Nothing to check for a call that will not be made: refused in chat_prepare's words.
        return gateway_services.chat_prepare(key=key, body=body)
    return CheckFirst(
        key=key,
        body=body,
        check=check,
        context=CallContext(
            organization_id=project.organization_id,
            project_id=project.pk,
            user_id=None,
            model=parsed.request.model,
            source=UsageRecord.Source.API,
            connection_id=spec.connection_id,
            api_key_id=key.pk,
        ),
        spec=spec,
        text=moderated_text(parsed.request.messages),
    )


async def check(pending: CheckFirst) -> None:
    """Raises a ``ServiceError`` (``content_flagged``, ``moderation_unavailable``, a budget)
    unless the input may be sent."""
    await pending.check.check(context=pending.context, spec=pending.spec, text=pending.text)
