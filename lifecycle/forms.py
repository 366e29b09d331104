"""Forms of the export, account deletion, retention and organization deletion pages."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from .models import RETENTION_MAX_DAYS, RETENTION_MIN_DAYS


class RetentionForm(forms.Form):
    days = forms.IntegerField(
        label=_("Keep conversations for (days)"),
        required=False,
        min_value=RETENTION_MIN_DAYS,
        max_value=RETENTION_MAX_DAYS,
        help_text=_("From 30 to 3650. Empty: conversations are kept until someone deletes them."),
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
    )


class OrganizationDeleteForm(forms.Form):
    name = forms.CharField(
        label=_("Type the organization's name to confirm"),
        max_length=100,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )


class TransferForm(forms.Form):
    member = forms.IntegerField(widget=forms.HiddenInput)


class AccountDeleteForm(forms.Form):
    password = forms.CharField(
        label=_("Your password"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    code = forms.CharField(
        label=_("Code from your authenticator app, or a recovery code"),
        max_length=40,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "spellcheck": "false"}),
    )

    def __init__(self, *args: Any, two_factor: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if two_factor:
            self.fields["code"].required = True
        else:
            del self.fields["code"]
