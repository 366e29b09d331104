"""The conversation page's forms: settings and rename."""

from typing import Any, cast

from django import forms


class StopSequencesField(forms.CharField):
    """Stop sequences, one per line (a sequence may not contain a line break here)."""

    widget = forms.Textarea(attrs={"rows": 2})

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        return [line for line in text.splitlines() if line]

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(value) if isinstance(value, list) else value


class ConversationSettingsForm(forms.Form):
    model = forms.ChoiceField(choices=())
    system_prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}), required=False, label="System prompt"
    )
    temperature = forms.FloatField(
        required=False, min_value=0, max_value=2, help_text="0 to 2; empty for the default."
    )
    top_p = forms.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        label="Top p",
        help_text="0 to 1; empty for the default.",
    )
    presence_penalty = forms.FloatField(
        required=False, min_value=-2, max_value=2, help_text="-2 to 2; empty for the default."
    )
    frequency_penalty = forms.FloatField(
        required=False, min_value=-2, max_value=2, help_text="-2 to 2; empty for the default."
    )
    max_tokens = forms.IntegerField(
        required=False,
        min_value=1,
        label="Max tokens",
        help_text="Longest reply; empty: as long as the model may write (and budgets allow).",
    )
    stop = StopSequencesField(
        required=False, label="Stop sequences", help_text="One per line, at most 4."
    )
    seed = forms.IntegerField(
        required=False, help_text="The same seed asks for the same answer; empty for none."
    )
    json_mode = forms.BooleanField(
        required=False,
        label="JSON mode",
        help_text="Answers are a JSON object; say so in the system prompt too.",
    )

    def __init__(self, *args: Any, models: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The model field is the ChoiceField above; ``fields`` knows only that it is a Field.
        cast(forms.ChoiceField, self.fields["model"]).choices = [(m, m) for m in models]


class RenameForm(forms.Form):
    title = forms.CharField(max_length=200, required=False)


SHARING_CHOICES = [
    ("project", "Everyone in the project"),
    ("members", "Chosen members"),
]


class RoomForm(forms.Form):
    """A new room, or who an existing one is shared with."""

    title = forms.CharField(max_length=200, required=False, label="Room name")
    sharing = forms.ChoiceField(
        choices=SHARING_CHOICES, initial="project", widget=forms.RadioSelect, label="Who is in it"
    )
    members = forms.TypedMultipleChoiceField(
        choices=(),
        coerce=int,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="For a room shared with chosen members: who, besides you.",
    )

    def __init__(self, *args: Any, people: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.TypedMultipleChoiceField, self.fields["members"]).choices = people
