"""Writes on conversations and messages, and the start and end of every model reply.

``reply_*`` functions run in one transaction each: the start validates, saves the user's
message and an assistant message in state ``streaming`` and builds the prompt; the finish saves
what was generated with its final state. The streaming in between lives in ``chat.streaming``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import IntegerField, Max, Sum
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.models import Project
from billing import metering
from billing.metering import MeteredCall, Outcome
from billing.models import UsageRecord
from billing.services import CallContext
from core.errors import ServiceError
from core.money import decimal_text
from core.text import storable
from providers import selectors as provider_selectors
from providers.llm.base import ChatRequest
from providers.llm.tokens import count_text_tokens
from providers.models import ConnectionModel
from providers.specs import spec_for

from . import selectors, summaries
from .actors import Actor
from .models import Attachment, Conversation, Folder, Message, Persona, ToolCall
from .prompt import PromptTooLong, build_prompt

if TYPE_CHECKING:
    from .moderation import ModerationConfig
    from .tools.registry import Toolset

TITLE_MAX_CHARS = 80

LEDGER_STATUS: dict[str, str] = {
    Message.State.COMPLETE: UsageRecord.Status.OK,
    Message.State.STOPPED: UsageRecord.Status.STOPPED,
    Message.State.INCOMPLETE: UsageRecord.Status.INCOMPLETE,
    Message.State.ERROR: UsageRecord.Status.ERROR,
}


@dataclass(frozen=True)
class PendingReply:
    """Everything the streaming task needs, so it never touches the ORM to get going."""

    conversation_id: int
    project_id: int
    user_id: int | None  # None when a project API key asked
    assistant_message_id: int
    user_message: dict[str, Any] | None  # serialized, when this turn added one
    call: MeteredCall  # reserved and capped: what is sent upstream
    omitted: int
    truncate_from: int | None = None  # messages with this id or later were replaced
    persona: dict[str, Any] | None = None  # serialized, when a persona answers
    caller: dict[str, Any] | None = None  # {"id", "name"} of the person who asked (and pays)
    # Which version of its turn the reply is, when it is not the only one (a regenerate).
    versions: dict[str, Any] | None = None
    # The tools the reply may call (None: none); each round of calls is a new metered call.
    toolset: Toolset | None = None
    # The reply cap the conversation asked for (None: the model's limit), for later rounds.
    asked: int | None = None
    # The project checks replies before they are shown: the reply is held back until then.
    moderation: ModerationConfig | None = None


# --- checks ---------------------------------------------------------------------------------


def check_content(content: object) -> str:
    """The message as it will be stored: not empty, not too long; characters no database can
    store (a lone surrogate, NUL) replaced rather than refused."""
    if not isinstance(content, str) or not content.strip():
        raise ServiceError(_("Type a message first: it is empty."), code="empty_message")
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(content) > limit:
        raise ServiceError(
            _("Your message is %(length)s characters long; the limit is %(limit)s.")
            % {"length": f"{len(content):,}", "limit": f"{limit:,}"},
            code="message_too_long",
        )
    return storable(content)


def check_model_allowed(*, project: Project, model: str) -> None:
    if provider_selectors.resolve_model(project, model) is None:
        raise ServiceError(
            _("The model %(model)r is not available in this project.") % {"model": model},
            code="model_not_found",
        )


def _check_not_busy(conversation: Conversation) -> None:
    streams_expire_stale(conversation=conversation)
    if conversation.messages.filter(state=Message.State.STREAMING).exists():
        raise ServiceError(
            _("A reply is still being written. Wait for it or stop it first."), code="busy"
        )


def _resolve(*, actor: Actor, conversation_id: int) -> Conversation:
    """Re-resolve through the scoped path on every write: a socket opened before the user was
    removed from the organization must not keep working."""
    conversation = (
        actor.conversations()
        .select_related("project")
        .select_for_update(of=("self",))
        .filter(pk=conversation_id)
        .first()
    )
    if conversation is None:
        raise ServiceError(_("This conversation no longer exists."), code="not_found")
    return conversation


# --- conversations ---------------------------------------------------------------------------


def _check_persona(project: Project, persona: Persona) -> None:
    if persona.project_id != project.pk:
        raise ServiceError(_("No such persona."), code="not_found", param="persona")
    if not persona.enabled:
        raise ServiceError(
            _("@%(tag)s is turned off in this project; ask an admin to turn it on.")
            % {"tag": persona.tag},
            code="persona_disabled",
            param="persona",
        )


@transaction.atomic
def conversation_create(
    *,
    actor: Actor,
    project: Project,
    model: str | None = None,
    persona: Persona | None = None,
) -> Conversation:
    """A new conversation on ``model``, else the persona's model (when the project allows it),
    else the project's default. A persona's system prompt and sampling settings are copied, so
    later changes to the persona leave the conversation as it started."""
    if persona is not None:
        _check_persona(project, persona)
        # A persona whose model the project no longer allows still starts a chat, on the
        # default model: its prompt is what people pick it for.
        if (
            model is None
            and persona.model
            and provider_selectors.resolve_model(project, persona.model) is not None
        ):
            model = persona.model
    model = model or selectors.default_model(project)
    if model is None:
        raise ServiceError(
            _("This project has no model to chat with: an admin needs to add a connection."),
            code="no_models",
        )
    connection_model = provider_selectors.resolve_model(project, model)
    if connection_model is None:
        raise ServiceError(
            _("The model %(model)r is not available in this project.") % {"model": model},
            code="model_not_found",
        )
    conversation = Conversation(
        project=project,
        owner=actor.user,
        api_key=actor.api_key,
        model=model,
        system_prompt=project.default_system_prompt,
    )
    if persona is not None:
        _take_persona(conversation, persona, connection_model)
    conversation.save()
    return conversation


def _take_persona(
    conversation: Conversation, persona: Persona, connection_model: ConnectionModel
) -> None:
    """Copy what a persona answers with; what the model cannot take is left out rather than
    refused (its longest reply caps max tokens; JSON mode needs a model that has it)."""
    conversation.persona = persona
    conversation.system_prompt = persona.system_prompt
    conversation.temperature = persona.temperature
    conversation.top_p = persona.top_p
    conversation.presence_penalty = persona.presence_penalty
    conversation.frequency_penalty = persona.frequency_penalty
    longest = connection_model.max_output_tokens or connection_model.context_window - 1
    conversation.max_tokens = (
        None if persona.max_tokens is None else max(1, min(persona.max_tokens, longest))
    )
    conversation.json_mode = persona.json_mode and connection_model.supports_json
    conversation.json_schema = persona.json_schema if connection_model.supports_json else None
    conversation.tools = list(persona.tools) if connection_model.supports_tools else []


@transaction.atomic
def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    conversation.title = title.strip()[:200]
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


@transaction.atomic
def conversation_delete(*, conversation: Conversation) -> None:
    conversation.delete()


# What a conversation sends the model, besides its messages. None: the provider's default.
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "max_tokens",
    "stop",
    "seed",
    "json_mode",
    "json_schema",
    "tools",
)
_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
MAX_STOP_SEQUENCES = 4


def check_sampling(
    *, connection_model: ConnectionModel, project: Project | None = None, **values: Any
) -> dict[str, Any]:
    """The sampling settings as they will be stored and sent, or a refusal naming the one
    that is out of range (the same ranges OpenAI documents) or that the model cannot honour.
    ``project``: whose tools ``tools`` names (needed when it names any)."""
    checked: dict[str, Any] = {}
    for name, (low, high) in _RANGES.items():
        value = values.get(name)
        if value is not None and not low <= value <= high:
            label = name.replace("_", " ").capitalize()
            raise ServiceError(
                _("%(setting)s goes from %(low)s to %(high)s.")
                % {"setting": label, "low": f"{low:g}", "high": f"{high:g}"},
                code=f"invalid_{name}",
                param=name,
            )
        checked[name] = value
    max_tokens = values.get("max_tokens")
    longest = connection_model.max_output_tokens or connection_model.context_window - 1
    if max_tokens is not None and not 1 <= max_tokens <= longest:
        raise ServiceError(
            _("Max tokens must be between 1 and %(longest)s for %(model)s.")
            % {"longest": f"{longest:,}", "model": connection_model.name},
            code="invalid_max_tokens",
            param="max_tokens",
        )
    checked["max_tokens"] = max_tokens
    stop = [s for s in values.get("stop") or [] if s]
    if len(stop) > MAX_STOP_SEQUENCES:
        raise ServiceError(
            _("At most %(count)s stop sequences.") % {"count": MAX_STOP_SEQUENCES},
            code="invalid_stop",
        )
    checked["stop"] = stop or None
    checked["seed"] = values.get("seed")
    json_mode = bool(values.get("json_mode"))
    if json_mode and not connection_model.supports_json:
        raise ServiceError(
            _("%(model)s does not take JSON mode.") % {"model": connection_model.name},
            code="invalid_json_mode",
            param="json_mode",
        )
    checked["json_mode"] = json_mode
    checked.update(check_abilities(connection_model=connection_model, project=project, **values))
    return checked


def check_abilities(
    *, connection_model: ConnectionModel, project: Project | None, **values: Any
) -> dict[str, Any]:
    """``json_schema`` and ``tools`` as they will be stored, when the model can use them."""
    from .structured import check_json_schema
    from .tools.registry import check_tools

    checked: dict[str, Any] = {}
    if "json_schema" in values:
        schema = check_json_schema(values["json_schema"])
        if schema is not None and not connection_model.supports_json:
            raise ServiceError(
                _("%(model)s cannot answer in JSON: pick a model that can.")
                % {"model": connection_model.name},
                code="invalid_json_schema",
                param="json_schema",
            )
        checked["json_schema"] = schema
    if "tools" in values:
        tools: list[str] = []
        if values["tools"]:
            if project is None:
                raise TypeError("tools are checked against a project")
            tools = check_tools(project=project, value=values["tools"])
        if tools and not connection_model.supports_tools:
            raise ServiceError(
                _("%(model)s cannot call tools: pick a model that can.")
                % {"model": connection_model.name},
                code="tools_not_supported",
                param="tools",
            )
        checked["tools"] = tools
    return checked


@transaction.atomic
def conversation_update_settings(
    *,
    conversation: Conversation,
    model: str,
    system_prompt: str,
    **sampling: Any,
) -> Conversation:
    """Model, system prompt and sampling settings (``SAMPLING_FIELDS``; those not given are
    cleared to the provider's default)."""
    unknown = set(sampling) - set(SAMPLING_FIELDS)
    if unknown:
        raise TypeError(f"not a sampling setting: {', '.join(sorted(unknown))}")
    connection_model = provider_selectors.resolve_model(conversation.project, model)
    if connection_model is None:
        raise ServiceError(
            _("The model %(model)r is not available in this project.") % {"model": model},
            code="model_not_found",
        )
    checked = check_sampling(
        connection_model=connection_model, project=conversation.project, **sampling
    )
    conversation.model = model
    conversation.system_prompt = storable(system_prompt)
    for name, value in checked.items():
        setattr(conversation, name, value)
    conversation.save()
    return conversation


_SETTINGS_FIELDS = ("model", "system_prompt", *SAMPLING_FIELDS)


@transaction.atomic
def conversation_update(*, conversation: Conversation, changes: dict[str, Any]) -> Conversation:
    """A partial update (the REST API's PATCH): settings are checked as the settings form's
    are, the title as a rename's; ``changes`` holds only what the client sent."""
    if any(name in changes for name in _SETTINGS_FIELDS):
        conversation_update_settings(
            conversation=conversation,
            **{name: changes.get(name, getattr(conversation, name)) for name in _SETTINGS_FIELDS},
        )
    if "title" in changes:
        conversation_rename(conversation=conversation, title=changes["title"])
    if "archived" in changes and changes["archived"] != conversation.archived:
        conversation.archived = changes["archived"]
        conversation.save(update_fields=["archived", "updated_at"])
    if "history_limit" in changes:
        conversation.history_limit = check_history_limit(changes["history_limit"])
        conversation.save(update_fields=["history_limit", "updated_at"])
    return conversation


def check_history_limit(value: object) -> int | None:
    """How many earlier messages a prompt keeps at most: at least 1, or None (all that fit)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ServiceError(
            _("Keep at least 1 message, or leave it empty to keep all that fit."),
            param="history_limit",
        )
    return value


@transaction.atomic
def conversation_start(*, actor: Actor, project: Project, changes: dict[str, Any]) -> Conversation:
    """A new conversation with its settings and title in one go (the REST API's POST)."""
    persona = None
    if "persona" in changes:
        persona = Persona.objects.for_project(project).filter(pk=changes["persona"]).first()
        if persona is None:  # another project's persona reads as unknown
            raise ServiceError(
                _("No such persona in this project."), code="not_found", param="persona"
            )
    conversation = conversation_create(
        actor=actor, project=project, model=changes.get("model"), persona=persona
    )
    rest = {name: value for name, value in changes.items() if name not in ("model", "persona")}
    return conversation_edit(actor=actor, conversation=conversation, changes=rest)


SIDEBAR_FIELDS = ("pinned", "folder")


@transaction.atomic
def conversation_edit(
    *, actor: Actor, conversation: Conversation, changes: dict[str, Any]
) -> Conversation:
    """``conversation_update``, and where the actor files the chat (``pinned``, ``folder``: a
    folder id or None), all or nothing."""
    settings_changes = {k: v for k, v in changes.items() if k not in SIDEBAR_FIELDS}
    if settings_changes:
        conversation = conversation_update(conversation=conversation, changes=settings_changes)
    if "pinned" in changes:
        conversation = conversation_pin(
            actor=actor, conversation_id=conversation.pk, pinned=bool(changes["pinned"])
        )
    if "folder" in changes:
        conversation = conversation_move(
            actor=actor, conversation_id=conversation.pk, folder_id=changes["folder"]
        )
    return conversation


@transaction.atomic
def conversation_switch_model(*, actor: Actor, conversation_id: int, model: object) -> Conversation:
    """Answer with another model from the next reply on (the page's model picker, over the
    socket). Checked as a settings save is: the settings must suit the new model."""
    conversation = _resolve(actor=actor, conversation_id=conversation_id)
    if conversation.is_room and (actor.user is None or conversation.owner_id != actor.user_id):
        raise ServiceError(code="not_room_owner")
    if not isinstance(model, str) or not model:
        raise ServiceError(_("Pick a model."), code="model_not_found", param="model")
    if model == conversation.model:
        return conversation
    return conversation_update(conversation=conversation, changes={"model": model})


# --- the sidebar: pins, the archive, folders ---------------------------------------------------


def _own_chat(*, actor: Actor, conversation_id: int) -> Conversation:
    """A private chat of the actor's: only those are pinned, archived or filed in folders (a
    room is everyone's in it, and folders are one person's)."""
    conversation = _resolve(actor=actor, conversation_id=conversation_id)
    if actor.user is None:
        raise ServiceError(code="keys_not_allowed")
    if conversation.is_room or conversation.owner_id != actor.user_id:
        raise ServiceError(
            _("Only your own private chats can be pinned, archived or put in folders."),
            code="not_in_rooms",
        )
    return conversation


@transaction.atomic
def conversation_pin(*, actor: Actor, conversation_id: int, pinned: bool) -> Conversation:
    conversation = _own_chat(actor=actor, conversation_id=conversation_id)
    conversation.pinned = pinned
    conversation.save(update_fields=["pinned", "updated_at"])
    return conversation


@transaction.atomic
def conversation_archive(*, actor: Actor, conversation_id: int, archived: bool) -> Conversation:
    conversation = _own_chat(actor=actor, conversation_id=conversation_id)
    conversation.archived = archived
    conversation.save(update_fields=["archived", "updated_at"])
    return conversation


@transaction.atomic
def conversation_move(*, actor: Actor, conversation_id: int, folder_id: object) -> Conversation:
    """Put the chat in one of the actor's folders of its project (None: in no folder)."""
    conversation = _own_chat(actor=actor, conversation_id=conversation_id)
    folder = None
    if folder_id is not None and actor.user is not None:  # _own_chat: a person's
        folder = (
            Folder.objects.for_user(actor.user).for_project(conversation.project)
            .filter(pk=folder_id).first()
            if isinstance(folder_id, int) and not isinstance(folder_id, bool)
            else None
        )  # fmt: skip
        if folder is None:  # another person's folder reads as unknown
            raise ServiceError(_("No such folder."), code="not_found", param="folder")
    conversation.folder = folder
    conversation.save(update_fields=["folder", "updated_at"])
    return conversation


FOLDER_NAME_MAX = 80


def _check_folder_name(*, owner: Any, project: Project, name: object, exclude: int | None) -> str:
    cleaned = " ".join(name.split()) if isinstance(name, str) else ""
    if not cleaned:
        raise ServiceError(_("Give the folder a name."), param="name")
    if len(cleaned) > FOLDER_NAME_MAX:
        raise ServiceError(
            _("A folder name has at most %(max)d characters.") % {"max": FOLDER_NAME_MAX},
            param="name",
        )
    taken = Folder.objects.filter(project=project, owner=owner, name=cleaned)
    if exclude is not None:
        taken = taken.exclude(pk=exclude)
    if taken.exists():
        raise ServiceError(
            _("You already have a folder called “%(name)s”.") % {"name": cleaned},
            code="conflict",
            param="name",
        )
    return cleaned


@transaction.atomic
def folder_create(*, actor: Actor, project: Project, name: object) -> Folder:
    if actor.user is None:
        raise ServiceError(code="keys_not_allowed")
    cleaned = _check_folder_name(owner=actor.user, project=project, name=name, exclude=None)
    return Folder.objects.create(project=project, owner=actor.user, name=cleaned)


@transaction.atomic
def folder_rename(*, folder: Folder, name: object) -> Folder:
    folder.name = _check_folder_name(
        owner=folder.owner_id, project=folder.project, name=name, exclude=folder.pk
    )
    folder.save(update_fields=["name"])
    return folder


@transaction.atomic
def folder_delete(*, folder: Folder) -> None:
    """The folder goes; its chats stay, in no folder."""
    folder.delete()


# --- replies ---------------------------------------------------------------------------------


def persona_card(persona: Persona) -> dict[str, Any]:
    """How a persona is shown next to its replies."""
    return {
        "id": persona.pk,
        "tag": persona.tag,
        "name": persona.name,
        "avatar": persona.avatar,
        "color": persona.color,
    }


def _check_not_room(conversation: Conversation) -> None:
    if conversation.is_room:
        # Regenerating or editing would replace what other people said after it.
        raise ServiceError(
            _("In a room, call the persona again with its @tag instead."), code="not_in_rooms"
        )


def serialize_tool_call(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.pk,
        "round": call.round,
        "call_id": call.call_id,
        "name": call.name,
        "arguments": call.arguments,
        "result": call.result,
        "is_error": call.is_error,
        "duration_ms": call.duration_ms,
    }


def serialize_message(
    message: Message,
    *,
    versions: selectors.Versions | None = None,
    attachments: list[Attachment] | None = None,
) -> dict[str, Any]:
    """A message as the socket sends it; ``versions`` when it is one of several versions of its
    turn (the page then shows "2/3" with arrows). A user message's images (``attachments``,
    looked up when not given) and a reply's tool calls come with it."""
    from .attachments import serialize_attachment
    from .markdown import render_reply_html

    if attachments is None:
        attachments = list(message.attachments.all()) if message.role == Message.Role.USER else []
    tool_calls = list(message.tool_calls.all()) if message.tool_rounds else []
    return {
        "id": message.pk,
        "parent": message.parent_id,
        "versions": None if versions is None else versions.as_dict(),
        "role": message.role,
        "content": message.content,
        # Rooms show who wrote what, when, and which persona answered.
        "author": None
        if message.author_id is None
        else {"id": message.author_id, "name": selectors.speaker_name(message.author)},
        "persona": None if message.persona is None else persona_card(message.persona),
        "created_at": message.created_at.isoformat() if message.created_at else None,
        "html": render_reply_html(
            message.content, json_valid=message.json_valid, json_error=message.json_error
        )
        if message.role == "assistant"
        else None,
        "state": message.state,
        "model": message.model,
        "error_code": message.error_code,
        "error_message": message.error_message,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "finish_reason": message.finish_reason,
        "omitted_messages": message.omitted_messages,
        "usage_estimated": message.usage_estimated,
        "json_valid": message.json_valid,
        "json_error": message.json_error,
        "flagged": message.flagged,
        "tool_rounds": message.tool_rounds,
        "tool_calls": [serialize_tool_call(call) for call in tool_calls],
        "attachments": [serialize_attachment(a) for a in attachments],
        # Strings: JSON has no Decimal, and a float would not be the ledger's amount.
        "cost": decimal_text(getattr(message, "cost", None)),
        # False: the reply's model ran without a price, so its cost is unknown (not $0).
        "priced": not getattr(message, "unpriced", False),
        "conversation_cost": decimal_text(getattr(message, "conversation_cost", None)),
    }


ROOM_NOTE = (
    "You are in a group chat. Each message from a person starts with their name and a colon. "
    "Answer the person who called you; you may use what anyone said earlier in the room."
)


@dataclass(frozen=True)
class Voice:
    """Who answers and how: the conversation's own settings, or a persona's (in a room, or
    called by its @tag)."""

    model: str
    system_prompt: str
    temperature: float | None
    top_p: float | None
    presence_penalty: float | None
    frequency_penalty: float | None
    max_tokens: int | None
    stop: list[str] | None
    seed: int | None
    json_mode: bool
    json_schema: dict[str, Any] | None = None
    tools: tuple[str, ...] = ()
    persona: Persona | None = None

    @property
    def response_format(self) -> dict[str, Any] | None:
        from .structured import response_format_for

        return response_format_for(json_mode=self.json_mode, json_schema=self.json_schema)

    @classmethod
    def of(cls, conversation: Conversation, persona: Persona | None = None) -> Voice:
        source: Conversation | Persona = persona or conversation
        system_prompt = source.system_prompt
        if conversation.is_room:
            system_prompt = f"{system_prompt}\n\n{ROOM_NOTE}" if system_prompt else ROOM_NOTE
        return cls(
            model=(persona.model if persona is not None else "") or conversation.model,
            system_prompt=system_prompt,
            temperature=source.temperature,
            top_p=source.top_p,
            presence_penalty=source.presence_penalty,
            frequency_penalty=source.frequency_penalty,
            max_tokens=source.max_tokens,
            # A persona has no stop sequences or seed of its own.
            stop=conversation.stop or None if persona is None else None,
            seed=conversation.seed if persona is None else None,
            json_mode=source.json_mode,
            json_schema=source.json_schema,
            tools=tuple(source.tools or ()),
            persona=persona,
        )


def _said(message: Message, *, room: bool, content: str | None = None) -> str:
    text = message.content if content is None else content
    if room and message.role == Message.Role.USER:
        return f"{selectors.speaker_name(message.author)}: {text}"
    return text


def _begin_reply(
    *,
    conversation: Conversation,
    actor: Actor,
    user_message: Message,
    added: bool,
    truncate_from: int | None = None,
    persona: Persona | None = None,
    asked: str | None = None,
    user_versions: selectors.Versions | None = None,
    images: list[Attachment] | None = None,
) -> PendingReply:
    """``asked``: the text the model answers, when it differs from the stored message (a room
    message without the @tag that called the persona). The reply follows ``user_message`` on
    the current branch; ``user_versions``, when that message is a new version of its turn.
    ``images``: the message's attachments (None: look them up, as a regenerate does)."""
    from .attachments import image_parts

    voice = Voice.of(conversation, persona)
    model = voice.model
    room = conversation.is_room
    project = conversation.project
    spec = spec_for(project=project, model=model)
    abilities = provider_selectors.model_abilities(project, model)
    vision = abilities is not None and abilities.vision
    if images is None:
        images = list(user_message.attachments.all())
    if images and not vision:
        raise ServiceError(
            _("%(model)s cannot read images: pick a model that can, or send the text alone.")
            % {"model": model},
            code="model_lacks_vision",
            param="attachments",
        )
    toolset = None
    if voice.tools and abilities is not None and abilities.tools:
        from .tools.registry import toolset_for

        toolset = toolset_for(project=project, keys=list(voice.tools))
    # History is trimmed to leave the reply this much room: its cap if the conversation sets
    # one, else a modest default (the reply may still use all the context that is left).
    reply_room = voice.max_tokens or settings.CHAT_DEFAULT_REPLY_TOKENS
    history = selectors.history_for_prompt(conversation, before=user_message.pk)
    if vision:  # earlier images go with their messages: a question may be about one
        history = history.prefetch_related("attachments")

    def content_of(message: Message, text: str) -> str | list[dict[str, Any]]:
        attached = list(message.attachments.all()) if vision else []
        if not attached:
            return text
        return [{"type": "text", "text": text}, *image_parts(attached)]

    latest_text = _said(user_message, room=room, content=asked)
    try:
        prompt = build_prompt(
            system_prompt=voice.system_prompt,
            latest={
                "role": "user",
                "content": (
                    [{"type": "text", "text": latest_text}, *image_parts(images)]
                    if images
                    else latest_text
                ),
            },
            history_newest_first=(
                (m.role, content_of(m, _said(m, room=room)))
                for m in history.iterator(chunk_size=100)
            ),
            history_count=history.count(),
            context_window=spec.context_window,
            reply_tokens=reply_room,
            summary=conversation.summary,
        )
    except PromptTooLong as error:
        raise ServiceError(
            _(
                "Your message needs about %(needed)s tokens, but %(model)s leaves room for "
                "%(available)s once the reply is accounted for. Shorten it, or lower max tokens "
                "in the settings."
            )
            % {
                "needed": f"{error.needed:,}",
                "model": model,
                "available": f"{error.available:,}",
            },
            code="context_length_exceeded",
        ) from None

    # Rate limits and budgets: the worst case is set aside before anything is sent, and the
    # reply is capped at what was held; a refusal rolls this whole turn back and the client
    # keeps the text it typed.
    call = metering.metered_reserve(
        context=CallContext(
            organization_id=project.organization_id,
            project_id=conversation.project_id,
            user_id=actor.user_id,
            model=model,
            source=UsageRecord.Source.API if actor.api_key else UsageRecord.Source.CHAT,
            conversation_id=conversation.pk,
            connection_id=spec.connection_id,
            api_key_id=actor.api_key_id,
        ),
        request=ChatRequest(
            model=model,
            messages=prompt.messages,
            temperature=voice.temperature,
            top_p=voice.top_p,
            presence_penalty=voice.presence_penalty,
            frequency_penalty=voice.frequency_penalty,
            stop=voice.stop,
            seed=voice.seed,
            response_format=voice.response_format,
            tools=toolset.openai_tools() if toolset is not None else None,
            user=actor.tag,
        ),
        spec=spec,
        asked=voice.max_tokens,
    )
    assistant = Message.objects.create(
        conversation=conversation,
        parent=user_message,
        role=Message.Role.ASSISTANT,
        state=Message.State.STREAMING,
        author=actor.user,  # who called for it, and pays
        persona=persona,
        model=model,
        omitted_messages=prompt.omitted,
        prompt_tokens=call.prompt_tokens,  # our estimate until the upstream says
        request_id=call.reservation.request_id,
    )
    conversation.last_message_at = timezone.now()
    conversation.save(update_fields=["last_message_at", "updated_at"])
    # Only a reply that joins earlier ones (a regenerate) has versions to show.
    versions = (
        selectors.versions_of([assistant]).get(assistant.pk)
        if truncate_from is not None and not added
        else None
    )
    return PendingReply(
        conversation_id=conversation.pk,
        project_id=conversation.project_id,
        user_id=actor.user_id,
        assistant_message_id=assistant.pk,
        user_message=serialize_message(user_message, versions=user_versions, attachments=images)
        if added
        else None,
        call=call,
        omitted=prompt.omitted,
        truncate_from=truncate_from,
        persona=None if persona is None else persona_card(persona),
        caller=None
        if actor.user is None
        else {"id": actor.user.pk, "name": selectors.speaker_name(actor.user)},
        versions=None if versions is None else versions.as_dict(),
        toolset=toolset,
        asked=voice.max_tokens,
        moderation=_reply_moderation(conversation.project_id),
    )


def replies_held(project: Project) -> bool:
    """Whether the project checks replies before they are shown (they stream unseen)."""
    return _reply_moderation(project.pk) is not None


def _reply_moderation(project_id: int) -> ModerationConfig | None:
    from .moderation import config_for

    config = config_for(project_id)
    return config if config.enabled and config.check_replies else None


def branch_leaf(conversation: Conversation) -> Message | None:
    """The last message of the conversation's current branch: what a new message follows."""
    return conversation.messages.on_branch().order_by("-id").first()


def _on_branch(conversation: Conversation, message_id: object, *, role: str) -> Message | None:
    if not isinstance(message_id, int) or isinstance(message_id, bool):
        return None
    return conversation.messages.on_branch().filter(role=role, pk=message_id).first()


def _leave_branch(conversation: Conversation, *, replaced: Message) -> None:
    """``replaced`` and every message after it leave the current branch (they stay saved, a
    version behind); the new version added next is the selected one of its turn."""
    conversation.messages.filter(parent_id=replaced.parent_id).update(selected=False)
    # updated_at moves with it: a summary being written from these messages meanwhile sees
    # that they changed and is not kept (``summaries._store``).
    conversation.messages.on_branch().filter(pk__gte=replaced.pk).update(
        on_path=False, updated_at=timezone.now()
    )
    summaries.summary_forget(conversation=conversation, from_id=replaced.pk)


@transaction.atomic
def reply_start(
    *, actor: Actor, conversation_id: int, content: object, attachments: object = None
) -> PendingReply:
    """A new user message, with the images uploaded for it (``attachments``: their ids), and
    the assistant reply to it."""
    from .attachments import attachments_claim, attachments_link

    # An image may go alone: the text is then empty.
    images_only = bool(attachments) and (content == "" or content is None)
    content = "" if images_only else check_content(content)
    conversation = _resolve(actor=actor, conversation_id=conversation_id)
    _check_not_room(conversation)  # a room answers only @tags: rooms.room_post
    _check_not_busy(conversation)
    images = (
        attachments_claim(actor=actor, conversation=conversation, ids=attachments)
        if attachments
        else []
    )
    user_message = Message.objects.create(
        conversation=conversation,
        parent=branch_leaf(conversation),
        role=Message.Role.USER,
        content=content,
        author=actor.user,
    )
    if images:
        attachments_link(attachments=images, message=user_message)
    return _begin_reply(
        conversation=conversation,
        actor=actor,
        user_message=user_message,
        added=True,
        images=images,
    )


@transaction.atomic
def reply_regenerate(
    *, actor: Actor, conversation_id: int, message_id: object = None
) -> PendingReply:
    """Answer a message again: a new version of the reply ``message_id`` (any reply on the
    current branch; by default the reply to its last message). The old version, and the turns
    that followed it, stay on their branch: the page browses them version by version."""
    conversation = _resolve(actor=actor, conversation_id=conversation_id)
    _check_not_room(conversation)
    _check_not_busy(conversation)
    if message_id is None:
        asked = (
            conversation.messages.on_branch().filter(role=Message.Role.USER).order_by("-id").first()
        )
        if asked is None:
            raise ServiceError(
                _("There is nothing to regenerate yet."), code="nothing_to_regenerate"
            )
        replaced = conversation.messages.on_branch().filter(parent=asked).first()
    else:
        replaced = _on_branch(conversation, message_id, role=Message.Role.ASSISTANT)
        asked = replaced.parent if replaced is not None else None
        if asked is None or asked.role != Message.Role.USER:
            raise ServiceError(
                _("Pick a reply on this conversation's current branch to regenerate."),
                code="invalid_message",
            )
    if replaced is not None:
        _leave_branch(conversation, replaced=replaced)
    return _begin_reply(
        conversation=conversation,
        actor=actor,
        user_message=asked,
        added=False,
        truncate_from=None if replaced is None else replaced.pk,
    )


@transaction.atomic
def reply_edit(
    *, actor: Actor, conversation_id: int, message_id: object, content: object
) -> PendingReply:
    """A new version of an earlier message of the user's, answered again. The old version and
    the turns after it stay on their branch, browsable version by version."""
    content = check_content(content)
    conversation = _resolve(actor=actor, conversation_id=conversation_id)
    _check_not_room(conversation)
    _check_not_busy(conversation)
    original = _on_branch(conversation, message_id, role=Message.Role.USER)
    if original is None:
        raise ServiceError(_("You can only edit your own messages."), code="invalid_message")
    _leave_branch(conversation, replaced=original)
    version = Message.objects.create(
        conversation=conversation,
        parent_id=original.parent_id,
        role=Message.Role.USER,
        content=content,
        author=actor.user,
    )
    return _begin_reply(
        conversation=conversation,
        actor=actor,
        user_message=version,
        added=True,
        truncate_from=original.pk,
        user_versions=selectors.versions_of([version]).get(version.pk),
        images=[],  # an edit is text: the images stay with the version they came with
    )


@dataclass(frozen=True)
class BranchChange:
    """What selecting a version changed: the message now shown, and the first message of the
    transcript that reads differently (None: that version was shown already)."""

    message_id: int
    changed_from: int | None


@transaction.atomic
def message_select(*, actor: Actor, conversation_id: int, message_id: object) -> BranchChange:
    """Show another version of a turn: the branch goes through ``message_id`` and on through
    the versions last selected after it. Later turns, and the prompts of later replies,
    follow that branch."""
    conversation = _resolve(actor=actor, conversation_id=conversation_id)
    chosen = (
        conversation.messages.filter(pk=message_id).only("id", "on_path").first()
        if isinstance(message_id, int) and not isinstance(message_id, bool)
        else None
    )
    if chosen is None:
        raise ServiceError(_("No such message in this conversation."), code="not_found")
    if chosen.on_path:
        return BranchChange(message_id=chosen.pk, changed_from=None)
    _check_not_busy(conversation)  # the reply being written would leave the page mid-stream

    rows = conversation.messages.values_list("id", "parent_id", "selected", "on_path")
    parent_of: dict[int, int | None] = {}
    children: defaultdict[int | None, list[int]] = defaultdict(list)
    selected: set[int] = set()
    was_on: set[int] = set()
    for pk, parent_id, is_selected, on_path in rows.order_by("id"):
        parent_of[pk] = parent_id
        children[parent_id].append(pk)
        if is_selected:
            selected.add(pk)
        if on_path:
            was_on.add(pk)
    now_selected = set(selected)
    node: int | None = chosen.pk
    while node is not None:  # the chosen version, and each message before it, in its turn
        siblings = children[parent_of[node]]
        now_selected.difference_update(siblings)
        now_selected.add(node)
        node = parent_of[node]
    now_on: set[int] = set()
    turn = children[None]
    while turn:
        # The version selected in each turn (the newest, should none be).
        pick = next((pk for pk in turn if pk in now_selected), turn[-1])
        now_on.add(pick)
        turn = children[pick]

    messages = conversation.messages
    if gained := now_selected - selected:
        messages.filter(pk__in=gained).update(selected=True)
    if lost := selected - now_selected:
        messages.filter(pk__in=lost).update(selected=False)
    moment = timezone.now()
    if joined := now_on - was_on:
        messages.filter(pk__in=joined).update(on_path=True, updated_at=moment)
    if left := was_on - now_on:
        messages.filter(pk__in=left).update(on_path=False, updated_at=moment)
    changed_from = min(joined | left)
    summaries.summary_forget(conversation=conversation, from_id=changed_from)
    return BranchChange(message_id=chosen.pk, changed_from=changed_from)


@dataclass(frozen=True)
class ToolRun:
    """One tool call of a round, as it ran."""

    call_id: str
    name: str
    arguments: str
    result: str
    is_error: bool
    duration_ms: int


def reply_round_settle(*, pending: PendingReply, call: MeteredCall, outcome: Outcome) -> None:
    """A round that asked for tools is over: its call is charged now (the tools may take a
    while, and the process may die meanwhile), its row tied to the reply."""
    metering.settle(
        call=call, outcome=outcome, latency_ms=None, message_id=pending.assistant_message_id
    )


@transaction.atomic
def reply_tools_record(
    *, pending: PendingReply, round_number: int, runs: list[ToolRun], content: str
) -> list[ToolCall]:
    """Keep a round's tool calls with their results, and the reply's text so far."""
    message_id = pending.assistant_message_id
    Message.objects.filter(pk=message_id, state=Message.State.STREAMING).update(
        content=storable(content), tool_rounds=round_number, updated_at=timezone.now()
    )
    return ToolCall.objects.bulk_create(
        ToolCall(
            message_id=message_id,
            round=round_number,
            call_id=run.call_id[:100],
            name=run.name[:128],
            arguments=storable(run.arguments),
            result=storable(run.result),
            is_error=run.is_error,
            duration_ms=run.duration_ms,
        )
        for run in runs
    )


@transaction.atomic
def reply_next_round(
    *, pending: PendingReply, messages: list[dict[str, Any]], previous: MeteredCall
) -> MeteredCall:
    """The next upstream call of a reply that called tools: the history with the calls and
    their results, reserved and capped like the first (a budget may refuse it)."""
    request = replace(previous.request, messages=messages, max_tokens=None)
    request = replace(request, max_completion_tokens=None)
    call = metering.metered_reserve(
        context=previous.context, request=request, spec=previous.spec, asked=pending.asked
    )
    # A process that dies now leaves this call for the sweep to settle, by this id.
    Message.objects.filter(pk=pending.assistant_message_id).update(
        request_id=call.reservation.request_id, updated_at=timezone.now()
    )
    return call


def reply_flush(*, message_id: int, content: str) -> None:
    """Save the text so far of a reply still streaming (a reload shows it; a crash keeps it)."""
    Message.objects.filter(pk=message_id, state=Message.State.STREAMING).update(
        content=storable(content), updated_at=timezone.now()
    )


@transaction.atomic
def reply_finish(
    *,
    pending: PendingReply,
    outcome: Outcome,
    content: str,
    state: str,
    error_code: str = "",
    error_message: str = "",
    latency_ms: int | None = None,
    first_token_ms: int | None = None,
    call: MeteredCall | None = None,
) -> Message | None:
    """Save the reply as it ended and settle its (last) call, in one transaction: the ledger
    row and the saved reply never disagree. Returns None when the conversation was deleted
    meanwhile. Text a database cannot store is replaced, never dropped (``core.text``).
    ``call``: the reply's last upstream call, when tool rounds made more than one."""
    from .structured import check_reply

    call = call or pending.call
    message = (
        Message.objects.select_for_update()
        .select_related("conversation")
        .filter(pk=pending.assistant_message_id)
        .first()
    )
    outcome.status = LEDGER_STATUS[state]
    record = metering.settle(
        call=call,
        outcome=outcome,
        latency_ms=latency_ms,
        message_id=message.pk if message else None,
        conversation_deleted=message is None,
    )
    if message is None:
        return None
    message.content = storable(content)
    message.state = state
    message.finish_reason = outcome.finish_reason or ""
    message.error_code = error_code
    message.error_message = error_message
    message.prompt_tokens = record.prompt_tokens
    message.completion_tokens = record.completion_tokens
    message.cached_tokens = record.cached_tokens
    message.usage_estimated = record.estimated
    if message.tool_rounds:  # every round's call: the reply's tokens are their sum
        totals = UsageRecord.objects.filter(message_id=message.pk).aggregate(
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            cached=Sum("cached_tokens"),
            estimated=Max(Cast("estimated", IntegerField())),
        )
        message.prompt_tokens = totals["prompt"] or 0
        message.completion_tokens = totals["completion"] or 0
        message.cached_tokens = totals["cached"] or 0
        message.usage_estimated = bool(totals["estimated"])
    response_format = pending.call.request.response_format
    if response_format and (content or state == Message.State.COMPLETE):
        message.json_valid, message.json_error = check_reply(content, response_format)
    message.latency_ms = latency_ms
    message.first_token_ms = first_token_ms
    message.save()
    _set_cost(message, record)
    message.conversation_cost = selectors.conversation_cost(message.conversation)

    conversation = message.conversation
    conversation.last_message_at = timezone.now()
    conversation.save(update_fields=["last_message_at", "updated_at"])
    # Rooms are named by people (an untitled one stays "New room"): a title call would bill its
    # maker for a reply someone else asked for.
    if state == Message.State.COMPLETE and not conversation.title and not conversation.is_room:
        from .tasks import title_conversation

        transaction.on_commit(partial(title_conversation.delay, conversation.pk))
    if state == Message.State.COMPLETE:
        summaries.summary_queue_if_due(
            conversation=conversation, pending=pending, completion_tokens=record.completion_tokens
        )
    return message


@transaction.atomic
def reply_close_orphan(*, actor: Actor, conversation_id: int) -> Message | None:
    """Close a reply that a stop could not reach: still streaming, idle past the grace period,
    so no live task is writing it. What was flushed is kept, marked stopped."""
    conversation = _resolve(actor=actor, conversation_id=conversation_id)
    idle_since = timezone.now() - timedelta(seconds=settings.CHAT_ORPHAN_GRACE)
    message = (
        conversation.messages.select_for_update()
        .filter(state=Message.State.STREAMING, updated_at__lte=idle_since)
        .order_by("-id")
        .first()
    )
    if message is None:
        return None
    message.state = Message.State.STOPPED
    message.finish_reason = "stop_requested"
    message.error_code = "interrupted"
    message.error_message = "The server that was writing this reply had stopped."
    _settle_orphan(message, conversation, status=UsageRecord.Status.STOPPED)
    message.save()
    return message


def _settle_orphan(message: Message, conversation: Conversation, *, status: str) -> None:
    """Meter a reply whose process died: what was saved of it, counted by the one rule."""
    message.completion_tokens = count_text_tokens(message.content) if message.content else 0
    message.usage_estimated = True
    if message.request_id is None:
        return
    record = metering.settle_orphan(
        request_id=message.request_id,
        context=CallContext(
            organization_id=conversation.project.organization_id,
            project_id=conversation.project_id,
            # The person who called for the reply pays (in a room, not always the owner).
            user_id=message.author_id or conversation.owner_id,
            model=message.model,
            source=UsageRecord.Source.CHAT if conversation.owner_id else UsageRecord.Source.API,
            conversation_id=conversation.pk,
            api_key_id=conversation.api_key_id,
        ),
        status=status,
        prompt_tokens=message.prompt_tokens or 0,
        generated=message.content,
        message_id=message.pk,
    )
    message.completion_tokens = record.completion_tokens
    _set_cost(message, record)


def _set_cost(message: Message, record: UsageRecord) -> None:
    # A call of a model that runs unpriced has no cost to show: "unpriced", not $0.
    message.unpriced = record.price_id is None
    message.cost = None if message.unpriced else record.cost


@transaction.atomic
def reply_close_failed(*, message_id: int) -> Message | None:
    """Close a reply whose save failed (``reply_finish`` raised): the text flushed so far is
    kept, the reply marked as broken off, and its call settled from it, as for a reply whose
    process died."""
    message = (
        Message.objects.select_for_update()
        .select_related("conversation__project")
        .filter(pk=message_id)
        .first()
    )
    if message is None or message.state != Message.State.STREAMING:
        return message
    message.state = Message.State.INCOMPLETE if message.content else Message.State.ERROR
    message.error_code = "internal_error"
    message.error_message = ServiceError(code="internal_error").message
    _settle_orphan(message, message.conversation, status=LEDGER_STATUS[message.state])
    message.save()
    return message


@transaction.atomic
def streams_expire_stale(*, conversation: Conversation | None = None) -> int:
    """Close replies whose streaming process died (no write for a while) as incomplete, and
    meter them: the call was made, so the ledger gets its row."""
    cutoff = timezone.now() - timedelta(seconds=settings.CHAT_STALE_STREAM_SECONDS)
    qs = Message.objects.select_for_update().filter(
        state=Message.State.STREAMING, updated_at__lt=cutoff
    )
    if conversation is not None:
        qs = qs.filter(conversation=conversation)
    stale = list(qs.select_related("conversation__project"))
    for message in stale:
        message.state = Message.State.INCOMPLETE
        message.error_code = "interrupted"
        message.error_message = "The server stopped while this reply was being written."
        _settle_orphan(message, message.conversation, status=UsageRecord.Status.INCOMPLETE)
        message.save()
    return len(stale)


def streams_sweep_stale() -> int:
    """Close the stale replies of every conversation (Celery beat runs this; opening a
    conversation closes its own): a reply whose process was killed mid-stream ends incomplete
    with the text flushed so far, billed for it, its hold freed, even if nobody opens it again.

    One transaction per conversation, so the sweep never locks the whole table and one that
    fails does not hold back the others: the failures are raised together at the end (the task
    logs them) and the next sweep tries them again."""
    cutoff = timezone.now() - timedelta(seconds=settings.CHAT_STALE_STREAM_SECONDS)
    stale_in = (
        Message.objects.filter(state=Message.State.STREAMING, updated_at__lt=cutoff)
        .order_by()
        .values_list("conversation_id", flat=True)
        .distinct()
    )
    closed, failures = 0, []
    for conversation in Conversation.objects.filter(pk__in=list(stale_in)).order_by("pk"):
        try:
            closed += streams_expire_stale(conversation=conversation)
        except Exception as failure:
            failures.append(failure)
    if failures:
        raise ExceptionGroup(f"{len(failures)} of the stale conversations failed", failures)
    return closed


# --- titles ----------------------------------------------------------------------------------


def fallback_title(text: str) -> str:
    """The first words of the first message, cut at a word boundary."""
    words = " ".join(text.split())
    if len(words) <= TITLE_MAX_CHARS:
        return words
    return words[:TITLE_MAX_CHARS].rsplit(" ", 1)[0] + "…"


def clean_title(raw: str) -> str:
    title = " ".join(raw.strip().strip("\"'“”").split())
    return title[:TITLE_MAX_CHARS].rstrip(" .")


@transaction.atomic
def conversation_set_title(*, conversation_id: int, title: str) -> bool:
    """Set the title only if nobody named the conversation in the meantime; whether it did."""
    return bool(Conversation.objects.filter(pk=conversation_id, title="").update(title=title))
