"""The conversation page's forms: settings and rename."""

import json
from typing import Any, cast

from django import forms
from django.db.models import QuerySet
from django.utils.text import format_lazy
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.models import Project
from core.errors import ServiceError
from providers import selectors as provider_selectors
from providers.llm.catalog import LOCAL_MODEL_NAME

from .models import Conversation, Persona
from .personas import SAMPLING_PRESETS, sampling_preset_of
from .structured import EXAMPLE, check_json_schema


class StopSequencesField(forms.CharField):
    """Stop sequences, one per line (a sequence may not contain a line break here)."""

    widget = forms.Textarea(attrs={"rows": 2})

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        return [line for line in text.splitlines() if line]

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(value) if isinstance(value, list) else value


class JsonSchemaField(forms.CharField):
    """OpenAI's json_schema object (name, schema, strict), typed as JSON; shown pretty-printed.
    ``chat.structured.check_json_schema`` checks it, and names what is wrong."""

    widget = forms.Textarea(attrs={"rows": 8, "spellcheck": "false"})

    def to_python(self, value: Any) -> dict[str, Any] | None:  # type: ignore[override]
        if isinstance(value, dict):  # a disabled field gives its initial value back
            return value
        try:
            return check_json_schema(super().to_python(value))
        except ServiceError as error:
            raise forms.ValidationError(error.message, code="invalid_json_schema") from None

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return json.dumps(value, indent=2, ensure_ascii=False)
        return value


# Formatted when shown, so said in the page's language (the example stays as it is).
JSON_SCHEMA_HELP = format_lazy(
    _(
        "Replies must be JSON matching this schema (it takes the place of JSON mode). OpenAI's "
        "json_schema object, for example: {example}. Empty: none."
    ),
    example=EXAMPLE,
)
TOOLS_HELP = _("Tools the model may call while it answers; each call shows in the transcript.")


def tool_choices(project: Project, chosen: list[str]) -> list[tuple[str, str]]:
    """The project's tools as checkbox choices; one chosen before that the project no longer
    offers (its server removed) stays listed, marked, so it can be unticked."""
    from .tools.registry import tool_options

    choices = [
        (o.key, f"{o.label}: {o.description}" if o.description else o.label)
        for o in tool_options(project)
    ]
    offered = {key for key, _label in choices}
    for key in chosen:
        if key not in offered:
            choices.append((key, gettext("%(tool)s (no longer available)") % {"tool": key}))
    return choices


class AbilityFields(forms.Form):
    """JSON mode, the JSON schema and tools, which only some models can use: disabled, with the
    reason, when the model in use cannot (``disable_what_cannot``)."""

    json_mode = forms.BooleanField(
        required=False,
        label=_("JSON mode"),
        help_text=_("Answers are a JSON object; say so in the system prompt too."),
    )
    json_schema = JsonSchemaField(
        required=False, label=_("JSON schema"), help_text=JSON_SCHEMA_HELP
    )
    tools = forms.MultipleChoiceField(
        required=False,
        choices=(),
        widget=forms.CheckboxSelectMultiple,
        label=_("Tools"),
        help_text=TOOLS_HELP,
    )
    # Where a person picks another model, for the reasons a disabled field gives.
    model_menu = _("in the model menu")

    def set_tools(self, project: Project | None, chosen: list[str]) -> None:
        """Offer the project's tools; without a project there is nothing to offer."""
        if project is None:
            del self.fields["tools"]
            return
        cast(forms.MultipleChoiceField, self.fields["tools"]).choices = tool_choices(
            project, chosen
        )

    def disable_what_cannot(self, project: Project | None, model: str) -> None:
        """Disable what ``model`` cannot take (nothing when it is unknown: the project's default
        model, or one it no longer allows). Disabled fields are saved empty: the services
        refuse a setting the model cannot use."""
        abilities = provider_selectors.model_abilities(project, model) if project else None
        if abilities is None:
            return
        where = str(self.model_menu)
        if not abilities.json:
            reason = gettext("%(model)s cannot answer in JSON: pick a model that can, %(where)s.")
            self._disable("json_mode", False, reason % {"model": model, "where": where})
            self._disable("json_schema", None, reason % {"model": model, "where": where})
        if not abilities.tools and "tools" in self.fields:
            if model == LOCAL_MODEL_NAME:
                # llama.cpp has a function-calling chat format, but a 135M-parameter model
                # picks and fills tools too unreliably for its calls to be worth running.
                reason = gettext(
                    "The built-in model is too small to call tools reliably: pick a larger "
                    "model, %(where)s."
                )
            else:
                reason = gettext("%(model)s cannot call tools: pick a model that can, %(where)s.")
            self._disable("tools", [], reason % {"model": model, "where": where})

    def _disable(self, name: str, empty: object, reason: str) -> None:
        """Greyed out, with why; shown and saved empty, whatever was set before (a browser
        sends nothing for a disabled field, and Django takes the initial value instead)."""
        field = self.fields[name]
        field.disabled = True
        field.help_text = reason
        self.initial[name] = empty


class SamplingFields(forms.Form):
    """The sampling settings a conversation and a persona both have, with the same ranges.
    Subclasses place them with ``field_order``."""

    temperature = forms.FloatField(
        label=_("Temperature"),
        required=False,
        min_value=0,
        max_value=2,
        help_text=_("0 to 2; empty for the default."),
    )
    top_p = forms.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        label=_("Top p"),
        help_text=_("0 to 1; empty for the default."),
    )
    presence_penalty = forms.FloatField(
        label=_("Presence penalty"),
        required=False,
        min_value=-2,
        max_value=2,
        help_text=_("-2 to 2; empty for the default."),
    )
    frequency_penalty = forms.FloatField(
        label=_("Frequency penalty"),
        required=False,
        min_value=-2,
        max_value=2,
        help_text=_("-2 to 2; empty for the default."),
    )
    max_tokens = forms.IntegerField(
        required=False,
        min_value=1,
        label=_("Max tokens"),
        help_text=_("Longest reply; empty: as long as the model may write (and budgets allow)."),
    )


class ConversationSettingsForm(AbilityFields, SamplingFields):
    field_order = [
        "model", "system_prompt", "temperature", "top_p", "presence_penalty",
        "frequency_penalty", "max_tokens", "stop", "seed", "json_mode", "json_schema", "tools",
        "history_limit",
    ]  # fmt: skip

    model = forms.ChoiceField(label=_("Model"), choices=())
    system_prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}), required=False, label=_("System prompt")
    )
    stop = StopSequencesField(
        required=False, label=_("Stop sequences"), help_text=_("One per line, at most 4.")
    )
    seed = forms.IntegerField(
        label=_("Seed"),
        required=False,
        help_text=_("The same seed asks for the same answer; empty for none."),
    )
    history_limit = forms.IntegerField(
        required=False,
        min_value=1,
        label=_("Keep the last N messages"),
        help_text=_(
            "Send at most this many earlier messages (and the summary of older ones); "
            "empty: all that fit."
        ),
    )

    def __init__(
        self,
        *args: Any,
        models: list[str],
        project: Project | None = None,
        conversation: Conversation | None = None,
        **kwargs: Any,
    ) -> None:
        """``project`` offers its tools; ``conversation`` gives the current settings and the
        model whose abilities decide what is disabled (the page and its POST both pass it)."""
        if conversation is not None:
            current = {"json_mode": conversation.json_mode, "tools": list(conversation.tools)}
            current["json_schema"] = conversation.json_schema
            kwargs["initial"] = {**current, **(kwargs.get("initial") or {})}
        super().__init__(*args, **kwargs)
        # The model field is the ChoiceField above; ``fields`` knows only that it is a Field.
        cast(forms.ChoiceField, self.fields["model"]).choices = [(m, m) for m in models]
        self.set_tools(project, list(conversation.tools) if conversation is not None else [])
        if conversation is not None:
            self.disable_what_cannot(project, conversation.model)


class RenameForm(forms.Form):
    title = forms.CharField(label=_("Title"), max_length=200, required=False)


class MoveForm(forms.Form):
    """Which of the person's folders a chat is in (empty: none)."""

    folder = forms.TypedChoiceField(coerce=int, empty_value=None, required=False, label=_("Folder"))

    def __init__(self, *args: Any, folders: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.TypedChoiceField, self.fields["folder"]).choices = [
            ("", _("No folder")),
            *folders,
        ]


SHARING_CHOICES = [
    ("project", _("Everyone in the project")),
    ("members", _("Chosen members")),
]


class RoomForm(forms.Form):
    """A new room, or who an existing one is shared with."""

    title = forms.CharField(max_length=200, required=False, label=_("Room name"))
    sharing = forms.ChoiceField(
        choices=SHARING_CHOICES,
        initial="project",
        widget=forms.RadioSelect,
        label=_("Who is in it"),
    )
    members = forms.TypedMultipleChoiceField(
        label=_("Members"),
        choices=(),
        coerce=int,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("For a room shared with chosen members: who, besides you."),
    )

    def __init__(
        self, *args: Any, people: list[tuple[int, str]], existing: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.TypedMultipleChoiceField, self.fields["members"]).choices = people
        if existing:  # an existing room can become a private chat again
            cast(forms.ChoiceField, self.fields["sharing"]).choices = [
                *SHARING_CHOICES,
                ("private", _("Only me (a private chat again)")),
            ]


# --- personas ---------------------------------------------------------------------------------


class SamplingSelect(forms.Select):
    """The sampling presets, each option carrying its numbers: personas.js fills them in."""

    def create_option(
        self,
        name: str,
        value: Any,
        label: int | str,
        selected: bool,
        index: int,
        subindex: int | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        preset = SAMPLING_PRESETS.get(str(value))
        if preset is not None:
            option["attrs"]["data-temperature"] = preset.temperature
            option["attrs"]["data-top-p"] = preset.top_p
        return option


def sampling_choices() -> list[tuple[str, str]]:
    """The presets in the language of the page (SAMPLING_CHOICES is the English)."""
    return [
        ("", str(_("Custom: the numbers below"))),
        *(
            (p.key, f"{gettext(p.label)} ({gettext(p.help).rstrip('.')})")
            for p in SAMPLING_PRESETS.values()
        ),
    ]


SAMPLING_CHOICES = [
    ("", _("Custom: the numbers below")),
    *((p.key, f"{p.label} ({p.help.rstrip('.')})") for p in SAMPLING_PRESETS.values()),
]


class PersonaForm(AbilityFields, SamplingFields):
    """A persona, new or edited. Only types are checked here; ``chat.personas`` checks the
    rest (tags, ranges, the model, what the model can take), and its refusals are shown on
    the field they name."""

    field_order = [
        "name", "tag", "avatar", "color", "description", "system_prompt", "model", "sampling",
        "temperature", "top_p", "presence_penalty", "frequency_penalty", "max_tokens",
        "json_mode", "json_schema", "tools", "enabled",
    ]  # fmt: skip
    model_menu = _("above")

    name = forms.CharField(label=_("Name"), max_length=80)
    tag = forms.CharField(
        label=_("Tag"),
        max_length=100,
        help_text=_(
            "Called as @tag in rooms: letters, digits, _ or - in any script (요약 works); "
            "case does not matter."
        ),
    )
    avatar = forms.CharField(
        label=_("Avatar"), max_length=8, required=False, help_text=_("An emoji, such as 🤖.")
    )
    color = forms.CharField(
        label=_("Color"),
        max_length=7,
        initial="#4f46e5",
        widget=forms.TextInput(attrs={"type": "color"}),
    )
    description = forms.CharField(
        label=_("Description"),
        max_length=300,
        required=False,
        help_text=_("One line: what people call it for."),
    )
    system_prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}), required=False, label=_("System prompt")
    )
    model = forms.ChoiceField(label=_("Model"), choices=(), required=False)
    sampling = forms.ChoiceField(
        choices=SAMPLING_CHOICES,
        required=False,
        widget=SamplingSelect,
        label=_("Sampling preset"),
        help_text=_("A preset sets temperature and top p; pick Custom to set them yourself."),
    )
    json_mode = forms.BooleanField(
        required=False,
        label=_("JSON mode"),
        help_text=_("Answers are a JSON object (on models that support it); say so in the prompt."),
    )
    enabled = forms.BooleanField(
        label=_("Enabled"),
        required=False,
        initial=True,
        help_text=_("Off: nobody can call it or start a chat with it."),
    )

    def __init__(
        self,
        *args: Any,
        models: list[str],
        persona: Persona | None = None,
        project: Project | None = None,
        **kwargs: Any,
    ) -> None:
        """``project`` (the persona's, when editing one) offers its tools."""
        if persona is not None:
            preset = sampling_preset_of(persona)
            initial = {n: getattr(persona, n) for n in self.base_fields if n != "sampling"}
            kwargs.setdefault("initial", {**initial, "sampling": preset.key if preset else ""})
            project = project or persona.project
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["sampling"]).choices = sampling_choices()
        choices = [("", _("The project's default model")), *((m, m) for m in models)]
        if persona is not None and persona.model and persona.model not in models:
            gone = _("%(model)s (no longer available)") % {"model": persona.model}
            choices.append((persona.model, gone))
        cast(forms.ChoiceField, self.fields["model"]).choices = choices
        self.set_tools(project, list(persona.tools) if persona is not None else [])
        if persona is not None and persona.model:
            # A persona on the project's default model takes what that model can when a chat
            # starts (``services._take_persona``): nothing to disable here.
            self.disable_what_cannot(project, persona.model)

    def changes(self, *, only_changed: bool) -> dict[str, Any]:
        """What to save: every field (a new persona) or those changed (an edit, so a model the
        project has since dropped does not block fixing a typo). A preset counts only when it
        was picked here, and then it sets temperature and top p."""
        data = dict(self.cleaned_data)
        sampling = data.pop("sampling", "")
        if only_changed:
            data = {name: value for name, value in data.items() if name in self.changed_data}
        if sampling and "sampling" in self.changed_data:
            data.pop("temperature", None)
            data.pop("top_p", None)
            data["sampling"] = sampling
        return data


# --- the project's chat settings ---------------------------------------------------------------


class ChatSettingsForm(forms.Form):
    """When long conversations are summarized, and by whom (``chat.summaries``)."""

    summarize_after_tokens = forms.IntegerField(
        required=False,
        min_value=1,
        label=_("Summarize after (tokens)"),
        help_text=_(
            "Fold the oldest turns into a summary once a conversation's history passes "
            "this many tokens; empty: only when it no longer fits the model's window."
        ),
    )
    summary_persona = forms.ModelChoiceField(
        queryset=Persona.objects.none(),
        required=False,
        label=_("Summary persona"),
        empty_label=_("The project's @summary persona"),
        help_text=_(
            "Who writes summaries, on its own model (pick a cheap one) or else the "
            "project's default model."
        ),
    )

    def __init__(self, *args: Any, personas: QuerySet[Persona], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["summary_persona"]).queryset = personas
