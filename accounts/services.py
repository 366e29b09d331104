"""Writes on users, organizations, projects and memberships.

Every function is keyword-only and atomic; permission checks (``check_*``) come before the
writes (``do``-style functions below them), and e-mails leave only after the commit.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.db.models import Model
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.text import slugify
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from core.errors import ServiceError

from .models import (
    MANAGER_ROLES,
    Invitation,
    Membership,
    Organization,
    Project,
    Role,
    User,
    hash_token,
    normalize_address,
)
from .selectors import owner_count
from .signals import Target, record_change
from .tasks import send_email
from .two_factor import has_two_factor

DEFAULT_PROJECT_NAME = "Default"


def _unique_slug(model: type[Model], name: str, *, max_length: int = 60, **scope) -> str:
    base = slugify(name)[: max_length - 4] or "x"
    slug, n = base, 1
    while model._default_manager.filter(slug=slug, **scope).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def _send_email_on_commit(*, subject: str, body: str, to: list[str]) -> None:
    transaction.on_commit(partial(send_email.delay, subject=subject, body=body, to=to))


# --- permission checks -----------------------------------------------------------------------


def check_can_manage(actor: Membership) -> None:
    if actor.role not in MANAGER_ROLES:
        raise ServiceError(
            _("Only owners and admins of this organization can do that."), code="forbidden"
        )


def check_role_change(*, actor: Membership, membership: Membership, role: str) -> None:
    check_can_manage(actor)
    if role not in Role.values:
        raise ServiceError(_("Unknown role %(role)r.") % {"role": role})
    touches_owner = Role.OWNER in (role, membership.role)
    if touches_owner and actor.role != Role.OWNER:
        raise ServiceError(
            _("Only an owner can grant or take away the owner role."), code="forbidden"
        )
    if membership.role == Role.OWNER and role != Role.OWNER:
        _check_not_last_owner(membership)


def check_removal(*, actor: Membership, membership: Membership) -> None:
    if actor.pk != membership.pk:  # anyone may leave; removing others takes a manager
        check_can_manage(actor)
        if membership.role == Role.OWNER and actor.role != Role.OWNER:
            raise ServiceError(_("Only an owner can remove an owner."), code="forbidden")
    if membership.role == Role.OWNER:
        _check_not_last_owner(membership)


def _check_not_last_owner(membership: Membership) -> None:
    if owner_count(membership.organization) <= 1:
        raise ServiceError(
            _("An organization must keep at least one owner: make someone else an owner first."),
            code="last_owner",
        )


# --- users and organizations ------------------------------------------------------------------


@transaction.atomic
def user_sign_up(*, email: str, password: str, name: str = "", verified: bool = False) -> User:
    """Create the account with its personal organization and a default project. ``verified``:
    the address is already proven (the person came by an invitation link sent to it)."""
    email = normalize_address(email)
    if User.objects.filter(email__iexact=email).exists():
        raise ServiceError(_("An account with this e-mail address already exists."), code="taken")
    try:
        user = User.objects.create_user(
            email=email,
            password=password,
            name=name,
            email_verified_at=timezone.now() if verified else None,
        )
    except IntegrityError:  # lost a race with a concurrent sign-up for the same address
        raise ServiceError(
            _("An account with this e-mail address already exists."), code="taken"
        ) from None
    label = name.strip() or email.split("@")[0]
    organization_create(
        name=_("%(name)s's workspace") % {"name": label}, owner=user, is_personal=True
    )
    return user


@transaction.atomic
def user_set_language(*, user: User, language: str) -> User:
    """The language of the person's pages, sockets and e-mails; empty: the browser's."""
    if language and language not in dict(settings.LANGUAGES):
        raise ServiceError(_("Unknown language %(language)r.") % {"language": language})
    user.language = language
    user.save(update_fields=["language"])
    return user


# --- e-mail verification ----------------------------------------------------------------------

# A signed, expiring token naming the account and the address it proves: nothing is stored,
# and a link sent before the address changed proves nothing about the new one.
VERIFICATION_SALT = "accounts.email-verification"


def email_verification_token(user: User) -> str:
    return signing.dumps({"user": user.pk, "email": user.email}, salt=VERIFICATION_SALT)


def email_verification_send(*, user: User, site_url: str) -> None:
    """Mail the person a link that proves they read mail at their address."""
    if user.email_verified:
        return
    link = site_url.rstrip("/") + reverse("email_verify", args=[email_verification_token(user)])
    days = settings.EMAIL_VERIFICATION_TTL.days
    with translation.override(_language_of(user)):
        subject = _("Confirm your e-mail address")
        body = (
            _("Confirm that %(email)s is yours: %(link)s") % {"email": user.email, "link": link}
            + "\n\n"
            + ngettext(
                "The link works for %(days)d day. If you did not sign up, ignore this message.",
                "The link works for %(days)d days. If you did not sign up, ignore this message.",
                days,
            )
            % {"days": days}
        )
    _send_email_on_commit(subject=subject, body=body, to=[user.email])


def _mark_verified(user: User) -> None:
    if not user.email_verified:
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at"])


@transaction.atomic
def email_verify(*, token: str) -> User:
    """The account a verification link names, now verified."""
    try:
        data = signing.loads(token, salt=VERIFICATION_SALT, max_age=settings.EMAIL_VERIFICATION_TTL)
    except signing.SignatureExpired:
        raise ServiceError(
            _("This link has expired. Log in and ask for a new one."), code="verification_expired"
        ) from None
    except signing.BadSignature:
        raise ServiceError(_("This link is not valid."), code="invalid_verification") from None
    user = User.objects.filter(pk=data.get("user"), email=data.get("email"), is_active=True).first()
    if user is None:  # the account is gone, or its address changed since the link was sent
        raise ServiceError(_("This link is not valid."), code="invalid_verification")
    _mark_verified(user)
    return user


@transaction.atomic
def organization_create(*, name: str, owner: User, is_personal: bool = False) -> Organization:
    name = name.strip()
    if not name:
        raise ServiceError(_("The organization needs a name."))
    organization = Organization.objects.create(
        name=name, slug=_unique_slug(Organization, name), is_personal=is_personal
    )
    Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
    Project.objects.create(
        organization=organization,
        name=DEFAULT_PROJECT_NAME,
        slug=slugify(DEFAULT_PROJECT_NAME),
    )
    return organization


@transaction.atomic
def organization_rename(*, actor: Membership, name: str) -> Organization:
    check_can_manage(actor)
    name = name.strip()
    if not name:
        raise ServiceError(_("The organization needs a name."))
    organization = actor.organization
    organization.name = name
    organization.save(update_fields=["name"])
    return organization


@transaction.atomic
def organization_set_two_factor_requirement(*, actor: Membership, required: bool) -> Organization:
    """Require two-factor authentication of every member (or stop requiring it). Who turns it
    on must have it: otherwise the first person it shut out would be themselves."""
    check_can_manage(actor)
    if required and not has_two_factor(actor.user):
        raise ServiceError(
            _("Turn on two-factor authentication for your own account first."),
            code="two_factor_required",
        )
    organization = actor.organization
    before = organization.require_two_factor
    organization.require_two_factor = required
    organization.save(update_fields=["require_two_factor"])
    record_change(
        action="organization.two_factor_changed",
        organization=organization,
        actor=actor,
        target=organization,
        changes={"require_two_factor": [before, required]} if before != required else {},
    )
    return organization


# --- projects ---------------------------------------------------------------------------------


@transaction.atomic
def project_create(*, actor: Membership, name: str, default_system_prompt: str = "") -> Project:
    check_can_manage(actor)
    name = name.strip()
    if not name:
        raise ServiceError(_("The project needs a name."))
    organization = actor.organization
    return Project.objects.create(
        organization=organization,
        name=name,
        slug=_unique_slug(Project, name, organization=organization),
        default_system_prompt=default_system_prompt,
    )


@transaction.atomic
def project_update(
    *, actor: Membership, project: Project, name: str, default_system_prompt: str
) -> Project:
    """Rename a project. Its slug stays, so links and bookmarks keep working."""
    check_can_manage(actor)
    name = name.strip()
    if not name:
        raise ServiceError(_("The project needs a name."))
    project.name = name
    project.default_system_prompt = default_system_prompt
    project.save(update_fields=["name", "default_system_prompt"])
    return project


@transaction.atomic
def project_delete(*, actor: Membership, project: Project) -> None:
    check_can_manage(actor)
    # Before the delete, while it has its id; its name stays on the event.
    record_change(
        action="project.deleted",
        organization=project.organization,
        actor=actor,
        project=project,
        target=project,
    )
    project.delete()


# --- members and invitations ------------------------------------------------------------------


@dataclass(frozen=True)
class InviteResult:
    invitation: Invitation  # the address got a link; only its reader can accept it


@transaction.atomic
def member_invite(*, actor: Membership, email: str, role: str, site_url: str) -> InviteResult:
    """E-mail the address an invitation link that expires. Whoever can read that mailbox joins
    by the link, with an account or by signing up; an account that merely claims the address is
    never added (anyone may sign up with any address).

    ``site_url`` is the absolute root (``https://host/``) the links in the e-mail start with.
    """
    check_can_manage(actor)
    if role not in Role.values:
        raise ServiceError(_("Unknown role %(role)r.") % {"role": role})
    if role == Role.OWNER and actor.role != Role.OWNER:
        raise ServiceError(_("Only an owner can invite another owner."), code="forbidden")
    organization = actor.organization
    email = normalize_address(email)
    inviter = actor.user.get_full_name()

    if Membership.objects.filter(user__email__iexact=email, organization=organization).exists():
        raise ServiceError(
            _("%(email)s is already a member of %(organization)s.")
            % {"email": email, "organization": organization.name}
        )

    # A new invitation replaces any earlier one for the same address.
    Invitation.objects.for_organization(organization).filter(
        email=email, accepted_at__isnull=True
    ).delete()
    invitation = Invitation(
        organization=organization, email=email, role=role, invited_by=actor.user
    )
    _send_invitation(invitation, inviter=inviter, site_url=site_url)
    record_change(
        action="member.invited",
        organization=organization,
        actor=actor,
        target=Target.of(invitation, label=email),
        changes={"email": [None, email], "role": [None, role]},
    )
    return InviteResult(invitation=invitation)


def _send_invitation(invitation: Invitation, *, inviter: str, site_url: str) -> None:
    """Give the invitation a fresh token and expiry, save it, and mail its link."""
    token = secrets.token_urlsafe(32)
    invitation.token_digest = hash_token(token)
    invitation.expires_at = timezone.now() + settings.INVITATION_TTL
    invitation.save()
    organization = invitation.organization
    link = site_url.rstrip("/") + reverse("invitation_accept", args=[token])
    # In the language of the account the address has, if it has one; else the inviter's.
    invitee = User.objects.filter(email__iexact=invitation.email).first()
    language = _language_of(invitee) if invitee else translation.get_language()
    with translation.override(language):
        names = {"inviter": inviter, "organization": organization.name}
        subject = _("%(inviter)s invited you to %(organization)s") % names
        body = "\n\n".join(
            [
                _("%(inviter)s invited you to join %(organization)s as %(role)s.")
                % {**names, "role": invitation.get_role_display()},
                _("Accept the invitation: %(link)s") % {"link": link},
                _("The link expires on %(date)s.") % {"date": _format(invitation.expires_at)},
            ]
        )
    _send_email_on_commit(subject=subject, body=body, to=[invitation.email])


@transaction.atomic
def invitation_resend(*, actor: Membership, invitation: Invitation, site_url: str) -> Invitation:
    """Mail the invitation again with a new link (the old one stops working) and a new expiry:
    for one that expired, or whose mail went astray."""
    check_can_manage(actor)
    if invitation.accepted_at is not None:
        raise ServiceError(
            _("%(email)s has already accepted this invitation.") % {"email": invitation.email}
        )
    _send_invitation(invitation, inviter=actor.user.get_full_name(), site_url=site_url)
    record_change(
        action="invitation.resent",
        organization=invitation.organization,
        actor=actor,
        target=Target.of(invitation, label=invitation.email),
    )
    return invitation


def _format(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _language_of(user: User) -> str:
    """The language to write to someone in: their choice, else the one this request speaks."""
    return user.language or translation.get_language() or settings.LANGUAGE_CODE


def invitation_for_token(token: str) -> Invitation | None:
    return (
        Invitation.objects.select_related("organization")
        .filter(token_digest=hash_token(token))
        .first()
    )


def check_invitation_usable(*, invitation: Invitation | None, user: User | None = None) -> None:
    if invitation is None:
        raise ServiceError(_("This invitation link is not valid."), code="invalid_invitation")
    if invitation.accepted_at is not None:
        raise ServiceError(_("This invitation has already been used."), code="invitation_used")
    if invitation.is_expired:
        raise ServiceError(
            _("This invitation expired on %(date)s. Ask for a new one.")
            % {"date": _format(invitation.expires_at)},
            code="invitation_expired",
        )
    if user is not None and normalize_address(user.email) != normalize_address(invitation.email):
        raise ServiceError(
            _(
                "This invitation is for %(invited)s, but you are logged in as %(email)s. Log "
                "out and sign up or log in with that address."
            )
            % {"invited": invitation.email, "email": user.email},
            code="invitation_wrong_user",
        )


@transaction.atomic
def invitation_accept(*, token: str, user: User) -> Membership:
    invitation = invitation_for_token(token)
    check_invitation_usable(invitation=invitation, user=user)
    assert invitation is not None  # noqa: S101 - narrowed by the check above
    membership, joined = Membership.objects.get_or_create(
        user=user, organization=invitation.organization, defaults={"role": invitation.role}
    )
    if joined:
        record_change(
            action="member.joined",
            organization=invitation.organization,
            actor=user,
            target=user,
            changes={"role": [None, membership.role]},
        )
    # The link was mailed to this address: following it proves the person reads that mail.
    _mark_verified(user)
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["accepted_at"])
    return membership


@transaction.atomic
def invitation_revoke(*, actor: Membership, invitation: Invitation) -> None:
    check_can_manage(actor)
    record_change(
        action="invitation.revoked",
        organization=invitation.organization,
        actor=actor,
        target=Target.of(invitation, label=invitation.email),
        changes={"email": [invitation.email, None], "role": [invitation.role, None]},
    )
    invitation.delete()


@transaction.atomic
def membership_change_role(*, actor: Membership, membership: Membership, role: str) -> Membership:
    # Lock the organization's memberships so two owners demoting each other at once cannot
    # leave it with none (a no-op on SQLite, whose write transactions are serialized anyway).
    list(Membership.objects.select_for_update().for_organization(membership.organization))
    check_role_change(actor=actor, membership=membership, role=role)
    before = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    record_change(
        action="member.role_changed",
        organization=membership.organization,
        actor=actor,
        target=membership.user,  # the person: named, and forgotten, as themselves
        changes={"role": [before, role]} if before != role else {},
    )
    return membership


@transaction.atomic
def membership_remove(*, actor: Membership, membership: Membership) -> None:
    list(Membership.objects.select_for_update().for_organization(membership.organization))
    check_removal(actor=actor, membership=membership)
    record_change(
        action="member.removed",
        organization=membership.organization,
        actor=actor,
        target=membership.user,
        changes={"role": [membership.role, None]},
    )
    membership.delete()
