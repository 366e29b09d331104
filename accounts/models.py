"""Users, and the tenancy tree: Organization (the tenant) → Project, Membership gives roles.

Tenant data is reached only through the ``for_user`` querysets (via ``accounts.selectors``);
another tenant's row answers 404 exactly like a missing one.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import TYPE_CHECKING, ClassVar

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import AnonymousUser, PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

if TYPE_CHECKING:
    from django_otp.models import Device


def normalize_address(raw: str) -> str:
    """The one stored and compared form of an e-mail address: Unicode NFKC (full-width letters,
    U+FF21 and on, are plain ones), no surrounding space, lower case. Login, sign-up, invitations
    and the lockout all use it, so case or Unicode variants of an address are that address."""
    return unicodedata.normalize("NFKC", raw or "").strip().lower()


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra) -> User:
        if not email:
            raise ValueError("An e-mail address is required.")
        user = self.model(email=normalize_address(email), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra) -> User:
        extra["is_staff"] = True
        extra["is_superuser"] = True
        return self._create_user(email, password, **extra)

    def get_by_natural_key(self, username: str | None) -> User:
        # E-mail addresses are compared in their normalized form at login.
        return self.get(email__iexact=normalize_address(username or ""))


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField("e-mail address", unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_staff = models.BooleanField(
        default=False, help_text="Can log into the admin site (cost limits, prices)."
    )
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)
    # When the person proved they receive mail at ``email`` (the link sent at sign-up, or an
    # invitation's link); None until then.
    email_verified_at = models.DateTimeField(null=True, blank=True)
    # The interface's language; empty: whatever the browser asks for (Accept-Language).
    language = models.CharField(
        _("language"),
        max_length=10,
        blank=True,
        choices=settings.LANGUAGES,
        help_text=_("Empty: the language your browser asks for."),
    )

    objects = UserManager()

    # Not a column: set on each request by django-otp's OTPMiddleware (and on sockets by
    # accounts.two_factor.socket_user) to the device that verified the session, or None.
    otp_device: Device | None

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
        ]

    def __str__(self) -> str:
        return self.email

    def clean(self) -> None:
        super().clean()
        self.email = normalize_address(self.email)

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None

    def get_full_name(self) -> str:
        return self.name or self.email

    def get_short_name(self) -> str:
        return self.name.split(" ")[0] if self.name else self.email.split("@")[0]


# Whom a request comes from: a person, or nobody signed in. The scoped paths (``for_user``)
# answer nothing for nobody.
AnyUser = User | AnonymousUser


class Role(models.TextChoices):
    OWNER = "owner", _("Owner")
    ADMIN = "admin", _("Admin")
    MEMBER = "member", _("Member")


# Roles that may manage an organization's members, projects and settings.
MANAGER_ROLES = frozenset({Role.OWNER, Role.ADMIN})


class OrganizationQuerySet(models.QuerySet["Organization"]):
    def for_user(self, user: AnyUser) -> OrganizationQuerySet:
        if not user.is_authenticated:
            return self.none()
        return self.filter(memberships__user=user)


class Organization(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=60, unique=True)
    is_personal = models.BooleanField(
        default=False, help_text="Created at sign-up for a single user."
    )
    # Members without two-factor authentication are refused the organization's pages, REST
    # (by session) and sockets until they turn it on; its projects' API keys are not people
    # and are not affected.
    require_two_factor = models.BooleanField(
        "require two-factor authentication",
        default=False,
        help_text="Members must turn on two-factor authentication to reach this organization.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="organizations"
    )

    objects = OrganizationQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class MembershipQuerySet(models.QuerySet["Membership"]):
    def for_organization(self, organization: Organization) -> MembershipQuerySet:
        return self.filter(organization=organization)


class Membership(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "organization"], name="accounts_membership_unique"
            ),
        ]
        ordering = ["organization", "user__email"]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"

    @property
    def can_manage(self) -> bool:
        return self.role in MANAGER_ROLES


class ProjectQuerySet(models.QuerySet["Project"]):
    def for_user(self, user: AnyUser) -> ProjectQuerySet:
        if not user.is_authenticated:
            return self.none()
        return self.filter(organization__memberships__user=user)

    def for_organization(self, organization: Organization) -> ProjectQuerySet:
        return self.filter(organization=organization)


class Project(models.Model):
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="projects"
    )
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=60)
    default_system_prompt = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ProjectQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "slug"], name="accounts_project_slug_unique"
            ),
        ]
        ordering = ["organization", "name"]

    def __str__(self) -> str:
        return f"{self.organization} / {self.name}"


def hash_token(token: str) -> str:
    """Digest under which one-time tokens are stored: a database leak must not leak links."""
    return hashlib.sha256(token.encode()).hexdigest()


class InvitationQuerySet(models.QuerySet["Invitation"]):
    def for_organization(self, organization: Organization) -> InvitationQuerySet:
        return self.filter(organization=organization)

    def pending(self) -> InvitationQuerySet:
        return self.filter(accepted_at__isnull=True, expires_at__gt=timezone.now())

    def open(self) -> InvitationQuerySet:
        """Not accepted yet, expired or not (admins see both, and may send an expired one
        again)."""
        return self.filter(accepted_at__isnull=True)


class Invitation(models.Model):
    """An invitation for an e-mail address, accepted only through the link sent to it (by whoever
    reads that mailbox, with an account already or not)."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="invitations"
    )
    email = models.EmailField()
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    token_digest = models.CharField(max_length=64, unique=True, editable=False)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)

    objects = InvitationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["organization", "email"])]

    def __str__(self) -> str:
        return f"Invitation of {self.email} to {self.organization}"

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def for_project(self, project: Project) -> ApiKeyQuerySet:
        return self.filter(project=project)

    def usable(self) -> ApiKeyQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiKey(models.Model):
    """A project's key for REST consumers. Only a digest of the secret is stored; the key
    itself is shown once, at creation (see accounts/api_keys.py for its format)."""

    class Scope(models.TextChoices):
        CHAT = "chat", "chat: call models (chat completions)"
        READ = "read", "read: read conversations, usage and models"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="api_keys")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    name = models.CharField(max_length=100)
    scopes = models.CharField(max_length=50, default="chat,read")
    # What identifies the key without revealing it: an indexed lookup prefix, the SHA-256 of the
    # whole key, and its last four characters for people to recognise it by.
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    last4 = models.CharField(max_length=4, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Per-key limits, on top of the project's (billing.RateLimit); empty: none.
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.display})"

    @property
    def display(self) -> str:
        return f"{self.prefix}…{self.last4}"

    def scope_list(self) -> list[str]:
        return [s for s in self.scopes.split(",") if s]

    def has_scope(self, scope: str) -> bool:
        return scope in self.scope_list()

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and (
            self.expires_at is None or self.expires_at > timezone.now()
        )
