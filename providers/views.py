"""Project settings pages for provider connections and the models a project allows.

Thin: forms in, ``providers.services`` out, ``providers.selectors`` for every lookup. Keys are
write-only here as everywhere else: no form renders one back, pages show only the hint.
Owners and admins manage connections; members may look at the Models page and nothing else.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_POST

from accounts.decorators import (
    add_service_error,
    project_view,
    raise_if_forbidden,
    require_manager,
)
from accounts.models import Membership, Project
from core.errors import ServiceError

from . import selectors, services
from .models import ProviderConnection

# --- forms -------------------------------------------------------------------------------------


def validate_base_url(value: str) -> None:
    # Not forms.URLField: its validator refuses single-label hosts such as a compose service
    # (http://ollama:11434/v1), which is exactly where self-hosted servers live.
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError:
        valid = False
    if not valid:
        raise ValidationError(
            _("Enter an http:// or https:// address, e.g. http://localhost:11434/v1.")
        )


class ConnectionForm(forms.Form):
    # The kinds, then the providers known by name (a preset fills in the address and models).
    kind = forms.ChoiceField(
        label=gettext_lazy("Kind"),
        choices=[
            *((kind.value, kind.label) for kind in services.TENANT_KINDS),
            *((preset.key, preset.label) for preset in services.PRESETS.values()),
        ],
    )
    name = forms.CharField(
        label=gettext_lazy("Name"),
        max_length=100,
        required=False,
        help_text=gettext_lazy("Empty: named after its kind."),
    )
    base_url = forms.CharField(
        label=gettext_lazy("Base URL"),
        max_length=200,
        required=False,
        validators=[validate_base_url],
        help_text=gettext_lazy(
            "Empty for OpenAI itself and for Gemini; for a compatible server its /v1 address, "
            "e.g. http://localhost:11434/v1."
        ),
    )
    api_key = forms.CharField(
        label=gettext_lazy("API key"),
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=gettext_lazy(
            "For Gemini, a key from Google AI Studio (https://aistudio.google.com/apikey). "
            "Stored encrypted; only its last four characters are ever shown again."
        ),
    )
    openai_organization = forms.CharField(
        label=gettext_lazy("OpenAI organization"),
        max_length=100,
        required=False,
        help_text=gettext_lazy("Optional (org-…)."),
    )
    openai_project = forms.CharField(
        label=gettext_lazy("OpenAI project"),
        max_length=100,
        required=False,
        help_text=gettext_lazy("Optional (proj_…)."),
    )
    timeout = forms.FloatField(
        label=gettext_lazy("Timeout (seconds)"),
        min_value=0.1,
        max_value=600,
        initial=60.0,
        help_text=gettext_lazy("How long to wait for an answer, and between streamed chunks."),
    )
    max_retries = forms.IntegerField(
        label=gettext_lazy("Max retries"), min_value=0, max_value=10, initial=2
    )
    shared = forms.BooleanField(
        label=gettext_lazy("Share with all projects of the organization"),
        required=False,
        help_text=gettext_lazy("Otherwise only this project sees it."),
    )


class ConnectionEditForm(ConnectionForm):
    """The same fields but the kind and the scope, which connection_update does not change;
    and whether it answers /v1/moderations (a new connection starts as its kind does)."""

    supports_moderation = forms.BooleanField(
        label=gettext_lazy("Answers /v1/moderations"),
        required=False,
        help_text=gettext_lazy(
            "OpenAI does; most self-hosted servers do not. A project that moderates checks "
            "what is sent to this connection's models there; where this is off, with its "
            "pattern list."
        ),
    )

    def __init__(self, *args: Any, connection: ProviderConnection, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.fields["kind"], self.fields["shared"]
        if connection.api_key_hint:
            # format_html: form_fields.html shows help texts unescaped, and the hint is
            # four characters of whatever was typed as a key.
            help_text: str = format_html(
                _("Leave empty to keep the current key ({})."), connection.api_key_hint
            )
        else:
            help_text = _("No key is stored; leave empty to keep it that way.")
        self.fields["api_key"].help_text = help_text


class ModelAddForm(forms.Form):
    name = forms.CharField(max_length=200, label=gettext_lazy("Model name"))
    context_window = forms.IntegerField(
        label=gettext_lazy("Context window"),
        min_value=1,
        required=False,
        help_text=gettext_lazy("Tokens; empty: guessed."),
    )
    max_output_tokens = forms.IntegerField(
        label=gettext_lazy("Longest reply"),
        min_value=1,
        required=False,
        help_text=gettext_lazy(
            "Tokens; empty: the published limit if known, else what the context leaves."
        ),
    )
    supports_vision = forms.BooleanField(label=gettext_lazy("Vision"), required=False)
    supports_tools = forms.BooleanField(label=gettext_lazy("Tools"), required=False)
    supports_json = forms.BooleanField(label=gettext_lazy("JSON output"), required=False)
    supports_embeddings = forms.BooleanField(
        label=gettext_lazy("Embeddings"),
        required=False,
        help_text=gettext_lazy("An embedding model: it answers /v1/embeddings, not chat."),
    )


class ProjectModelsForm(forms.Form):
    allowed = forms.TypedMultipleChoiceField(coerce=int, required=False)
    default = forms.TypedChoiceField(coerce=int, required=False, empty_value=None)

    def __init__(self, *args: Any, model_ids: list[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [(pk, pk) for pk in model_ids]
        # self.fields is typed as plain Fields; these two are the choice fields declared above.
        cast(forms.TypedMultipleChoiceField, self.fields["allowed"]).choices = choices
        cast(forms.TypedChoiceField, self.fields["default"]).choices = choices


EDITABLE_FIELDS = (
    "name", "base_url", "openai_organization", "openai_project", "timeout", "max_retries",
    "supports_moderation",
)  # fmt: skip

# Which field a service refusal is about, so it shows next to that field.
FIELD_OF_ERROR = {
    "invalid_kind": "kind",
    "base_url_required": "base_url",
    "upstream_address_refused": "base_url",
    "api_key_required": "api_key",
    "invalid_model": "name",
}


# --- helpers -----------------------------------------------------------------------------------


def _managed_connection(project: Project, pk: int) -> ProviderConnection:
    return selectors.get_project_connection_or_404(project=project, pk=pk)


def _context(membership: Membership, project: Project, **extra: Any) -> dict[str, Any]:
    return {
        "project": project,
        "membership": membership,
        "organization": project.organization,
        **extra,
    }


def _to_list(project: Project) -> HttpResponse:
    return redirect("connections", org_slug=project.organization.slug, project_slug=project.slug)


def _to_edit(project: Project, connection: ProviderConnection) -> HttpResponse:
    return redirect(
        "connection_edit",
        org_slug=project.organization.slug,
        project_slug=project.slug,
        pk=connection.pk,
    )


def _back(request: HttpRequest, project: Project, connection: ProviderConnection) -> HttpResponse:
    """Buttons on the edit page come back to it; the list's come back to the list."""
    if request.POST.get("next") == "edit" and not connection.is_global:
        return _to_edit(project, connection)
    return _to_list(project)


def _render_edit(
    request: HttpRequest,
    membership: Membership,
    project: Project,
    connection: ProviderConnection,
    *,
    form: ConnectionEditForm | None = None,
    model_form: ModelAddForm | None = None,
) -> HttpResponse:
    if form is None:
        initial = {field: getattr(connection, field) for field in EDITABLE_FIELDS}
        form = ConnectionEditForm(initial=initial, connection=connection)
    return render(
        request,
        "projects/connection_form.html",
        _context(
            membership,
            project,
            form=form,
            connection=connection,
            connection_models=connection.models.all(),
            model_form=model_form or ModelAddForm(),
        ),
    )


# --- connections -------------------------------------------------------------------------------


@project_view
def connection_list(request: HttpRequest, membership: Membership, project: Project) -> HttpResponse:
    require_manager(membership)
    connections = selectors.connections_for_project(project).annotate(model_count=Count("models"))
    return render(
        request, "projects/connections.html", _context(membership, project, connections=connections)
    )


@project_view
def connection_new(request: HttpRequest, membership: Membership, project: Project) -> HttpResponse:
    require_manager(membership)
    form = ConnectionForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        owner = None if data.pop("shared") else project
        preset = services.PRESETS.get(data["kind"])
        try:
            if preset is None:
                connection = services.connection_create(actor=membership, project=owner, **data)
            else:
                # Its address and models are the preset's: nothing is fetched from it here.
                connection = services.connection_create_preset(
                    actor=membership,
                    project=owner,
                    preset=preset.key,
                    name=data["name"],
                    api_key=data["api_key"],
                    timeout=data["timeout"],
                    max_retries=data["max_retries"],
                )
        except ServiceError as error:
            add_service_error(form, error, field_of_error=FIELD_OF_ERROR)
        else:
            if preset is None:
                added = _("Added “%(name)s”. Refresh its models to start using it.") % {
                    "name": connection.name
                }
            else:
                added = _("Added “%(name)s” with its models: %(models)s.") % {
                    "name": connection.name,
                    "models": ", ".join(preset.models),
                }
            messages.success(request, added)
            return _to_edit(project, connection)
    return render(
        request, "projects/connection_form.html", _context(membership, project, form=form)
    )


@project_view
def connection_edit(
    request: HttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    require_manager(membership)
    connection = _managed_connection(project, pk)
    if request.method != "POST":
        return _render_edit(request, membership, project, connection)
    form = ConnectionEditForm(request.POST, connection=connection)
    if form.is_valid():
        try:
            services.connection_update(actor=membership, connection=connection, **form.cleaned_data)
        except ServiceError as error:
            add_service_error(form, error, field_of_error=FIELD_OF_ERROR)
        else:
            messages.success(request, _("Saved “%(name)s”.") % {"name": connection.name})
            return _to_edit(project, connection)
    return _render_edit(request, membership, project, connection, form=form)


@project_view
def connection_delete(
    request: HttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    require_manager(membership)
    connection = _managed_connection(project, pk)
    if request.method == "POST":
        try:
            services.connection_delete(actor=membership, connection=connection)
        except ServiceError as error:
            raise_if_forbidden(error)
            messages.error(request, error.message)
        else:
            messages.success(request, _("Deleted “%(name)s”.") % {"name": connection.name})
            return _to_list(project)
    return render(
        request,
        "projects/connection_delete.html",
        _context(membership, project, connection=connection),
    )


@require_POST
@project_view
def connection_test(
    request: HttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    require_manager(membership)
    # Any connection the project sees, global ones included: testing changes nothing.
    connection = selectors.get_visible_connection_or_404(project=project, pk=pk)
    result = services.connection_check(connection)
    report = messages.success if result.ok else messages.error
    report(
        request,
        _("“%(name)s”: %(result)s") % {"name": connection.name, "result": result.message},
    )
    return _back(request, project, connection)


@require_POST
@project_view
def connection_refresh(
    request: HttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    require_manager(membership)
    connection = _managed_connection(project, pk)
    try:
        result = services.connection_refresh_models(actor=membership, connection=connection)
    except ServiceError as error:
        raise_if_forbidden(error)
        messages.error(request, error.message)
    else:
        if result.ok:
            names = ", ".join(result.models) or _("none")
            count = len(result.models)
            messages.success(
                request,
                ngettext(
                    "“%(name)s” serves %(count)d model: %(names)s.",
                    "“%(name)s” serves %(count)d models: %(names)s.",
                    count,
                )
                % {"name": connection.name, "count": count, "names": names},
            )
        else:
            messages.error(
                request,
                _("“%(name)s”: %(result)s") % {"name": connection.name, "result": result.message},
            )
    return _back(request, project, connection)


# --- a connection's models ---------------------------------------------------------------------


@require_POST
@project_view
def connection_model_add(
    request: HttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    require_manager(membership)
    connection = _managed_connection(project, pk)
    form = ModelAddForm(request.POST)
    if form.is_valid():
        try:
            model = services.connection_model_add(
                actor=membership, connection=connection, **form.cleaned_data
            )
        except ServiceError as error:
            add_service_error(form, error, field_of_error=FIELD_OF_ERROR)
        else:
            messages.success(request, _("Added the model %(name)s.") % {"name": model.name})
            return _to_edit(project, connection)
    return _render_edit(request, membership, project, connection, model_form=form)


@require_POST
@project_view
def connection_model_remove(
    request: HttpRequest, membership: Membership, project: Project, pk: int, model_pk: int
) -> HttpResponse:
    require_manager(membership)
    connection = _managed_connection(project, pk)
    model = get_object_or_404(connection.models, pk=model_pk)
    try:
        services.connection_model_remove(actor=membership, model=model)
    except ServiceError as error:
        raise_if_forbidden(error)
        messages.error(request, error.message)
    else:
        messages.success(request, _("Removed the model %(name)s.") % {"name": model.name})
    return _to_edit(project, connection)


# --- the models a project allows ---------------------------------------------------------------


@project_view
def project_models(request: HttpRequest, membership: Membership, project: Project) -> HttpResponse:
    if request.method == "POST":
        require_manager(membership)
    available = selectors.models_visible_to(project)
    # Not ``request.POST or None``: an empty POST is meaningful here (no allow-list).
    data = request.POST if request.method == "POST" else None
    form = ProjectModelsForm(data, model_ids=[m.pk for m in available])
    allow_list = selectors.saved_allow_list(project)
    selected = {allowed.model_id for allowed in allow_list}
    default_id = next((a.model_id for a in allow_list if a.is_default), None)
    if request.method == "POST" and form.is_valid():
        model_ids, default_id = form.cleaned_data["allowed"], form.cleaned_data["default"]
        try:
            services.project_models_set(
                actor=membership, project=project, model_ids=model_ids, default_id=default_id
            )
        except ServiceError as error:
            raise_if_forbidden(error)
            form.add_error(None, error.message)
            selected = set(model_ids)  # show what was asked, to fix it rather than redo it
        else:
            if model_ids:
                messages.success(
                    request,
                    ngettext(
                        "Saved: %(count)d model allowed.",
                        "Saved: %(count)d models allowed.",
                        len(model_ids),
                    )
                    % {"count": len(model_ids)},
                )
            else:
                messages.success(request, _("Every model of the visible connections is allowed."))
            return redirect(
                "project_models", org_slug=project.organization.slug, project_slug=project.slug
            )
    return render(
        request,
        "projects/models.html",
        _context(
            membership,
            project,
            form=form,
            available=available,
            selected=selected,
            default_id=default_id,
            has_allow_list=bool(allow_list),
            choices=selectors.model_choices(project),
        ),
    )
