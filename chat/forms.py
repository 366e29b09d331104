"""The conversation page's forms: settings and rename."""

from typing import Any, cast

from django import forms


class ConversationSettingsForm(forms.Form):
    model = forms.ChoiceField(choices=())
    system_prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}), required=False, label="System prompt"
    )
    temperature = forms.FloatField(
        required=False, min_value=0, max_value=2, help_text="0 to 2; empty for the default."
    )
    max_tokens = forms.IntegerField(
        required=False,
        min_value=1,
        label="Max tokens",
        help_text="Longest reply; empty for no cap.",
    )

    def __init__(self, *args: Any, models: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The model field is the ChoiceField above; ``fields`` knows only that it is a Field.
        cast(forms.ChoiceField, self.fields["model"]).choices = [(m, m) for m in models]


class RenameForm(forms.Form):
    title = forms.CharField(max_length=200, required=False)
