"""Project settings → API keys: list, create (the key is shown once), revoke.

Thin: a form in, ``accounts.api_keys`` out, ``key_selectors`` for every lookup. Keys are secrets,
so only owners and admins see this page; members get 403. The plaintext of a new key exists in
exactly one response — the page rendered by the create POST, marked ``no-store`` — and never in a
URL, a redirect, a message, the session or the cache.

That page is the answer to a POST, so reloading it sends the form again. Each create form
carries a one-time token that the first POST claims: a repeat (a reload, a double click) makes
no second key and is redirected to the list, which says the key exists and why its secret is
not shown again. Only the token and the key's name are remembered, never the key.
"""

from __future__ import annotations

import re
import secrets
from datetime import date, datetime, time, timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.core.cache import cache
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext, gettext_lazy
from django.views.decorators.cache import never_cache

from core.errors import ServiceError

from . import api_keys, key_selectors
from .decorators import (
    AuthenticatedHttpRequest,
    add_service_error,
    project_view,
    raise_if_forbidden,
    require_manager,
)
from .models import ApiKey, Membership, Project

# What each scope allows, in the words the page uses to explain them.
SCOPE_HELP = {
    ApiKey.Scope.CHAT: gettext_lazy(
        "May call models (/v1 chat completions, posting messages) and start, change or delete "
        "the project's API conversations."
    ),
    ApiKey.Scope.READ: gettext_lazy("May read conversations, usage and models."),
}

# Which field a service refusal is about, so it shows next to that field.
FIELD_OF_ERROR = {
    "invalid_name": "name",
    "invalid_scopes": "scopes",
    "invalid_expiry": "expires_on",
    "invalid_requests_per_minute": "requests_per_minute",
    "invalid_tokens_per_minute": "tokens_per_minute",
}


# How long a create form's token is remembered: a reload a day later still makes no key.
FORM_TOKEN_SECONDS = 24 * 3600
FORM_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")


def _form_token_key(request: AuthenticatedHttpRequest, project: Project, token: str) -> str:
    return f"api-key-form:{request.user.pk}:{project.pk}:{token}"


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        label=gettext_lazy("Name"),
        max_length=100,
        help_text=gettext_lazy("What will use it, e.g. “CI bot” or “support dashboard”."),
    )
    scopes = forms.MultipleChoiceField(
        choices=[(scope.value, scope.value) for scope in ApiKey.Scope],
        widget=forms.CheckboxSelectMultiple,
        initial=[ApiKey.Scope.CHAT.value],
        error_messages={"required": gettext_lazy("Choose at least one scope: chat, read.")},
    )
    expires_on = forms.DateField(
        label=gettext_lazy("Expires on"),
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    requests_per_minute = forms.IntegerField(
        label=gettext_lazy("Requests per minute"),
        required=False,
        min_value=1,
        help_text=gettext_lazy(
            "Optional: this key's own limit, on top of the project's. Empty: none."
        ),
    )
    tokens_per_minute = forms.IntegerField(
        label=gettext_lazy("Tokens per minute"),
        required=False,
        min_value=1,
        help_text=gettext_lazy(
            "Optional: prompt and reply tokens a minute, on top of the project's limit."
        ),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tomorrow = timezone.localdate() + timedelta(days=1)
        expires_on = self.fields["expires_on"]
        expires_on.widget.attrs["min"] = tomorrow.isoformat()
        expires_on.help_text = gettext(
            "Optional. The key stops working at 00:00 (%(zone)s) that day; empty: it never expires."
        ) % {"zone": timezone.get_current_timezone_name()}

    def expires_at(self) -> datetime | None:
        day: date | None = self.cleaned_data["expires_on"]
        if day is None:
            return None
        return datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone())


def _context(membership: Membership, project: Project, **extra: Any) -> dict[str, Any]:
    return {
        "project": project,
        "membership": membership,
        "organization": project.organization,
        **extra,
    }


@never_cache
@project_view
def api_key_list(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    """The project's keys and the form to create one; a successful POST renders this page again
    with the new key in it, once (not a redirect: the key must not outlive this response)."""
    require_manager(membership)
    form = ApiKeyForm(request.POST if request.method == "POST" else None)
    created: api_keys.CreatedKey | None = None
    claimed = ""
    if request.method == "POST":
        token = request.POST.get("form_token", "")
        if FORM_TOKEN.fullmatch(token):
            claimed = _form_token_key(request, project, token)
            # cache.add is atomic: of two POSTs of one form, exactly one goes on.
            if not cache.add(claimed, "", FORM_TOKEN_SECONDS):
                return _sent_already(request, project, name=cache.get(claimed) or "")
    if request.method == "POST" and form.is_valid():
        try:
            created = api_keys.api_key_create(
                actor=membership,
                project=project,
                name=form.cleaned_data["name"],
                scopes=form.cleaned_data["scopes"],
                expires_at=form.expires_at(),
                requests_per_minute=form.cleaned_data["requests_per_minute"],
                tokens_per_minute=form.cleaned_data["tokens_per_minute"],
            )
        except ServiceError as error:
            add_service_error(form, error, field_of_error=FIELD_OF_ERROR)
        else:
            form = ApiKeyForm()
            if claimed:
                cache.set(claimed, created.key.name, FORM_TOKEN_SECONDS)
    if claimed and created is None:
        cache.delete(claimed)  # refused: the same form, corrected, may be sent again
    return render(
        request,
        "projects/api_keys.html",
        _context(
            membership,
            project,
            form=form,
            form_token=secrets.token_urlsafe(24),
            created=created,
            keys=key_selectors.api_keys_for_project(project),
            scope_help=[(scope.value, text) for scope, text in SCOPE_HELP.items()],
        ),
    )


def _sent_already(
    request: AuthenticatedHttpRequest, project: Project, *, name: str
) -> HttpResponse:
    if name:
        said = gettext(
            "The key “%(name)s” was created already: sending the form again does not create "
            "another key, and a key's secret is shown only once, when it is created."
        ) % {"name": name}
    else:
        said = gettext(
            "That form was sent already: sending the form again does not create another key, "
            "and a key's secret is shown only once, when it is created."
        )
    messages.info(request, said)
    return redirect("api_keys", org_slug=project.organization.slug, project_slug=project.slug)


@never_cache
@project_view
def api_key_revoke(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    require_manager(membership)
    key = key_selectors.get_api_key_or_404(project=project, pk=pk)
    if request.method == "POST":
        try:
            api_keys.api_key_revoke(actor=membership, key=key)
        except ServiceError as error:
            raise_if_forbidden(error)
            messages.error(request, error.message)
        else:
            messages.success(
                request,
                gettext("Revoked “%(name)s” (%(key)s).") % {"name": key.name, "key": key.display},
            )
        return redirect("api_keys", org_slug=project.organization.slug, project_slug=project.slug)
    return render(request, "projects/api_key_revoke.html", _context(membership, project, key=key))
