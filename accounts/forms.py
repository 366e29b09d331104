"""Forms of the sign-up, login, organization, project and member pages."""

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm
from django.utils.translation import gettext_lazy as _

from .models import Role, User, normalize_address


class AddressField(forms.EmailField):
    """An e-mail address, normalized before it is validated: a full-width or mixed-case
    variant of an address is that address (``normalize_address``)."""

    def to_python(self, value: Any) -> str:
        return normalize_address(super().to_python(value) or "")


class SignUpForm(forms.Form):
    name = forms.CharField(max_length=150, required=False, label=_("Your name"))
    email = AddressField(label=_("E-mail"))
    password = forms.CharField(
        label=_("Password"),
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )

    def clean_email(self) -> str:
        email = normalize_address(self.cleaned_data["email"])
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError(
                _(
                    "An account with this e-mail address already exists. Log in instead, or "
                    "reset your password."
                )
            )
        return email

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        password = cleaned.get("password")
        if password:
            candidate = User(email=cleaned.get("email", ""), name=cleaned.get("name", ""))
            try:
                password_validation.validate_password(password, candidate)
            except forms.ValidationError as error:
                self.add_error("password", error)
        return cleaned


class EmailAuthenticationForm(AuthenticationForm):
    username = AddressField(
        label=_("E-mail"),
        widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"}),
    )


class NameForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100)


class ProjectForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100)
    default_system_prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        required=False,
        label=_("Default system prompt"),
        help_text=_("Sent as the system message of new conversations in this project."),
    )


class InviteForm(forms.Form):
    email = AddressField(label=_("E-mail"))
    role = forms.ChoiceField(label=_("Role"), choices=Role.choices, initial=Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(label=_("Role"), choices=Role.choices)


class TwoFactorCodeForm(forms.Form):
    """A code from the authenticator app (or, where the page says so, a recovery code)."""

    token = forms.CharField(
        label=_("Code"),
        max_length=40,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "autofocus": True, "spellcheck": "false"}
        ),
    )


class TwoFactorRequirementForm(forms.Form):
    require_two_factor = forms.BooleanField(
        required=False, label=_("Require two-factor authentication for members")
    )


class LanguageForm(forms.Form):
    """The interface's language on the account page; empty follows the browser."""

    language = forms.ChoiceField(
        label=_("Language"),
        choices=[("", _("The browser's language")), *settings.LANGUAGES],
        required=False,
    )
