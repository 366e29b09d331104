"""The filters of the owners' audit log page (``?action=&actor=&project=&start=&end=``)."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization, Project

from .models import ACTOR_WORDS, AuditEvent
from .selectors import AuditFilters, actors_of

DATE_ERRORS = {"invalid": _("Enter a date as YYYY-MM-DD.")}
DATE_INPUT = forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")


class AuditFilterForm(forms.Form):
    action = forms.ChoiceField(label=_("Action"), required=False)
    actor = forms.ChoiceField(label=_("Who"), required=False)
    project = forms.TypedChoiceField(
        label=_("Project"), required=False, coerce=int, empty_value=None
    )
    start = forms.DateField(
        label=_("From"),
        required=False,
        input_formats=["%Y-%m-%d"],
        error_messages=DATE_ERRORS,
        widget=DATE_INPUT,
    )
    end = forms.DateField(
        label=_("To"),
        required=False,
        input_formats=["%Y-%m-%d"],
        error_messages=DATE_ERRORS,
        widget=DATE_INPUT,
    )

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        anything = [("", _("Any"))]
        action, actor, project = (
            cast(forms.ChoiceField, self.fields[name]) for name in ("action", "actor", "project")
        )
        action.choices = [*anything, *AuditEvent.Action.choices]
        actor.choices = [
            *anything,
            *((label, ACTOR_WORDS.get(label, label)) for label in actors_of(organization)),
        ]
        projects = Project.objects.for_organization(organization).order_by("name")
        project.choices = [*anything, *((p.pk, p.name) for p in projects)]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data  # what Form.clean() returns (typed as possibly None)
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and start > end:
            self.add_error("end", _("The end must not be before the start."))
        return cleaned

    def filters(self) -> AuditFilters:
        """The filters asked for; one that is not valid is left out (and its error shown)."""
        self.is_valid()
        valid = {
            name: value
            for name, value in self.cleaned_data.items()
            if name not in self.errors and value not in ("", None)
        }
        return AuditFilters(**valid)
