"""Pages of sign-up and login, organizations, projects, members, invitations and API keys."""

from django.contrib.auth import views as auth_views
from django.urls import include, path

from . import key_views, two_factor_views, views
from .forms import EmailAuthenticationForm

org = "orgs/<slug:org_slug>/"
project = org + "projects/<slug:project_slug>/"

urlpatterns = [
    path("", views.home, name="home"),
    path("signup/", views.signup, name="signup"),
    path(
        "login/",
        auth_views.LoginView.as_view(
            authentication_form=EmailAuthenticationForm, redirect_authenticated_user=True
        ),
        name="login",
    ),
    # The second step of logging in, for people with two-factor authentication.
    path("login/two-factor/", two_factor_views.two_factor_verify, name="two_factor_verify"),
    path("account/", views.account, name="account"),
    # Django's set_language (the language cookie), which also saves a signed-in person's choice.
    path("i18n/setlang/", views.set_language, name="set_language"),
    path("account/two-factor/", two_factor_views.two_factor_status, name="two_factor"),
    path("account/two-factor/setup/", two_factor_views.two_factor_setup, name="two_factor_setup"),
    path(
        "account/two-factor/recovery-codes/",
        two_factor_views.two_factor_recovery_codes,
        name="two_factor_recovery_codes",
    ),
    path(
        "account/two-factor/disable/",
        two_factor_views.two_factor_disable,
        name="two_factor_disable",
    ),
    # logout, password_change and the password_reset_* views, with Django's own templates names.
    path("", include("django.contrib.auth.urls")),
    path("invitations/<str:token>/", views.invitation_accept, name="invitation_accept"),
    path("verify-email/resend/", views.email_verification_resend, name="email_verification_resend"),
    path("verify-email/<str:token>/", views.email_verify, name="email_verify"),
    path("orgs/new/", views.organization_create, name="organization_create"),
    path(org, views.organization_settings, name="organization_settings"),
    path(org + "rename/", views.organization_rename, name="organization_rename"),
    path(org + "two-factor/", views.organization_two_factor, name="organization_two_factor"),
    path(org + "members/invite/", views.member_invite, name="member_invite"),
    path(org + "members/<int:pk>/role/", views.member_change_role, name="member_change_role"),
    path(org + "members/<int:pk>/remove/", views.member_remove, name="member_remove"),
    path(org + "invitations/<int:pk>/revoke/", views.invitation_revoke, name="invitation_revoke"),
    path(org + "invitations/<int:pk>/resend/", views.invitation_resend, name="invitation_resend"),
    path(org + "projects/new/", views.project_create, name="project_create"),
    path(project, views.project_detail, name="project_detail"),
    path(project + "settings/", views.project_settings, name="project_settings"),
    path(project + "delete/", views.project_delete, name="project_delete"),
    # Project settings: API keys (owners and admins only).
    path(project + "settings/api-keys/", key_views.api_key_list, name="api_keys"),
    path(
        project + "settings/api-keys/<int:pk>/revoke/",
        key_views.api_key_revoke,
        name="api_key_revoke",
    ),
]
