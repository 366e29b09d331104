"""The usage dashboard's date range."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS

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
