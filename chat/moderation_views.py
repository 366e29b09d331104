"""Moderation pages of a project: its settings and what was flagged. The organization's owners
and admins only (a member gets 403, as on the other pages that manage a project; an outsider
404): flagged excerpts are other people's words. Thin: ``chat.moderation`` checks and writes."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.decorators import AuthenticatedHttpRequest, project_view, require_manager
from accounts.models import Membership, Project
from core.errors import ServiceError

from . import moderation
from .models import ModerationFlag

FLAGS_PER_PAGE = 50


class ModerationForm(forms.Form):
    enabled = forms.BooleanField(
        label=gettext_lazy("Check messages before they are sent"), required=False
    )
    check_replies = forms.BooleanField(
        label=gettext_lazy("Check each finished reply too"), required=False
    )
    patterns = forms.CharField(
        label=gettext_lazy("Pattern list"),
        required=False,
        strip=False,
        max_length=moderation.MAX_PATTERNS_CHARS,
        widget=forms.Textarea(attrs={"rows": 10, "spellcheck": "false"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # form_fields.html shows help texts unescaped: built with format_html.
        self.fields["patterns"].help_text = format_html(
            "{} <code>{}</code> {} <code>{}</code>",
            _(
                "Used for the models whose connection has no /v1/moderations. One rule per line: "
                "a category, a colon, a regular expression (case-insensitive); blank lines and "
                "lines starting with # are skipped. For example:"
            ),
            r"violence: \b(kill|murder|stab)\w*",
            _("or"),
            r"harassment: \byou (idiot|moron)\b",
        )


@project_view
def moderation_settings(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    require_manager(membership)
    current = moderation.settings_for(project)
    form = ModerationForm(
        request.POST if request.method == "POST" else None,
        initial={
            "enabled": current.moderation_enabled,
            "check_replies": current.moderation_check_replies,
            "patterns": current.moderation_patterns,
        },
    )
    if request.method == "POST" and form.is_valid():
        try:
            moderation.moderation_update(actor=membership, project=project, **form.cleaned_data)
        except ServiceError as error:
            form.add_error(error.param if error.param in form.fields else None, error.message)
        else:
            messages.success(request, _("Moderation settings saved."))
            return redirect(
                "moderation_settings",
                org_slug=project.organization.slug,
                project_slug=project.slug,
            )
    checks = moderation.model_checks(project)
    return render(
        request,
        "chat/moderation_settings.html",
        {
            "project": project,
            "organization": project.organization,
            "membership": membership,
            "form": form,
            "current": current,
            "checks": checks,
            "by_patterns": [check for check in checks if not check.by_connection],
            "moderation_model": settings.MODERATION_MODEL,
            "flag_count": ModerationFlag.objects.for_project(project).count(),
        },
        status=400 if form.errors else 200,
    )


@project_view
def moderation_flags(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    require_manager(membership)
    flags = ModerationFlag.objects.for_project(project).select_related("user", "api_key")
    page = Paginator(flags, FLAGS_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "chat/moderation_flags.html",
        {
            "project": project,
            "organization": project.organization,
            "membership": membership,
            "page": page,
        },
    )
