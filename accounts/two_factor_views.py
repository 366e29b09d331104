"""Pages of two-factor authentication: turning it on and off, recovery codes, and the second
step of logging in. Thin: forms in, ``accounts.two_factor`` out."""

from __future__ import annotations

import django_otp
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from core.errors import ServiceError

from . import two_factor
from .decorators import AuthenticatedHttpRequest
from .forms import TwoFactorCodeForm


def _status_context(request: AuthenticatedHttpRequest) -> dict:
    user = request.user
    return {
        "device": two_factor.app_device(user),
        "codes_left": two_factor.recovery_codes_left(user),
        "requiring": two_factor.organizations_requiring(user),
    }


def _recovery_codes_page(request: HttpRequest, codes: list[str], *, first: bool) -> HttpResponse:
    # Rendered in answer to the POST that made them, never stored to be shown later: only
    # their digests exist once this page is gone.
    return render(
        request, "accounts/two_factor_recovery_codes.html", {"codes": codes, "first": first}
    )


@never_cache
@login_required
def two_factor_status(request: AuthenticatedHttpRequest) -> HttpResponse:
    return render(request, "accounts/two_factor.html", _status_context(request))


@never_cache
@login_required
def two_factor_setup(request: AuthenticatedHttpRequest) -> HttpResponse:
    """POST ``start``: a new secret. GET: the secret waiting for a code, as a QR code and as
    text. POST ``token``: the code that turns two-factor authentication on."""
    user = request.user
    if two_factor.has_two_factor(user):
        return redirect("two_factor")
    if request.method == "POST" and "start" in request.POST:
        two_factor.two_factor_start(user=user)
        return redirect("two_factor_setup")
    device = two_factor.pending_app_device(user)
    if device is None:
        return redirect("two_factor")
    form = TwoFactorCodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            result = two_factor.two_factor_confirm(user=user, token=form.cleaned_data["token"])
        except ServiceError as error:
            form.add_error("token", error.message)
        else:
            # The code just given proves the second factor for this session too.
            django_otp.login(request, result.device)
            messages.success(request, _("Two-factor authentication is on."))
            return _recovery_codes_page(request, result.recovery_codes, first=True)
    return render(
        request,
        "accounts/two_factor_setup.html",
        {
            "form": form,
            "qr_code": two_factor.qr_code_data_uri(device),
            "secret": two_factor.secret_text(device),
        },
    )


@never_cache
@require_POST
@login_required
def two_factor_recovery_codes(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = TwoFactorCodeForm(request.POST)
    if form.is_valid():
        try:
            codes = two_factor.recovery_codes_regenerate(
                user=request.user, token=form.cleaned_data["token"]
            )
        except ServiceError as error:
            messages.error(request, error.message)
        else:
            return _recovery_codes_page(request, codes, first=False)
    else:
        messages.error(request, _("Enter a code from your authenticator app."))
    return redirect("two_factor")


@require_POST
@login_required
def two_factor_disable(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = TwoFactorCodeForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Enter a code from your authenticator app or a recovery code."))
        return redirect("two_factor")
    try:
        two_factor.two_factor_disable(user=request.user, token=form.cleaned_data["token"])
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, _("Two-factor authentication is off."))
    return redirect("two_factor")


def _next_url(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    safe = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if safe else ""


@never_cache
@login_required
def two_factor_verify(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The second step of logging in, after the password: until it succeeds the session
    reaches nothing else (``accounts.middleware``)."""
    user = request.user
    next_url = _next_url(request)
    if two_factor.is_verified(user) or not two_factor.has_two_factor(user):
        return redirect(next_url or "home")
    form = TwoFactorCodeForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            verified = two_factor.two_factor_verify(user=user, code=form.cleaned_data["token"])
        except ServiceError as error:
            form.add_error("token", error.message)
            if error.code == "two_factor_locked":
                status = error.status  # 429: asking again now cannot succeed
        else:
            django_otp.login(request, verified.device)
            # A new session key for the session that now counts, as Django's login does.
            request.session.cycle_key()
            if verified.used_recovery_code:
                left = two_factor.recovery_codes_left(user)
                messages.warning(
                    request,
                    ngettext(
                        "You used a recovery code; %(left)d left. Each works once: make new ones "
                        "in Two-factor authentication if you are running low.",
                        "You used a recovery code; %(left)d left. Each works once: make new ones "
                        "in Two-factor authentication if you are running low.",
                        left,
                    )
                    % {"left": left},
                )
            return redirect(next_url or "home")
    return render(
        request,
        "registration/two_factor_verify.html",
        {"form": form, "next": next_url},
        status=status,
    )
