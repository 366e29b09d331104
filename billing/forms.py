"""The usage dashboard's date range; the budget and rate limit forms."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any, cast

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS
from django.utils.translation import gettext_lazy as _

from accounts.decorators import raise_if_forbidden
from accounts.models import ApiKey, Project, User
from core.errors import ServiceError

from .budget_selectors import BudgetChoices
from .models import Budget
from .selectors import MAX_RANGE_DAYS, DateRange

EARLIEST, LATEST = date(2000, 1, 1), date(2999, 12, 31)
DATE_ERRORS = {"invalid": "Enter a date as YYYY-MM-DD."}


class UsageRangeForm(forms.Form):
    """``?start=YYYY-MM-DD&end=YYYY-MM-DD``. Without both, this month to date; with one, the
    month around it."""

    start = forms.DateField(required=False, input_formats=["%Y-%m-%d"], error_messages=DATE_ERRORS)
    end = forms.DateField(required=False, input_formats=["%Y-%m-%d"], error_messages=DATE_ERRORS)

    def __init__(self, *args: Any, default: DateRange, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default = default

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data  # what Form.clean() returns (typed as possibly None)
        if self.errors:
            return cleaned
        start: date | None = cleaned.get("start")
        end: date | None = cleaned.get("end")
        if any(day and not EARLIEST <= day <= LATEST for day in (start, end)):
            raise forms.ValidationError(f"Choose dates from {EARLIEST} to {LATEST}.")
        if start is None:
            if end is None:
                start, end = self.default.start, self.default.end
            else:  # the month up to that day
                start = end.replace(day=1)
        elif end is None:  # the rest of that month, but not past the default's end
            month_end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
            end = max(start, min(month_end - timedelta(days=1), self.default.end))
        if start > end:
            raise forms.ValidationError("The start date must not be after the end date.")
        if (end - start).days >= MAX_RANGE_DAYS:
            raise forms.ValidationError(f"Choose a range of at most {MAX_RANGE_DAYS} days.")
        cleaned["range"] = DateRange(start=start, end=end)
        return cleaned

    def date_range(self) -> tuple[DateRange, str | None]:
        """The range asked for, or the default and why it was not used."""
        if self.is_valid():
            return self.cleaned_data["range"], None
        problems = []
        for name, errors in self.errors.items():
            prefix = "" if name == NON_FIELD_ERRORS else f"{name.capitalize()}: "
            # str(): a no-op at run time (iterating an ErrorList yields its messages), which
            # the stubs type as ValidationError | str.
            problems.append(prefix + " ".join(str(error) for error in errors))
        shown = f"{self.default.start:%Y-%m-%d} to {self.default.end:%Y-%m-%d}"
        return self.default, f"{' '.join(problems)} Showing {shown} instead."


# --- budgets and rate limits (billing/budget_views.py) ----------------------------------------

THRESHOLDS_HELP = _(
    "Percentages of the limit (1 to 100) at which owners and admins get an e-mail and members a "
    "banner, comma-separated; empty: no alerts."
)
THRESHOLDS_ERROR = _("Whole percentages from 1 to 100, separated by commas: 50, 80, 100.")


class ThresholdsField(forms.CharField):
    """Alert thresholds typed as "50, 80, 100" (commas or spaces, an optional %): [50, 80, 100]."""

    def to_python(self, value: Any) -> list[int]:  # type: ignore[override]
        text = super().to_python(value) or ""
        parts = [part.strip().rstrip("%").strip() for part in re.split(r"[,\s]+", text)]
        parts = [part for part in parts if part]
        if not all(part.isdigit() and 1 <= int(part) <= 100 for part in parts):
            raise forms.ValidationError(THRESHOLDS_ERROR, code="invalid")
        return sorted({int(part) for part in parts})


def thresholds_text(budget: Budget) -> str:
    return ", ".join(str(value) for value in budget.thresholds())


class _ProjectChoice(forms.ModelChoiceField[Project]):
    def label_from_instance(self, obj: Project) -> str:
        return obj.name


class _KeyChoice(forms.ModelChoiceField[ApiKey]):
    def label_from_instance(self, obj: ApiKey) -> str:
        return f"{obj.project.name} / {obj}"


class _MemberChoice(forms.ModelChoiceField[User]):
    def label_from_instance(self, obj: User) -> str:
        return f"{obj.name} <{obj.email}>" if obj.name else obj.email


def _limit_field() -> forms.DecimalField:
    return forms.DecimalField(
        label=_("Hard limit (USD)"),
        min_value=0,
        max_digits=14,
        decimal_places=6,
        help_text=_("Calls that could go over it are refused. 0 refuses every call."),
        widget=forms.NumberInput(attrs={"step": "any", "min": "0"}),
    )


def _period_field() -> forms.ChoiceField:
    return forms.ChoiceField(
        label=_("Period"),
        choices=Budget.Period.choices,
        initial=Budget.Period.MONTH,
        help_text=_("Spending counts from the start of the period (UTC) and resets after it."),
    )


class BudgetForm(forms.Form):
    """A new budget: what it covers, then its period, limit and alert thresholds."""

    scope = forms.ChoiceField(label=_("Limits the spending of"), choices=Budget.Scope.choices)
    project = _ProjectChoice(
        label=_("Project"),
        queryset=Project.objects.none(),
        required=False,
        help_text=_("For a project or member budget."),
    )
    user = _MemberChoice(
        label=_("Member"),
        queryset=User.objects.none(),
        required=False,
        help_text=_("For a member budget: their own calls in the project."),
    )
    api_key = _KeyChoice(
        label=_("API key"),
        queryset=ApiKey.objects.none(),
        required=False,
        help_text=_(
            "For an API key budget: the calls made with that key (its project is the key's)."
        ),
    )
    period = _period_field()
    limit_usd = _limit_field()
    soft_thresholds = ThresholdsField(
        # xgettext:no-python-format
        label=_("Alert at (% of the limit)"),
        required=False,
        initial="50, 80, 100",
        max_length=60,
        help_text=THRESHOLDS_HELP,
    )
    enabled = forms.BooleanField(label=_("On"), required=False, initial=True)

    def __init__(self, *args: Any, choices: BudgetChoices, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(_ProjectChoice, self.fields["project"]).queryset = choices.projects
        cast(_MemberChoice, self.fields["user"]).queryset = choices.members
        cast(_KeyChoice, self.fields["api_key"]).queryset = choices.api_keys


class BudgetEditForm(forms.Form):
    """An existing budget: what it covers stays (its counters were kept for it)."""

    period = _period_field()
    limit_usd = _limit_field()
    soft_thresholds = ThresholdsField(
        # xgettext:no-python-format
        label=_("Alert at (% of the limit)"),
        required=False,
        max_length=60,
        help_text=THRESHOLDS_HELP,
    )
    enabled = forms.BooleanField(
        label=_("On"), required=False, help_text=_("Off: calls are not limited by it.")
    )

    @classmethod
    def for_budget(cls, budget: Budget, data: Any = None) -> BudgetEditForm:
        initial = {
            "period": budget.period,
            "limit_usd": budget.limit_usd.normalize() if budget.limit_usd else 0,
            "soft_thresholds": thresholds_text(budget),
            "enabled": budget.enabled,
        }
        return cls(data, initial=initial)


class RateLimitForm(forms.Form):
    """Requests and tokens per minute (a project's, or one key's on top of its project's)."""

    requests_per_minute = forms.IntegerField(
        label=_("Requests per minute"),
        required=False,
        min_value=1,
        max_value=2**31 - 1,
        help_text=_("Empty: no limit."),
    )
    tokens_per_minute = forms.IntegerField(
        label=_("Tokens per minute"),
        required=False,
        min_value=1,
        max_value=2**31 - 1,
        help_text=_("Prompt and reply tokens a minute. Empty: no limit."),
    )


def add_field_error(form: forms.BaseForm, error: ServiceError) -> None:
    """A refusal of the budget services, next to the field it names (403 if it was a
    permission)."""
    raise_if_forbidden(error)
    form.add_error(error.param if error.param in form.fields else None, error.message)
