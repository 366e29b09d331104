"""Personas: a project's named system prompts, each with its model and sampling settings,
called in a room by its @tag or picked when a conversation starts.

Every project starts with the shipped presets (``PRESETS``, seeded by ``personas_seed`` when a
project is made); managers change, disable or add to them. Tags are compared case-folded after
NFKC normalization, so ``@ChatBot`` and ``@chatbot`` are one tag, and Unicode tags such as
``@요약`` work as typed.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.http import Http404
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from accounts.models import Membership, Project, User
from accounts.signals import created, diff, record_change, removed, values_of
from core.errors import ServiceError
from providers import selectors as provider_selectors

from .models import Persona
from .services import check_model_allowed
from .structured import check_json_schema

TAG_MAX = 32
# A tag is letters, digits, "_" and "-" in any script ("요약", "traduction", "py3").
_TAG_RE = re.compile(r"^[\w-]{1,32}$")
# A mention is an @tag at the very start of a message, followed by a space or the end.
_MENTION_RE = re.compile(r"^\s*@([\w-]{1,32})(?=\s|$)")
_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
_MAX_LENGTHS = {"name": 80, "description": 300, "model": 200, "avatar": 8}  # as in the model


def normalize_tag(raw: object) -> str:
    """The stored form of a tag: without the "@", NFKC-normalized and case-folded."""
    if not isinstance(raw, str):
        raise ServiceError(_("A tag is text, such as chatbot or 요약."), param="tag")
    tag = unicodedata.normalize("NFKC", raw.strip()).removeprefix("@").casefold()
    if not _TAG_RE.match(tag):
        raise ServiceError(
            _("A tag is 1 to %(max)s letters, digits, '_' or '-' (in any script), without spaces.")
            % {"max": TAG_MAX},
            param="tag",
        )
    return tag


# --- shipped presets ------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingPreset:
    key: str
    label: str
    temperature: float
    top_p: float
    help: str


SAMPLING_PRESETS: dict[str, SamplingPreset] = {
    p.key: p
    for p in (
        # Marked for translation, said in the page's language where they are shown.
        SamplingPreset(
            "precise", gettext_noop("Precise"), 0.1, 0.9, gettext_noop("Facts, extraction, JSON.")
        ),
        SamplingPreset(
            "balanced", gettext_noop("Balanced"), 0.7, 1.0, gettext_noop("Everyday chat.")
        ),
        SamplingPreset(
            "creative",
            gettext_noop("Creative"),
            1.1,
            1.0,
            gettext_noop("Stories, ideas, characters."),
        ),
        SamplingPreset(
            "summary", gettext_noop("Summary"), 0.3, 0.9, gettext_noop("Short, faithful summaries.")
        ),
        SamplingPreset("code", gettext_noop("Code"), 0.2, 0.95, gettext_noop("Code and reviews.")),
    )
}


@dataclass(frozen=True)
class PersonaPreset:
    key: str
    tag: str
    name: str
    avatar: str
    color: str
    description: str
    system_prompt: str
    sampling: str
    max_tokens: int | None = None
    json_mode: bool = False


PRESETS: tuple[PersonaPreset, ...] = (
    PersonaPreset(
        "chatbot",
        "chatbot",
        "Chatbot",
        "🤖",
        "#4f46e5",
        "A friendly helper for the whole room.",
        "You are a friendly, concise assistant in a team chat. Answer in the language you are "
        "asked in. Use what people said earlier in the conversation when it helps.",
        "balanced",
    ),
    PersonaPreset(
        "summary",
        "summary",
        "Summarizer",
        "📝",
        "#0d9488",
        "Sums up the conversation so far.",
        "Summarize the conversation so far for someone who missed it: who said what, what was "
        "decided, and what is still open. Keep names; never invent anything. At most five "
        "short bullet points.",
        "summary",
        400,
    ),
    PersonaPreset(
        "summary_ko",
        "요약",
        "요약 봇",
        "🧾",
        "#0f766e",
        "대화를 한국어 두 줄로 요약합니다.",
        "지금까지의 대화를 한국어로 요약하세요. 글머리표 두 줄 이내로, 누가 무엇을 말했는지와 "
        "결정된 내용을 담고, 없는 내용은 만들지 마세요.",
        "summary",
        300,
    ),
    PersonaPreset(
        "translate",
        "translate",
        "Technical translator",
        "🌐",
        "#2563eb",
        "Translates between Korean and English, keeping technical terms exact.",
        "You are a technical translator. Translate the user's text: Korean into English, any "
        "other language into Korean. Keep code, identifiers and product names unchanged. Reply "
        "with the translation only.",
        "precise",
    ),
    PersonaPreset(
        "translate_ko",
        "번역",
        "번역 봇",
        "🈯",
        "#1d4ed8",
        "한국어와 영어 사이를 번역합니다.",
        "당신은 기술 번역가입니다. 한국어는 영어로, 다른 언어는 한국어로 번역하세요. 코드, "
        "식별자, 제품 이름은 그대로 두고 번역문만 답하세요.",
        "precise",
    ),
    PersonaPreset(
        "counsel",
        "counsel",
        "Listener",
        "🫶",
        "#db2777",
        "A warm, careful listener (not a therapist).",
        "You are a warm, patient listener. Reflect what the person feels, ask one gentle "
        "question at a time, and never diagnose. If someone may be in danger, urge them to "
        "contact local emergency services or a crisis line.",
        "balanced",
    ),
    PersonaPreset(
        "pirate",
        "pirate",
        "Pirate coder",
        "🏴\u200d☠️",
        "#92400e",
        "A coding assistant who talks like a pirate.",
        "Ye be a seasoned pirate who is also an excellent programmer. Answer coding questions "
        "correctly and completely, but speak like a pirate. Code blocks stay plain code.",
        "creative",
    ),
    PersonaPreset(
        "python",
        "python",
        "Python expert",
        "🐍",
        "#15803d",
        "Idiomatic, tested Python.",
        "You are a senior Python engineer. Give idiomatic, typed Python 3 with a short "
        "explanation; mention pitfalls and how to test the code.",
        "code",
    ),
    PersonaPreset(
        "review",
        "review",
        "Code reviewer",
        "🔍",
        "#7c3aed",
        "Reviews code for bugs, security and clarity.",
        "You are a careful code reviewer. List concrete problems first (bugs, security, "
        "performance), then readability, each with a suggested fix. Say clearly when the code "
        "is fine.",
        "code",
    ),
    PersonaPreset(
        "tutor",
        "tutor",
        "Patient tutor",
        "🎓",
        "#ca8a04",
        "Explains step by step and checks understanding.",
        "You are a patient tutor. Explain step by step with a small example, then ask one "
        "short question to check understanding. Adapt to the learner's level.",
        "balanced",
    ),
    PersonaPreset(
        "support",
        "support",
        "Customer support",
        "🎧",
        "#0891b2",
        "Polite, precise customer support.",
        "You are a polite customer-support agent. Acknowledge the problem, ask for what you "
        "need to solve it, give numbered steps, and never promise what you cannot check.",
        "precise",
    ),
    PersonaPreset(
        "json",
        "json",
        "JSON assistant",
        "🧩",
        "#475569",
        "Answers with one JSON object.",
        "You answer only with one valid JSON object and nothing else. Choose clear, "
        "snake_case keys.",
        "precise",
        json_mode=True,
    ),
    PersonaPreset(
        "extract",
        "extract",
        "Extractor",
        "🗂️",
        "#334155",
        "Pulls names, dates and amounts out of text as JSON.",
        "Extract structured data from the user's text as one JSON object with the keys "
        '"people", "dates", "amounts" and "places" (each a list of strings). Example: '
        '"Minseo pays 30,000 won on 3 May in Seoul" -> {"people": ["Minseo"], "dates": '
        '["3 May"], "amounts": ["30,000 won"], "places": ["Seoul"]}.',
        "precise",
        json_mode=True,
    ),
)


def _preset_fields(preset: PersonaPreset) -> dict[str, Any]:
    sampling = SAMPLING_PRESETS[preset.sampling]
    return {
        "name": preset.name,
        "description": preset.description,
        "system_prompt": preset.system_prompt,
        "avatar": preset.avatar,
        "color": preset.color,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": preset.max_tokens,
        "json_mode": preset.json_mode,
        "preset": preset.key,
    }


def personas_seed(project: Project) -> int:
    """Give a project the shipped personas it does not have yet (a tag it already uses is left
    alone). Returns how many were added."""
    taken = set(Persona.objects.for_project(project).values_list("tag", flat=True))
    fresh = [
        Persona(project=project, tag=preset.tag, **_preset_fields(preset))
        for preset in PRESETS
        if preset.tag not in taken
    ]
    Persona.objects.bulk_create(fresh, ignore_conflicts=True)
    return len(fresh)


# --- reading --------------------------------------------------------------------------------


def parse_mention(*, project: Project, text: str) -> tuple[Persona | None, str | None]:
    """The persona a message calls with its leading @tag, and the tag as typed (normalized).
    ``(None, tag)`` when the tag names no persona of the project; ``(None, None)`` when the
    message does not start with a tag (an e-mail address or "@ 3pm" is not one)."""
    match = _MENTION_RE.match(text)
    if match is None:
        return None, None
    try:
        tag = normalize_tag(match.group(1))
    except ServiceError:
        return None, None
    persona = Persona.objects.for_project(project).filter(tag=tag).first()
    return persona, tag


def get_persona_or_404(*, project: Project, persona_id: object) -> Persona:
    """A persona of this project; any other id (another project's too) is a 404."""
    try:
        return Persona.objects.for_project(project).get(pk=int(str(persona_id)))
    except (Persona.DoesNotExist, ValueError):
        raise Http404("No such persona.") from None


def personas_for(project: Project, *, enabled_only: bool = False) -> list[Persona]:
    qs = Persona.objects.for_project(project)
    if enabled_only:
        qs = qs.enabled()
    return list(qs.order_by("tag"))


def sampling_preset_of(persona: Persona) -> SamplingPreset | None:
    """The sampling preset a persona's temperature and top p match, if any."""
    for preset in SAMPLING_PRESETS.values():
        if (persona.temperature, persona.top_p) == (preset.temperature, preset.top_p):
            return preset
    return None


# --- writing --------------------------------------------------------------------------------

# What a manager may set, over the page or REST.
EDITABLE = (
    "name",
    "tag",
    "description",
    "system_prompt",
    "model",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "max_tokens",
    "json_mode",
    "json_schema",
    "tools",
    "avatar",
    "color",
    "enabled",
)

_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}


def _clean(project: Project, changes: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(changes) - set(EDITABLE) - {"sampling"})
    if unknown:
        raise ServiceError(
            _("Unknown field: %(fields)s.") % {"fields": ", ".join(unknown)}, param=unknown[0]
        )
    clean: dict[str, Any] = {}
    sampling = changes.get("sampling")
    if sampling not in (None, ""):
        preset = SAMPLING_PRESETS.get(str(sampling))
        if preset is None:
            choices = ", ".join(SAMPLING_PRESETS)
            raise ServiceError(
                _("Sampling presets are: %(choices)s.") % {"choices": choices}, param="sampling"
            )
        clean["temperature"], clean["top_p"] = preset.temperature, preset.top_p
    for field, value in changes.items():
        if field == "sampling":
            continue
        if field == "tag":
            clean["tag"] = normalize_tag(value)
        elif field in ("name", "description", "system_prompt", "model", "avatar"):
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise ServiceError(_("%(field)s is text.") % {"field": field}, param=field)
            limit = _MAX_LENGTHS.get(field)
            value = value.strip() if field != "system_prompt" else value
            if limit and len(value) > limit:
                raise ServiceError(
                    _("%(field)s is at most %(limit)s characters.")
                    % {"field": field, "limit": limit},
                    param=field,
                )
            if field == "name" and not value:
                raise ServiceError(_("A persona needs a name."), param="name")
            clean[field] = value
        elif field == "color":
            if not isinstance(value, str) or not _COLOR_RE.match(value):
                raise ServiceError(_("color is #rrggbb, such as #4f46e5."), param="color")
            clean[field] = value.lower()
        elif field in ("json_mode", "enabled"):
            if not isinstance(value, bool):
                raise ServiceError(_("%(field)s is true or false.") % {"field": field}, param=field)
            clean[field] = value
        elif field == "json_schema":
            clean[field] = check_json_schema(value)
        elif field == "tools":
            from .tools.registry import check_tools

            clean[field] = check_tools(project=project, value=value) if value else []
        elif field == "max_tokens":
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ServiceError(_("max_tokens is a whole number of at least 1."), param=field)
            clean[field] = value
        else:  # a sampling number
            if value is not None:
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise ServiceError(_("%(field)s is a number.") % {"field": field}, param=field)
                low, high = _RANGES[field]
                if not low <= value <= high:
                    raise ServiceError(
                        _("%(field)s is between %(low)s and %(high)s.")
                        % {"field": field, "low": low, "high": high},
                        param=field,
                    )
                value = float(value)
            clean[field] = value
    return clean


def _check_model(project: Project, model: str) -> None:
    if model:  # empty: the project's default model, whichever it is when the persona answers
        check_model_allowed(project=project, model=model)


def _check_abilities(project: Project, persona: Persona) -> None:
    """A JSON schema or tools need a model that can use them, as a conversation's do. On the
    project's default model nothing is refused: which model that is can change, and a chat
    started with the persona takes only what its model can (``services._take_persona``)."""
    if not persona.model:
        return
    abilities = provider_selectors.model_abilities(project, persona.model)
    if abilities is None:  # a model the project dropped: _check_model refuses it when it is set
        return
    if persona.json_schema and not abilities.json:
        raise ServiceError(
            _("%(model)s cannot answer in JSON: pick a model that can.") % {"model": persona.model},
            code="invalid_json_schema",
            param="json_schema",
        )
    if persona.tools and not abilities.tools:
        raise ServiceError(
            _("%(model)s cannot call tools: pick a model that can.") % {"model": persona.model},
            code="tools_not_supported",
            param="tools",
        )


def _save(persona: Persona) -> Persona:
    try:
        with transaction.atomic():
            persona.save()
    except IntegrityError:
        raise ServiceError(
            f"This project already has a persona called @{persona.tag}.",
            code="conflict",
            param="tag",
        ) from None
    return persona


def persona_create(
    *, project: Project, changes: dict[str, Any], actor: Membership | User | None = None
) -> Persona:
    """``actor`` (for the audit trail): None, the person the current request is from."""
    clean = _clean(project, changes)
    if "name" not in clean or "tag" not in clean:
        raise ServiceError(
            "A persona needs a name and a tag.", param="name" if "name" not in clean else "tag"
        )
    _check_model(project, clean.get("model", ""))
    persona = Persona(project=project, **clean)
    _check_abilities(project, persona)
    with transaction.atomic():  # the persona and its audit event, or neither
        _save(persona)
        record_change(
            action="persona.created",
            organization=project.organization,
            actor=actor,
            project=project,
            target=persona,
            changes=created(values_of(persona, EDITABLE)),
        )
    return persona


def persona_update(
    *, persona: Persona, changes: dict[str, Any], actor: Membership | User | None = None
) -> Persona:
    clean = _clean(persona.project, changes)
    before = values_of(persona, EDITABLE)
    if "model" in clean:
        _check_model(persona.project, clean["model"])
    for field, value in clean.items():
        setattr(persona, field, value)
    if {"model", "json_schema", "tools"} & set(clean):
        _check_abilities(persona.project, persona)
    with transaction.atomic():
        _save(persona)
        record_change(
            action="persona.updated",
            organization=persona.project.organization,
            actor=actor,
            project=persona.project,
            target=persona,
            changes=diff(before, values_of(persona, EDITABLE)),
        )
    return persona


@transaction.atomic
def persona_delete(*, persona: Persona, actor: Membership | User | None = None) -> None:
    record_change(
        action="persona.deleted",
        organization=persona.project.organization,
        actor=actor,
        project=persona.project,
        target=persona,
        changes=removed(values_of(persona, EDITABLE)),
    )
    # Replies keep their text; their persona link is cleared (SET_NULL).
    persona.delete()
