"""Writes of the lifecycle app: retention and its purge, an organization's scheduled deletion,
and the deletion of an account.

What is never deleted: the usage ledger. Its rows point at the organization (PROTECT) and, with
SET_NULL, at the project, the person, the conversation and the message; deleting any of those
leaves the row, anonymized, so an organization's totals never change. An organization whose
ledger (or statements) must stay is emptied and kept as a nameless tombstone instead of going.

Checks (``check_*``) come before the writes; every write is keyword-only and atomic. Large
deletions go conversation by conversation in small batches (``_conversations_delete``), each
its own (nested) transaction: Django's collector loads what it deletes, and a big account
must not be loaded at once.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import partial
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Exists, OuterRef, ProtectedError, QuerySet, RestrictedError
from django.utils import formats, timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from accounts import services as account_services
from accounts.models import Invitation, Membership, Organization, Role, User
from accounts.signals import record_change
from accounts.tasks import send_email
from accounts.two_factor import has_two_factor, two_factor_verify
from audit.services import audit_forget_actor
from billing.models import Budget
from billing.services import CallContext, rate_take
from chat.models import Conversation, Message
from core.errors import ServiceError
from gateway.models import File as GatewayFile
from gateway.models import StoredResponse
from providers.models import ProviderConnection

from . import selectors
from .models import (
    RETENTION_MAX_DAYS,
    RETENTION_MIN_DAYS,
    OrganizationDeletion,
    RetentionPolicy,
)

logger = logging.getLogger(__name__)

# Conversations deleted per transaction by the purges.
BATCH_SIZE = 100
# Wrong passwords on the account deletion page, per person and minute: a borrowed session
# must not be able to guess its way to deleting the account.
PASSWORD_TRIES_PER_MINUTE = 5


def grace_days() -> int:
    """How long an organization's deletion waits, for an owner to change their mind."""
    return int(settings.ORG_DELETION_GRACE_DAYS)


def day_of(moment: datetime) -> str:
    """A day as the active language writes dates (deletion dates are shown as days)."""
    return formats.date_format(moment, "DATE_FORMAT")


# --- checks ----------------------------------------------------------------------------------


def check_owner(actor: Membership) -> None:
    if actor.role != Role.OWNER:
        raise ServiceError(_("Only an owner of this organization can do that."), code="forbidden")


def check_organization_can_spend(organization_id: int) -> None:
    """Refuse a call of an organization scheduled for deletion: it is read-only for spending
    during its grace. From memory (``selectors.pending_deletions``): every upstream call asks."""
    scheduled_for = selectors.pending_deletions().by_id.get(organization_id)
    if scheduled_for is None:
        return
    raise ServiceError(
        _(
            "This organization is scheduled for deletion on %(date)s: it makes no new calls "
            "until then. An owner can cancel the deletion in the organization's settings."
        )
        % {"date": day_of(scheduled_for)},
        code="organization_pending_deletion",
    )


def spend_guard(context: CallContext) -> None:
    """The check billing runs before it holds anything for a call (``billing.services``'s
    spend guards, added by ``lifecycle.apps``)."""
    check_organization_can_spend(context.organization_id)


# --- retention -------------------------------------------------------------------------------


@transaction.atomic
def retention_set(*, actor: Membership, days: int | None) -> RetentionPolicy | None:
    """Keep the organization's conversations ``days`` after their last message (None: for
    ever, the default)."""
    check_owner(actor)
    organization = actor.organization
    if days is None:
        RetentionPolicy.objects.filter(organization=organization).delete()
        return None
    if not RETENTION_MIN_DAYS <= days <= RETENTION_MAX_DAYS:
        raise ServiceError(
            _("Choose between %(low)s and %(high)s days.")
            % {"low": RETENTION_MIN_DAYS, "high": RETENTION_MAX_DAYS},
            code="invalid_days",
            param="days",
        )
    policy, _created = RetentionPolicy.objects.update_or_create(
        organization=organization, defaults={"days": days, "updated_by": actor.user}
    )
    return policy


def _streaming() -> Exists:
    return Exists(
        Message.objects.filter(conversation=OuterRef("pk"), state=Message.State.STREAMING)
    )


def _conversations_delete(
    conversations: QuerySet[Conversation], *, batch_size: int = BATCH_SIZE, idle: bool = False
) -> int:
    """Delete ``conversations`` a batch at a time, each batch in its own transaction (a
    savepoint inside a caller's); how many went. Their messages, tool calls, room members and
    attachments go with them (the files once committed: chat's ``attachment_files_delete``);
    their ledger rows stay, the conversation and message set to NULL.

    ``idle``: never one with a reply streaming. Each batch is locked and checked again before
    it goes, so a reply that starts meanwhile (it locks its conversation) keeps it."""
    if idle:
        conversations = conversations.exclude(_streaming())
    deleted = 0
    while True:
        ids = list(conversations.order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return deleted
        with transaction.atomic():
            # Locked first, then read again in a statement of its own: it sees a reply that
            # committed while we waited for the lock, and none can start while we hold it.
            list(
                Conversation.objects.select_for_update()
                .filter(pk__in=ids)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            doomed = list(conversations.filter(pk__in=ids).values_list("pk", flat=True))
            Conversation.objects.filter(pk__in=doomed).delete()
        deleted += len(doomed)


def _rows_delete(rows: QuerySet[Any], *, batch_size: int) -> None:
    while ids := list(rows.order_by("pk").values_list("pk", flat=True)[:batch_size]):
        rows.model._default_manager.filter(pk__in=ids).delete()


def retention_purge(*, now: datetime | None = None, batch_size: int = BATCH_SIZE) -> int:
    """Delete the conversations whose last message is older than their organization's
    retention period; how many went. Idempotent: run it again and nothing more goes."""
    now = now or timezone.now()
    purged = 0
    for policy in RetentionPolicy.objects.order_by("organization_id"):
        cutoff = now - timedelta(days=policy.days)
        expired = Conversation.objects.filter(
            project__organization_id=policy.organization_id, last_message_at__lt=cutoff
        )
        try:
            count = _conversations_delete(expired, batch_size=batch_size, idle=True)
        except Exception:  # the task's boundary: one organization's failure keeps no other's
            logger.exception("retention of organization %s failed; retried on the next run",
                             policy.organization_id)  # fmt: skip
            continue
        if count:
            logger.info(
                "retention: purged %s conversations of organization %s (older than %s days)",
                count, policy.organization_id, policy.days,
            )  # fmt: skip
        purged += count
    return purged


# --- an organization's deletion ----------------------------------------------------------------


def _mail_managers(organization: Organization, *, subject: str, body: str) -> None:
    recipients = list(
        Membership.objects.for_organization(organization)
        .filter(role__in=[Role.OWNER, Role.ADMIN])
        .values_list("user__email", flat=True)
    )
    if recipients:
        transaction.on_commit(partial(send_email.delay, subject=subject, body=body, to=recipients))


@transaction.atomic
def organization_deletion_request(
    *, actor: Membership, confirm_name: str, now: datetime | None = None
) -> OrganizationDeletion:
    """Schedule the organization's deletion ``ORG_DELETION_GRACE_DAYS`` from now. Until then
    it spends nothing (``check_organization_can_spend``) and an owner may cancel."""
    check_owner(actor)
    organization = actor.organization
    if organization.is_personal:
        raise ServiceError(
            _("Your personal workspace is deleted with your account, not on its own."),
            code="personal_organization",
        )
    if confirm_name.strip() != organization.name:
        raise ServiceError(
            _("Type the organization's name exactly as it is written to confirm."),
            code="wrong_name",
            param="name",
        )
    Organization.objects.select_for_update().filter(pk=organization.pk).first()
    if OrganizationDeletion.objects.filter(organization=organization).exists():
        raise ServiceError(
            _("This organization is already scheduled for deletion."), code="already_scheduled"
        )
    now = now or timezone.now()
    deletion = OrganizationDeletion.objects.create(
        organization=organization,
        requested_by=actor.user,
        requested_at=now,
        scheduled_for=now + timedelta(days=grace_days()),
    )
    names = {
        "organization": organization.name,
        "person": actor.user.get_full_name(),
        "date": day_of(deletion.scheduled_for),
    }
    _mail_managers(
        organization,
        subject=_("%(organization)s will be deleted on %(date)s") % names,
        body=_(
            "%(person)s asked for %(organization)s to be deleted. It will be deleted on "
            "%(date)s with its projects, conversations and files; until then it makes no new "
            "calls. An owner can cancel the deletion in the organization's settings."
        )
        % names,
    )
    return deletion


def _cancel(deletion: OrganizationDeletion) -> None:
    # save/delete, never a queryset's: the signal tells every process's copy of the pending
    # deletions (core.config_cache) at once.
    deletion.delete()


@transaction.atomic
def organization_deletion_cancel(*, actor: Membership) -> None:
    check_owner(actor)
    deletion = selectors.deletion_of(actor.organization)
    if deletion is None:
        raise ServiceError(
            _("This organization is not scheduled for deletion."), code="not_scheduled"
        )
    _cancel(deletion)
    names = {"organization": actor.organization.name, "person": actor.user.get_full_name()}
    _mail_managers(
        actor.organization,
        subject=_("The deletion of %(organization)s was cancelled") % names,
        body=_("%(person)s cancelled the deletion of %(organization)s.") % names,
    )


@transaction.atomic
def organization_deletions_cancel(*, deletions: Iterable[OrganizationDeletion]) -> int:
    """Staff's cancel (the admin): the pending ones among ``deletions``; how many."""
    cancelled = 0
    for deletion in deletions:
        if deletion.is_pending:
            _cancel(deletion)
            cancelled += 1
    return cancelled


def _files_delete(names: list[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:  # already gone, or the storage is down: logged, never fatal
            logger.warning("Could not delete the file %s", name, exc_info=True)


TOMBSTONE_NAME = "Deleted organization"


def organization_purge(
    *,
    organization: Organization,
    requested_by: User | None = None,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
) -> bool:
    """Delete the organization with everything in it, now; True if its row went too.

    Conversations go in batches first (a big organization is never loaded at once), then the
    projects (keys, budgets, personas, connections, ``/v1`` files and batches, the files on
    commit), the members and invitations. The row itself stays only where something must keep
    pointing at it (the ledger, statements: PROTECT): emptied, renamed, unreachable by anyone
    (no members), with its ``OrganizationDeletion`` marked completed for staff."""
    now = now or timezone.now()
    _conversations_delete(
        Conversation.objects.filter(project__organization=organization), batch_size=batch_size
    )
    with transaction.atomic():
        organization = Organization.objects.select_for_update().get(pk=organization.pk)
        projects = organization.projects.all()
        files = [
            name
            for name in GatewayFile.objects.filter(project__in=projects).values_list(
                "file", flat=True
            )
            if name
        ]
        # The trail keeps the organization's name (its events outlive it, or stay on the
        # tombstone); who asked, or the person whose account took their workspace with them.
        record_change(
            action="organization.deleted",
            organization=organization,
            actor=requested_by,
            target=organization,
        )
        # Whatever a conversation started meanwhile (there should be none: it spends nothing).
        _conversations_delete(Conversation.objects.filter(project__organization=organization))
        # /v1's stored responses can be many, and each refers to the one before it (SET_NULL):
        # the collector would load them all at once, so they go a batch at a time first.
        _rows_delete(StoredResponse.objects.filter(project__in=projects), batch_size=batch_size)
        for project in projects:
            project.delete()
        ProviderConnection.objects.filter(organization=organization).delete()
        Budget.objects.filter(organization=organization).delete()
        Invitation.objects.for_organization(organization).delete()
        Membership.objects.for_organization(organization).delete()
        RetentionPolicy.objects.filter(organization=organization).delete()
        transaction.on_commit(partial(_files_delete, files))
        try:
            with transaction.atomic():
                organization.delete()
            return True
        except (ProtectedError, RestrictedError):
            pass
        pk = organization.pk
        organization.name = TOMBSTONE_NAME
        organization.slug = f"deleted-{pk}-{secrets.token_hex(4)}"
        organization.require_two_factor = False
        organization.save(update_fields=["name", "slug", "require_two_factor"])
        deletion, created = OrganizationDeletion.objects.get_or_create(
            organization=organization,
            defaults={
                "requested_by": requested_by,
                "requested_at": now,
                "scheduled_for": now,
                "completed_at": now,
            },
        )
        if not created:
            deletion.completed_at = now
            deletion.save(update_fields=["completed_at"])
        return False


def organization_deletions_carry_out(
    *, now: datetime | None = None, batch_size: int = BATCH_SIZE
) -> int:
    """Delete every organization whose grace has passed; how many. Idempotent: one deleted
    (or emptied) already is not pending any more, and one half done is taken up again."""
    now = now or timezone.now()
    done = 0
    for deletion in list(OrganizationDeletion.objects.due(now).select_related("organization")):
        try:
            organization_purge(
                organization=deletion.organization,
                requested_by=deletion.requested_by,
                now=now,
                batch_size=batch_size,
            )
        except Exception:  # the task's boundary: one that fails must not keep the others
            logger.exception("deleting organization %s failed; retried on the next run",
                             deletion.organization_id)  # fmt: skip
            continue
        logger.info("deleted organization %s (scheduled by %s)", deletion.organization_id,
                    deletion.requested_by_id)  # fmt: skip
        done += 1
    return done


# --- ownership, before an account goes ----------------------------------------------------------


def organization_transfer(*, actor: Membership, to: Membership) -> Membership:
    """Make another member an owner (the leaving owner's way out of being the only one)."""
    check_owner(actor)
    if to.organization_id != actor.organization_id or to.pk == actor.pk:
        raise ServiceError(_("Choose another member of this organization."), code="invalid")
    return account_services.membership_change_role(actor=actor, membership=to, role=Role.OWNER)


# --- an account's deletion ---------------------------------------------------------------------


def check_account_password(*, user: User, password: str) -> None:
    rate_take(
        bucket=f"lifecycle:account-delete:{user.pk}",
        allowed=PASSWORD_TRIES_PER_MINUTE,
        what=gettext_noop("Confirming your password"),
    )
    if not password or not user.check_password(password):
        raise ServiceError(_("That is not your password."), code="wrong_password", param="password")


def check_no_sole_ownership(user: User) -> None:
    waiting = [
        s.organization.name for s in selectors.sole_owned_organizations(user) if not s.settled
    ]
    if waiting:
        raise ServiceError(
            _(
                "You are the only owner of %(organizations)s: make another member an owner, or "
                "schedule its deletion, first."
            )
            % {"organizations": ", ".join(waiting)},
            code="sole_owner",
        )


# Session stores whose sessions are rows we can read (the others die with the user row).
LISTED_SESSION_ENGINES = (
    "django.contrib.sessions.backends.db",
    "django.contrib.sessions.backends.cached_db",
)


def _sessions_forget(user_id: int) -> int:
    """Log the person out everywhere: delete every stored session that names them. (Without
    this they would be dead anyway, since their user is gone; this clears them now.)"""
    engine = settings.SESSION_ENGINE
    if engine not in LISTED_SESSION_ENGINES:
        return 0
    store = import_module(engine).SessionStore
    forgotten = 0
    sessions = Session.objects.filter(expire_date__gt=timezone.now()).order_by("pk")
    for key, data in sessions.values_list("session_key", "session_data").iterator(chunk_size=500):
        if str(store().decode(data).get("_auth_user_id")) == str(user_id):
            store(session_key=key).delete()
            forgotten += 1
    return forgotten


def account_delete(*, user: User, password: str, code: str = "") -> None:
    """Delete the person's account for good, once they confirmed it with their password (and
    a code, with two-factor authentication) and no organization depends on them alone.

    Goes: their conversations (rooms they made too, with their files), their personal
    workspaces (``organization_purge``), memberships, folders, member budgets, devices, saved
    Idempotency-Key answers, sessions, and invitations they accepted. Stays, without their
    name: their ledger rows (user set to NULL, so every organization's totals stay), their
    messages in other people's rooms (author set to NULL), the API keys they created (the
    project's, not theirs: they keep working for the project's managers to keep or revoke),
    invitations and connections they made, and audit events (``audit_forget_actor``)."""
    check_account_password(user=user, password=password)
    if has_two_factor(user):
        # Outside any transaction: a wrong code must count against the device's throttle.
        try:
            two_factor_verify(user=user, code=code)
        except ServiceError as error:
            raise ServiceError(
                error.message, code=error.code, param="code", retry_after=error.retry_after
            ) from None
    check_no_sole_ownership(user)
    with transaction.atomic():
        # Their memberships locked, then looked at again: an owner who left meanwhile.
        list(Membership.objects.select_for_update().filter(user=user).order_by("pk"))
        check_no_sole_ownership(user)
        for organization in selectors.personal_organizations(user):
            organization_purge(organization=organization, requested_by=None)
        _conversations_delete(Conversation.objects.filter(owner=user))
        Invitation.objects.filter(email__iexact=user.email, accepted_at__isnull=False).delete()
        _sessions_forget(user.pk)
        audit_forget_actor(user_id=user.pk, email=user.email)
        user_id = user.pk
        user.delete()
    logger.info("deleted account %s", user_id)
