"""Staff views of users, organizations, projects, memberships, invitations and API keys."""

from __future__ import annotations

from typing import TypedDict

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.db.models import Count
from django_stubs_ext import WithAnnotations

from core import config_cache

from .models import ApiKey, Invitation, Membership, Organization, Project, User
from .signals import AuditedAdmin

# What staff's changes here are recorded as in the audit trail (accounts.signals.AuditedAdmin).
MEMBER_AUDIT = {"add": "member.added", "change": "member.role_changed", "delete": "member.removed"}
PROJECT_AUDIT = {"delete": "project.deleted"}


class _Counts(TypedDict):
    """What the organization list annotates each row with."""

    _members: int
    _projects: int


class UserCreationForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email",)


class UserEditForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(User)
class UserAdmin(AuditedAdmin, DjangoUserAdmin):
    audit_actions = {"change": "user.access_changed"}
    audit_fields = ("is_active", "is_staff", "is_superuser")
    add_form = UserCreationForm
    form = UserEditForm
    ordering = ["email"]
    list_display = ["email", "name", "is_active", "is_staff", "date_joined", "last_login"]
    list_filter = ["is_active", "is_staff", "is_superuser", "date_joined"]
    search_fields = ["email", "name"]
    fieldsets = [
        (None, {"fields": ["email", "password", "name", "language"]}),
        (
            "Permissions",
            {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]},
        ),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [
        (None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]}),
    ]
    readonly_fields = ["last_login", "date_joined"]


class ProjectInline(admin.TabularInline):
    model = Project
    extra = 0
    fields = ["name", "slug", "created_at"]
    readonly_fields = ["created_at"]
    show_change_link = True


@admin.register(Organization)
class OrganizationAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_actions = {"change": "organization.two_factor_changed", "delete": "organization.deleted"}
    audit_fields = ("require_two_factor",)
    audit_inlines = {Membership: MEMBER_AUDIT, Project: PROJECT_AUDIT}
    list_display = ["name", "slug", "is_personal", "member_count", "project_count", "created_at"]
    list_filter = ["is_personal", "created_at"]
    search_fields = ["name", "slug", "memberships__user__email"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline, ProjectInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                _members=Count("memberships", distinct=True),
                _projects=Count("projects", distinct=True),
            )
        )

    @admin.display(description="members", ordering="_members")
    def member_count(self, obj: WithAnnotations[Organization, _Counts]) -> int:
        return obj._members

    @admin.display(description="projects", ordering="_projects")
    def project_count(self, obj: WithAnnotations[Organization, _Counts]) -> int:
        return obj._projects


@admin.register(Project)
class ProjectAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_actions = PROJECT_AUDIT
    list_display = ["name", "organization", "slug", "created_at"]
    list_filter = ["created_at"]
    list_select_related = ["organization"]
    search_fields = ["name", "slug", "organization__name", "organization__slug"]
    autocomplete_fields = ["organization"]


@admin.register(Membership)
class MembershipAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_actions = MEMBER_AUDIT
    audit_fields = ("role",)
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role", "created_at"]
    list_select_related = ["user", "organization"]
    search_fields = ["user__email", "organization__name", "organization__slug"]
    autocomplete_fields = ["user", "organization"]


@admin.register(Invitation)
class InvitationAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_actions = {"change": "invitation.updated", "delete": "invitation.revoked"}
    list_display = ["email", "organization", "role", "invited_by", "expires_at", "accepted_at"]
    list_filter = ["role", "expires_at", "accepted_at"]
    list_select_related = ["organization", "invited_by"]
    search_fields = ["email", "organization__name"]
    # The link itself is never stored; only its digest, which is useless to show.
    exclude = ["token_digest"]
    readonly_fields = ["organization", "email", "invited_by", "created_at", "accepted_at"]

    def has_add_permission(self, request) -> bool:
        # Invitations carry a one-time link that only the e-mail ever holds: create them from
        # the organization's settings page, which sends it.
        return False


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_actions = {"change": "api_key.updated", "delete": "api_key.deleted"}
    list_display = ["name", "project", "display", "scopes", "created_by", "last_used_at",
                    "expires_at", "revoked_at"]  # fmt: skip
    list_filter = ["revoked_at", "expires_at", "created_at"]
    list_select_related = ["project__organization", "created_by"]
    search_fields = ["name", "prefix", "project__name", "project__organization__name"]
    # The digest is useless to people; the key itself was shown once and is gone.
    exclude = ["digest"]
    readonly_fields = ["project", "created_by", "display", "last_used_at", "created_at"]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False  # keys are made on the project's API keys page, which shows them once

    def audit_action_for_change(self, changes) -> str | None:
        revoked = changes.get("revoked_at")
        if isinstance(revoked, list) and revoked[0] is None and revoked[1] is not None:
            return "api_key.revoked"
        return super().audit_action_for_change(changes)

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request, queryset) -> None:
        from django.db import transaction
        from django.utils import timezone

        now = timezone.now()
        with transaction.atomic():  # the revocations and their audit events, or neither
            keys = list(
                queryset.filter(revoked_at__isnull=True).select_related("project__organization")
            )
            ApiKey.objects.filter(pk__in=[key.pk for key in keys]).update(revoked_at=now)
            for key in keys:
                self.audit(request, "api_key.revoked", key, {"revoked_at": [None, now]})
        config_cache.invalidate()  # update() sends no signal: keys are kept in memory
