"""Pages of a person's data (export, account deletion) and of an organization's (retention,
deletion). Thin: forms in, services out; the organization comes resolved for its member
(``accounts.decorators.organization_view``), so an outsider gets 404 before anything else."""

from __future__ import annotations

import tempfile

from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts.decorators import AuthenticatedHttpRequest, organization_view, raise_if_forbidden
from accounts.models import Membership, User
from accounts.two_factor import has_two_factor
from billing.services import rate_take
from core.errors import ServiceError

from . import exports, selectors, services
from .forms import AccountDeleteForm, OrganizationDeleteForm, RetentionForm, TransferForm

# Exports a person may start per minute: each reads their whole account.
EXPORTS_PER_MINUTE = 3


def _require_owner(membership: Membership) -> None:
    """403 for a member or admin on an owner's page, before any form is read."""
    try:
        services.check_owner(membership)
    except ServiceError as error:
        raise PermissionDenied(error.message) from None


# --- export --------------------------------------------------------------------------------


@login_required
def account_export(request: AuthenticatedHttpRequest) -> HttpResponse:
    return render(request, "lifecycle/account_export.html", {})


def _export_response(user: User) -> FileResponse:
    rate_take(
        bucket=f"lifecycle:export:{user.pk}",
        allowed=EXPORTS_PER_MINUTE,
        what=gettext_noop("Downloading your data"),
    )
    now = timezone.now()
    # On disk, not in memory; gone once the response has sent it (FileResponse closes it).
    out = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the response
    try:
        exports.export_user_data(user=user, out=out, now=now)
        out.seek(0)
    except BaseException:
        out.close()
        raise
    response = FileResponse(
        out,
        as_attachment=True,
        filename=exports.export_filename(now),
        content_type="application/zip",
    )
    response["Cache-Control"] = "no-store"
    return response


@never_cache
@login_required
def account_export_download(request: AuthenticatedHttpRequest) -> HttpResponseBase:
    try:
        return _export_response(request.user)
    except ServiceError as error:
        messages.error(request, error.message)
        return redirect("account_export")


@extend_schema(tags=["Account"])
class MeExportView(APIView):
    """Everything of the signed-in person's, as a zip of JSON files: profile, memberships,
    their conversations with every message, their usage (the ledger rows of their calls). A
    person's, so signed in only: a project key is refused (403)."""

    allow_keys = False

    @extend_schema(
        operation_id="me_export",
        responses={
            (200, "application/zip"): OpenApiResponse(
                OpenApiTypes.BINARY, description="The zip (see export.json inside)."
            )
        },
    )
    def get(self, request: Request) -> FileResponse:
        user = request.user
        if not isinstance(user, User):  # the permissions let only a person or a key through
            raise PermissionDenied
        return _export_response(user)


# --- account deletion ----------------------------------------------------------------------------


def _deletion_context(request: AuthenticatedHttpRequest, form: AccountDeleteForm) -> dict:
    sole = selectors.sole_owned_organizations(request.user)
    return {
        "form": form,
        "sole_owned": sole,
        "waiting": [s for s in sole if not s.settled],
        "personal": list(selectors.personal_organizations(request.user)),
        "two_factor": has_two_factor(request.user),
    }


@never_cache
@login_required
def account_delete(request: AuthenticatedHttpRequest) -> HttpResponse:
    user = request.user
    form = AccountDeleteForm(request.POST or None, two_factor=has_two_factor(user))
    if request.method == "POST" and form.is_valid():
        try:
            services.account_delete(
                user=user,
                password=form.cleaned_data["password"],
                code=form.cleaned_data.get("code", ""),
            )
        except ServiceError as error:
            field = error.param if error.param in form.fields else None
            form.add_error(field, error.message)
        else:
            logout(request)
            messages.success(request, _("Your account and your data are deleted. Goodbye."))
            return redirect("login")
    status = 400 if form.errors else 200
    return render(
        request, "lifecycle/account_delete.html", _deletion_context(request, form), status=status
    )


@require_POST
@organization_view
def account_delete_transfer(
    request: AuthenticatedHttpRequest, membership: Membership
) -> HttpResponse:
    """From the account deletion page: make another member owner of an organization the
    person is the only owner of."""
    form = TransferForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose a member."))
        return redirect("account_delete")
    target = account_selectors.get_member_or_404(
        organization=membership.organization, membership_id=form.cleaned_data["member"]
    )
    try:
        services.organization_transfer(actor=membership, to=target)
    except ServiceError as error:
        raise_if_forbidden(error)
        messages.error(request, error.message)
    else:
        messages.success(
            request,
            _("%(email)s is now an owner of %(organization)s.")
            % {"email": target.user.email, "organization": membership.organization.name},
        )
    return redirect("account_delete")


# --- an organization's retention and deletion ---------------------------------------------------


@organization_view
def organization_retention(
    request: AuthenticatedHttpRequest, membership: Membership
) -> HttpResponse:
    _require_owner(membership)
    organization = membership.organization
    policy = selectors.retention_of(organization)
    form = RetentionForm(request.POST or None, initial={"days": policy.days if policy else None})
    if request.method == "POST" and form.is_valid():
        try:
            policy = services.retention_set(actor=membership, days=form.cleaned_data["days"])
        except ServiceError as error:
            raise_if_forbidden(error)
            form.add_error("days", error.message)
        else:
            if policy is None:
                messages.success(request, _("Conversations are kept until someone deletes them."))
            else:
                messages.success(
                    request,
                    _("Conversations are deleted %(days)s days after their last message.")
                    % {"days": policy.days},
                )
            return redirect("organization_retention", org_slug=organization.slug)
    return render(
        request,
        "lifecycle/organization_retention.html",
        {
            "form": form,
            "policy": policy,
            "membership": membership,
            "organization": organization,
        },
        status=400 if form.errors else 200,
    )


@organization_view
def organization_delete(request: AuthenticatedHttpRequest, membership: Membership) -> HttpResponse:
    _require_owner(membership)
    organization = membership.organization
    deletion = selectors.deletion_of(organization)
    form = OrganizationDeleteForm(request.POST or None)
    if request.method == "POST" and deletion is None and form.is_valid():
        try:
            deletion = services.organization_deletion_request(
                actor=membership, confirm_name=form.cleaned_data["name"]
            )
        except ServiceError as error:
            raise_if_forbidden(error)
            form.add_error("name" if error.param == "name" else None, error.message)
        else:
            messages.warning(
                request,
                _("%(organization)s will be deleted on %(date)s. Until then it makes no new calls.")
                % {
                    "organization": organization.name,
                    "date": services.day_of(deletion.scheduled_for),
                },
            )
            return redirect("organization_delete", org_slug=organization.slug)
    return render(
        request,
        "lifecycle/organization_delete.html",
        {
            "form": form,
            "deletion": deletion,
            "grace_days": services.grace_days(),
            "membership": membership,
            "organization": organization,
        },
        status=400 if form.errors else 200,
    )


@require_POST
@organization_view
def organization_delete_cancel(
    request: AuthenticatedHttpRequest, membership: Membership
) -> HttpResponse:
    _require_owner(membership)
    try:
        services.organization_deletion_cancel(actor=membership)
    except ServiceError as error:
        raise_if_forbidden(error)
        messages.error(request, error.message)
    else:
        messages.success(
            request,
            _("The deletion of %(organization)s is cancelled.")
            % {"organization": membership.organization.name},
        )
    return redirect("organization_delete", org_slug=membership.organization.slug)
