"""``/v1`` moderation: with the key's project's moderation on, the texts of a chat completion's
user, developer and system messages are checked after the body is parsed and before the chat
call is reserved. Flagged: a 400 ``content_flagged`` naming the categories, nothing sent to
the chat model, the flag recorded; the only ledger row is the check's own (none when the
project's pattern list decided).

``POST /v1/moderations`` classifies texts on request (``moderations_prepare``, then
``moderations_create``), in OpenAI's answer shape. Who answers:

1. ``model`` is one of the project's models: its connection — passed through if the
   connection answers /v1/moderations, else the project's pattern list;
2. otherwise (the usual case: ``omni-moderation-latest``, which projects do not list among
   their chat models) the first of the project's models, the default first, whose connection
   answers /v1/moderations: ``model`` is sent to that connection;
3. no such connection: the project's pattern list (whether or not the project moderates its
   own input; empty, nothing is flagged), answered as model ``patterns``.

Passed through, each input is one metered call (``billing.metering.moderate_metered``: one
ledger row each, source ``moderation``, billed to the key); the pattern list costs nothing and
writes no row. Nothing is recorded as a flag: the client asked, nothing was refused.

The check itself is the chat's (the project's moderation settings and flags are chat data), yet
the gateway and the chat import nothing of each other: the gateway names what it needs
(``InputModeration``) and finds it by dotted path, ``settings.GATEWAY_INPUT_MODERATION``
(``DEFAULT_MODERATION`` unless set; empty: no moderation on ``/v1``). With moderation off, a
call costs one lookup in memory (the settings are kept by ``core.config_cache``): no query.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import cache, partial
from typing import Any, NoReturn, Protocol

from django.conf import settings
from django.utils.module_loading import import_string

from accounts.models import ApiKey, Project
from billing import metering
from billing.models import UsageRecord
from billing.services import CallContext
from core.config_cache import cached
from core.errors import ServiceError, invalid_request
from providers import selectors as provider_selectors
from providers.llm.base import ProviderError
from providers.specs import ProviderSpec, spec_for

from . import services as gateway_services
from .params import json_object, parse_chat_body
from .services import GatewayCall

DEFAULT_MODERATION = "chat.moderation.gateway_moderation"

# Roles whose text is the client's input; assistant and tool messages are what models said.
CHECKED_ROLES = frozenset({"user", "developer", "system"})


class InputCheck(Protocol):
    async def check(self, *, context: CallContext, spec: ProviderSpec, text: str) -> None:
        """Return if ``text`` may be sent to ``spec``'s model; else raise a ``ServiceError``
        (flagged, with the flag recorded; or the check failed), having sent nothing to it."""
        ...


class PatternCheck(Protocol):
    def categories(self, text: str) -> list[str]:
        """The categories of the project's pattern list that ``text`` matches; raises a
        ``ServiceError`` (``moderation_unavailable``) when the list cannot be checked."""
        ...


class InputModeration(Protocol):
    def for_project(self, project_id: int) -> InputCheck | None:
        """The project's check; None when it does not moderate. Sync (it may read the
        database, though not once its settings are kept in memory)."""
        ...

    def patterns_for(self, project_id: int) -> PatternCheck:
        """The project's pattern list, whether or not it moderates its input (what
        ``/v1/moderations`` answers with when no connection does). Sync, as ``for_project``."""
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


def chat_prepare_or_check(
    *, key: ApiKey, body: bytes, source: str = UsageRecord.Source.API, batch: bool = False
) -> GatewayCall | CheckFirst:
    """Database work before the upstream call, for a key already authenticated: the reserved
    call (``gateway.services.chat_prepare``, given ``source`` and ``batch``) when the project
    does not moderate; otherwise what to check first (then ``chat_prepare`` it). Refusals raise
    as ``chat_prepare``'s do."""
    prepare = partial(gateway_services.chat_prepare, key=key, body=body, source=source, batch=batch)
    moderation = input_moderation()
    check = None if moderation is None else moderation.for_project(key.project_id)
    if check is None:
        return prepare()
    parsed = parse_chat_body(body=body)  # a body that is not valid is refused before any check
    if batch and parsed.stream:
        return prepare()  # refused before any check, in chat_prepare's words
    project = key.project
    try:
        spec = spec_for(project=project, model=parsed.request.model)
    except ServiceError:
        # Nothing to check for a call that will not be made: refused in chat_prepare's words.
        return prepare()
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


# --- POST /v1/moderations ----------------------------------------------------------------------

# OpenAI's moderation categories (omni-moderation): each answer names every one of them.
OPENAI_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)  # fmt: skip
PATTERNS_MODEL = "patterns"  # the answer's model when the project's pattern list answered
# Inputs of one request: each is a call of its own when passed through.
MAX_INPUTS = 32
_FIELDS = ("input", "model")


def _fail(message: str, param: str | None, code: str | None = None) -> NoReturn:
    raise invalid_request(message, param=param, code=code)


def _part_text(part: Any, param: str) -> str:
    if not isinstance(part, dict):
        _fail(f"'{param}' must be a content part (an object).", param)
    kind = part.get("type")
    if kind == "image_url":
        # Only text is checked here (the pattern list reads text; a connection is sent text):
        # an image is refused rather than let through as if it had been looked at.
        _fail(f"'{param}' is an image: only text inputs are checked here.", param)
    if kind != "text":
        _fail(f"'{param}.type' must be 'text'.", f"{param}.type")
    text = part.get("text")
    if not isinstance(text, str):
        _fail(f"'{param}.text' must be a string.", f"{param}.text")
    return text


def _texts(value: Any) -> list[str]:
    """The inputs to classify, one result each: a string, an array of strings, or an array of
    content parts (one input, its texts joined)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        _fail(
            "'input' must be a string, a non-empty array of strings, or a non-empty array of "
            "content parts.",
            "input",
        )
    if all(isinstance(item, str) for item in value):
        if len(value) > MAX_INPUTS:
            _fail(f"'input' has {len(value)} texts; at most {MAX_INPUTS} per request.", "input")
        return list(value)
    if any(isinstance(item, str) for item in value):
        _fail("'input' must be all strings or all content parts, not both.", "input")
    return ["\n".join(_part_text(part, f"input[{n}]") for n, part in enumerate(value))]


def parse_moderations_body(*, body: bytes) -> tuple[str, list[str]]:
    """The model (``settings.MODERATION_MODEL`` unless named) and the texts of a
    ``/v1/moderations`` body, or a 400 naming the faulty parameter."""
    data = json_object(body)
    for name in data:
        if name not in _FIELDS:
            _fail(f"Unrecognized request argument supplied: {name}", name)
    if "input" not in data:
        _fail("Missing required parameter: 'input'.", "input")
    model = data.get("model")
    if model is None:
        model = settings.MODERATION_MODEL
    elif not isinstance(model, str) or not model:
        _fail("'model' must be a non-empty string.", "model")
    return model, _texts(data["input"])


def _first_moderating_spec(project: Project) -> ProviderSpec | None:
    for choice in provider_selectors.model_choices(project):
        if choice.model.connection.supports_moderation:
            return spec_for(project=project, model=choice.name)
    return None


def moderating_spec(project: Project, model: str) -> ProviderSpec | None:
    """The connection that answers ``/v1/moderations`` for ``model`` in ``project`` (see the
    module's docstring), None when the pattern list does. Kept in memory, as specs are: no
    query once read, whatever model a client names."""
    names = cached(
        ("model-names", project.pk),
        lambda: frozenset(provider_selectors.allowed_model_names(project)),
    )
    if model in names:
        spec = spec_for(project=project, model=model)
        return spec if spec.supports_moderation else None
    return cached(("moderating-spec", project.pk), partial(_first_moderating_spec, project))


def moderation_result(categories: list[str]) -> dict[str, Any]:
    """One result in OpenAI's shape: every OpenAI category, and any other category the
    answer flagged under its own name. Scores are 1 for a flagged category and 0 otherwise:
    a pattern matches or not, and a connection's answer reaches us as its verdict only."""
    flagged: list[str] = []
    for category in categories:
        name = category.lower() if category.lower() in OPENAI_CATEGORIES else category
        if name not in flagged:
            flagged.append(name)
    names = [*OPENAI_CATEGORIES, *(c for c in flagged if c not in OPENAI_CATEGORIES)]
    return {
        "flagged": bool(flagged),
        "categories": {name: name in flagged for name in names},
        "category_scores": {name: 1.0 if name in flagged else 0.0 for name in names},
        "category_applied_input_types": {name: ["text"] for name in names},
    }


def _answer(model: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": results}


@dataclass(frozen=True)
class PassThrough:
    """Texts to send, one metered call each, to the connection that answers moderation."""

    model: str
    texts: list[str]
    context: CallContext
    spec: ProviderSpec


def moderations_prepare(*, key: ApiKey, body: bytes) -> PassThrough | dict[str, Any]:
    """Database work for a key already authenticated (scope ``chat``): the parsed body and
    who answers. The pattern list answers here at once (the answer, as a dict); a connection
    is called by ``moderations_create``. Refusals raise a ``ServiceError``."""
    model, texts = parse_moderations_body(body=body)
    project = key.project
    spec = moderating_spec(project, model)
    if spec is None:
        moderation = input_moderation()
        patterns = None if moderation is None else moderation.patterns_for(project.pk)
        return _answer(
            PATTERNS_MODEL,
            [moderation_result(patterns.categories(t) if patterns else []) for t in texts],
        )
    return PassThrough(
        model=model,
        texts=texts,
        context=CallContext(
            organization_id=project.organization_id,
            project_id=project.pk,
            user_id=None,
            model=model,
            source=UsageRecord.Source.MODERATION,
            connection_id=spec.connection_id,
            api_key_id=key.pk,
        ),
        spec=spec,
    )


async def moderations_create(call: PassThrough) -> dict[str, Any]:
    """Each text through the connection's ``/v1/moderations``, one after the other, each
    metered and settled once. Raises a ``ServiceError``: a budget or rate limit refusing
    (nothing sent for that text), or the upstream's failure in the error table's words."""
    model = call.model
    results = []
    for text in call.texts:
        try:
            result = await metering.moderate_metered(
                context=call.context, spec=call.spec, text=text, model=call.model
            )
        except ProviderError as exc:
            raise metering.upstream_failure(exc) from None
        model = result.model or model
        results.append(moderation_result(list(result.categories)))
    return _answer(model, results)
