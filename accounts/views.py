"""Pages for accounts, organizations and projects. Thin: forms in, services out."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.utils import translation
from django.utils.translation import gettext as _
from django.views import i18n
from django.views.decorators.http import require_POST

from core.errors import ServiceError

from . import selectors, services, two_factor
from .decorators import (
    AuthenticatedHttpRequest,
    organization_view,
    organization_view_before_two_factor,
    project_view,
    raise_if_forbidden,
    require_manager,
    two_factor_required_page,
)
from .forms import (
    InviteForm,
    LanguageForm,
    NameForm,
    ProjectForm,
    RoleForm,
    SignUpForm,
    TwoFactorRequirementForm,
)
from .models import Membership, Project, Role


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    token = request.GET.get("invitation", "")
    invitation = services.invitation_for_token(token) if token else None
    initial = {"email": invitation.email} if invitation else {}
    form = SignUpForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        email = form.cleaned_data["email"]
        # Who came by a usable invitation link and signs up with its address has proven it.
        invited = invitation is not None and selectors.invitation_proves(invitation, email)
        try:
            user = services.user_sign_up(
                email=email,
                password=form.cleaned_data["password"],
                name=form.cleaned_data["name"],
                verified=invited,
            )
        except ServiceError as error:
            form.add_error("email", error.message)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            if not invited:
                services.email_verification_send(
                    user=user, site_url=request.build_absolute_uri("/")
                )
            if token:
                return redirect("invitation_accept", token=token)
            messages.success(
                request,
                _(
                    "Welcome! Your workspace is ready. We sent a link to %(email)s: open it to "
                    "confirm your address."
                )
                % {"email": user.email},
            )
            return redirect("home")
    return render(request, "accounts/signup.html", {"form": form, "invitation": invitation})


@login_required
def account(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The person's own settings: the interface's language, with the way to two-factor
    authentication and to changing the password."""
    form = LanguageForm(request.POST or None, initial={"language": request.user.language})
    if request.method == "POST" and form.is_valid():
        language = form.cleaned_data["language"]
        services.user_set_language(user=request.user, language=language)
        response = redirect("account")
        # The cookie too, so that the pages after logging out speak it; "the browser's" drops it.
        if language:
            response.set_cookie(
                settings.LANGUAGE_COOKIE_NAME,
                language,
                max_age=settings.LANGUAGE_COOKIE_AGE,
                path=settings.LANGUAGE_COOKIE_PATH,
                domain=settings.LANGUAGE_COOKIE_DOMAIN,
                secure=settings.LANGUAGE_COOKIE_SECURE,
                httponly=settings.LANGUAGE_COOKIE_HTTPONLY,
                samesite=settings.LANGUAGE_COOKIE_SAMESITE,
            )
        else:
            response.delete_cookie(settings.LANGUAGE_COOKIE_NAME)
            request.COOKIES.pop(settings.LANGUAGE_COOKIE_NAME, None)
        with translation.override(language or translation.get_language_from_request(request)):
            messages.success(request, _("Your language is saved."))
        return response
    return render(request, "accounts/account.html", {"form": form})


@require_POST
def set_language(request: HttpRequest) -> HttpResponseBase:
    """Django's ``set_language`` (the cookie, then back to ``next``), and for someone signed in
    their saved choice too: otherwise it would win over the cookie on the next page."""
    response = i18n.set_language(request)
    language = request.POST.get(i18n.LANGUAGE_QUERY_PARAMETER, "")
    if request.user.is_authenticated and language in dict(settings.LANGUAGES):
        services.user_set_language(user=request.user, language=language)
    return response


@login_required
def home(request: AuthenticatedHttpRequest) -> HttpResponse:
    organizations = selectors.organizations_with_projects_for_user(request.user)
    # Organizations whose two-factor requirement this session does not meet: named, with the
    # way in, but their projects unlisted.
    locked = {
        org.pk
        for org in organizations
        if not two_factor.two_factor_satisfied(user=request.user, organization=org)
    }
    return render(request, "accounts/home.html", {"organizations": organizations, "locked": locked})


@login_required
def organization_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = NameForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            organization = services.organization_create(
                name=form.cleaned_data["name"], owner=request.user
            )
        except ServiceError as error:
            form.add_error("name", error.message)
        else:
            messages.success(request, _("Created %(name)s.") % {"name": organization.name})
            return redirect("organization_settings", org_slug=organization.slug)
    return render(request, "orgs/create.html", {"form": form})


@organization_view
def organization_settings(
    request: AuthenticatedHttpRequest, membership: Membership
) -> HttpResponse:
    organization = membership.organization
    return render(
        request,
        "orgs/settings.html",
        {
            "membership": membership,
            "organization": organization,
            "members": two_factor.with_two_factor(selectors.members_of(organization)),
            "invitations": selectors.pending_invitations_of(organization),
            "projects": selectors.projects_for_user(request.user, organization=organization),
            "rename_form": NameForm(initial={"name": organization.name}),
            "invite_form": InviteForm(),
            "two_factor_form": TwoFactorRequirementForm(
                initial={"require_two_factor": organization.require_two_factor}
            ),
            "roles": Role.choices,
        },
    )


def _back_to_settings(membership: Membership) -> HttpResponse:
    return redirect("organization_settings", org_slug=membership.organization.slug)


@require_POST
@organization_view
def organization_rename(request: AuthenticatedHttpRequest, membership: Membership) -> HttpResponse:
    form = NameForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("The organization needs a name of at most 100 characters."))
        return _back_to_settings(membership)
    try:
        services.organization_rename(actor=membership, name=form.cleaned_data["name"])
    except ServiceError as error:
        raise_if_forbidden(error)
        messages.error(request, error.message)
    else:
        messages.success(request, _("Organization renamed."))
    return _back_to_settings(membership)


@require_POST
@organization_view
def organization_two_factor(
    request: AuthenticatedHttpRequest, membership: Membership
) -> HttpResponse:
    require_manager(membership)
    form = TwoFactorRequirementForm(request.POST)
    form.is_valid()  # a lone checkbox: absent is False, never invalid
    required = bool(form.cleaned_data.get("require_two_factor"))
    try:
        services.organization_set_two_factor_requirement(actor=membership, required=required)
    except ServiceError as error:
        raise_if_forbidden(error)
        messages.error(request, error.message)
    else:
        messages.success(
            request,
            _("Members now need two-factor authentication to reach this organization.")
            if required
            else _("Two-factor authentication is no longer required of members."),
        )
    return _back_to_settings(membership)


@require_POST
@organization_view
def member_invite(request: AuthenticatedHttpRequest, membership: Membership) -> HttpResponse:
    form = InviteForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            messages.error(request, " ".join(str(error) for error in errors))
        return _back_to_settings(membership)
    email = form.cleaned_data["email"]
    try:
        result = services.member_invite(
            actor=membership,
            email=email,
            role=form.cleaned_data["role"],
            site_url=request.build_absolute_uri("/"),
        )
    except ServiceError as error:
        raise_if_forbidden(error)
        messages.error(request, error.message)
    else:
        messages.success(
            request,
            _("Invitation sent to %(email)s: they join by its link, which works once.")
            % {"email": result.invitation.email},
        )
    return _back_to_settings(membership)


@require_POST
@organization_view
def member_change_role(
    request: AuthenticatedHttpRequest, membership: Membership, pk: int
) -> HttpResponse:
    target = selectors.get_member_or_404(organization=membership.organization, membership_id=pk)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose owner, admin or member."))
        return _back_to_settings(membership)
    try:
        services.membership_change_role(
            actor=membership, membership=target, role=form.cleaned_data["role"]
        )
    except ServiceError as error:
        raise_if_forbidden(error)
        messages.error(request, error.message)
    else:
        messages.success(
            request,
            _("%(email)s is now %(role)s.")
            % {"email": target.user.email, "role": target.get_role_display()},
        )
    return _back_to_settings(membership)


@require_POST
@organization_view_before_two_factor
def member_remove(
    request: AuthenticatedHttpRequest, membership: Membership, pk: int
) -> HttpResponseBase:
    target = selectors.get_member_or_404(organization=membership.organization, membership_id=pk)
    leaving = target.pk == membership.pk
    # Leaving needs no second factor; removing someone else does, as every other action.
    if not leaving and not two_factor.two_factor_satisfied(
        user=request.user, organization=membership.organization
    ):
        return two_factor_required_page(request, membership)
    try:
        services.membership_remove(actor=membership, membership=target)
    except ServiceError as error:
        raise_if_forbidden(error)
        messages.error(request, error.message)
        return _back_to_settings(membership)
    if leaving:
        messages.success(request, _("You left %(name)s.") % {"name": membership.organization.name})
        return redirect("home")
    messages.success(request, _("Removed %(email)s.") % {"email": target.user.email})
    return _back_to_settings(membership)


@require_POST
@organization_view
def invitation_revoke(
    request: AuthenticatedHttpRequest, membership: Membership, pk: int
) -> HttpResponse:
    invitation = selectors.get_invitation_or_404(
        organization=membership.organization, invitation_id=pk
    )
    try:
        services.invitation_revoke(actor=membership, invitation=invitation)
    except ServiceError as error:
        raise_if_forbidden(error)
        messages.error(request, error.message)
    else:
        messages.success(
            request, _("Invitation for %(email)s revoked.") % {"email": invitation.email}
        )
    return _back_to_settings(membership)


@require_POST
@organization_view
def invitation_resend(
    request: AuthenticatedHttpRequest, membership: Membership, pk: int
) -> HttpResponse:
    invitation = selectors.get_invitation_or_404(
        organization=membership.organization, invitation_id=pk
    )
    try:
        services.invitation_resend(
            actor=membership, invitation=invitation, site_url=request.build_absolute_uri("/")
        )
    except ServiceError as error:
        raise_if_forbidden(error)
        messages.error(request, error.message)
    else:
        messages.success(
            request,
            _("Invitation sent to %(email)s again, with a new link.") % {"email": invitation.email},
        )
    return _back_to_settings(membership)


def email_verify(request: HttpRequest, token: str) -> HttpResponse:
    """The link from the confirmation e-mail."""
    try:
        user = services.email_verify(token=token)
    except ServiceError as error:
        return render(request, "accounts/verify_email.html", {"error": error.message}, status=400)
    messages.success(request, _("Thank you: %(email)s is confirmed.") % {"email": user.email})
    return redirect("home")


@require_POST
@login_required
def email_verification_resend(request: AuthenticatedHttpRequest) -> HttpResponse:
    services.email_verification_send(user=request.user, site_url=request.build_absolute_uri("/"))
    messages.success(request, _("We sent a new link to %(email)s.") % {"email": request.user.email})
    return redirect(request.POST.get("next") or "home")


def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    invitation = services.invitation_for_token(token)
    user = request.user if request.user.is_authenticated else None
    try:
        services.check_invitation_usable(invitation=invitation, user=user)
    except ServiceError as error:
        return render(
            request,
            "orgs/invitation.html",
            {"error": error.message, "invitation": invitation},
            status=404 if error.code == "invalid_invitation" else 400,
        )
    if request.method == "POST" and user is not None:
        membership = services.invitation_accept(token=token, user=user)
        messages.success(
            request, _("You joined %(name)s.") % {"name": membership.organization.name}
        )
        return redirect("organization_settings", org_slug=membership.organization.slug)
    return render(request, "orgs/invitation.html", {"invitation": invitation, "token": token})


@organization_view
def project_create(request: AuthenticatedHttpRequest, membership: Membership) -> HttpResponse:
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            project = services.project_create(actor=membership, **form.cleaned_data)
        except ServiceError as error:
            raise_if_forbidden(error)
            form.add_error(None, error.message)
        else:
            messages.success(request, _("Created project %(name)s.") % {"name": project.name})
            return redirect(
                "project_detail", org_slug=project.organization.slug, project_slug=project.slug
            )
    return render(
        request,
        "projects/create.html",
        {"form": form, "membership": membership, "organization": membership.organization},
    )


@project_view
def project_detail(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    return render(
        request,
        "projects/detail.html",
        {"project": project, "membership": membership, "organization": project.organization},
    )


@project_view
def project_settings(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    require_manager(membership)  # a member is refused the page itself, not only the save
    initial = {"name": project.name, "default_system_prompt": project.default_system_prompt}
    form = ProjectForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            services.project_update(actor=membership, project=project, **form.cleaned_data)
        except ServiceError as error:
            raise_if_forbidden(error)
            form.add_error(None, error.message)
        else:
            messages.success(request, _("Project saved."))
            return redirect(
                "project_settings", org_slug=project.organization.slug, project_slug=project.slug
            )
    return render(
        request,
        "projects/settings.html",
        {
            "form": form,
            "project": project,
            "membership": membership,
            "organization": project.organization,
        },
    )


@project_view
def project_delete(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    require_manager(membership)
    if request.method == "POST":
        try:
            services.project_delete(actor=membership, project=project)
        except ServiceError as error:
            raise_if_forbidden(error)
            messages.error(request, error.message)
        else:
            messages.success(request, _("Deleted project %(name)s.") % {"name": project.name})
            return redirect("organization_settings", org_slug=project.organization.slug)
    return render(
        request,
        "projects/delete.html",
        {"project": project, "membership": membership, "organization": project.organization},
    )
