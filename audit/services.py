"""Writing the audit trail: ``audit_record`` (what every change of money or access calls,
through ``accounts.signals.record_change``) and ``audit_forget_actor`` (the one change an event
ever allows: its actor stops being named once they deleted their account)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from django.db import models
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Cast
from django.http import HttpRequest

from accounts.models import ApiKey, Membership, Organization, Project, User
from accounts.signals import SECRET, Actor, Target, plain

from .middleware import current_request
from .models import DELETED_USER, SYSTEM, AuditEvent

# Field names whose values are never stored, whatever a caller passes: only that they changed.
SECRET_FIELDS = frozenset(
    {"api_key", "api_key_encrypted", "digest", "token", "token_digest", "password", "secret"}
)


def _client_ip(request: HttpRequest | None) -> str | None:
    raw = request.META.get("REMOTE_ADDR", "") if request is not None else ""
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:  # none (a test client may send "" or a name), or not an address
        return None


def _changes(changes: Mapping[str, Any] | None) -> dict[str, Any]:
    cleaned: dict[str, Any] = {}
    for field, value in (changes or {}).items():
        if field in SECRET_FIELDS:
            cleaned[field] = SECRET
        elif isinstance(value, list | tuple) and len(value) == 2:
            cleaned[field] = [plain(value[0]), plain(value[1])]
        else:
            cleaned[field] = SECRET if value == SECRET else plain(value)
    return cleaned


def _actor(
    actor: Actor | None, actor_label: str | None, request: HttpRequest | None
) -> tuple[User | None, str]:
    if isinstance(actor, Membership):
        actor = actor.user
    if actor is None and actor_label is None and request is not None:
        # A service not told who acts (the persona writes): the person the request is from.
        person = getattr(request, "user", None)
        actor = person if isinstance(person, User) else None
    if isinstance(actor, ApiKey):
        return None, actor_label or f"API key {actor.prefix}"
    if isinstance(actor, User):
        return actor, actor_label or actor.email
    return None, actor_label or SYSTEM


def audit_record(
    *,
    action: str,
    organization: Organization | None,
    actor: Actor | None = None,
    actor_label: str | None = None,
    project: Project | None = None,
    target: models.Model | Target | None = None,
    changes: Mapping[str, Any] | None = None,
    request: HttpRequest | None = None,
) -> AuditEvent:
    """One event, written where it is called: in the transaction of the change it records, so
    that a change rolled back leaves no event. ``request``: the one being served unless given
    (for the address it came from). An action this trail does not know is a programming error
    and raises, which rolls the change back too."""
    if action not in AuditEvent.Action.values:
        raise ValueError(f"Unknown audit action {action!r}: add it to AuditEvent.Action.")
    request = request if request is not None else current_request()
    user, label = _actor(actor, actor_label, request)
    if organization is None and project is not None:
        organization = project.organization
    if isinstance(target, models.Model):
        target = Target.of(target)
    return AuditEvent.objects.create(
        organization=organization,
        organization_name=organization.name if organization is not None else "",
        project=project,
        project_name=project.name if project is not None else "",
        actor=user,
        actor_label=label[:254],
        action=action,
        target_type=target.type if target is not None else "",
        target_id=target.id[:64] if target is not None else "",
        target_label=target.label[:200] if target is not None else "",
        changes=_changes(changes),
        ip=_client_ip(request),
    )


def record_received(sender: object, signal: object, **event: Any) -> AuditEvent:
    """The receiver of ``accounts.signals.changed`` (connected in audit/apps.py)."""
    return audit_record(**event)


def audit_forget_actor(*, user_id: int, email: str = "") -> int:
    """A person deleted their account: the events they made keep what was done, but no longer
    say who (shown as "deleted user"), and events about them (a role change, a removal) no
    longer name them; with ``email``, their address is also taken out of every event's target
    and before/after values (an invitation sent to it, a member budget's person). Returns how
    many events changed. The one change the trail allows."""
    target = Q(target_type=User._meta.label_lower, target_id=str(user_id)) & ~Q(
        target_label=DELETED_USER
    )
    # The base manager: the trail's own queryset refuses every update.
    changed: int = AuditEvent._base_manager.filter(Q(actor_id=user_id) | target).update(
        actor=Case(When(actor_id=user_id, then=Value(None)), default=F("actor")),
        actor_label=Case(
            When(actor_id=user_id, then=Value(DELETED_USER)), default=F("actor_label")
        ),
        target_label=Case(When(target, then=Value(DELETED_USER)), default=F("target_label")),
    )
    if email:
        changed += _forget_address(email)
    return changed


def _forget_address(email: str) -> int:
    """Every event whose target or values still carry ``email``, with it replaced."""
    address = re.compile(re.escape(email), re.IGNORECASE)

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return address.sub(DELETED_USER, value)
        if isinstance(value, list):
            return [scrub(item) for item in value]
        if isinstance(value, dict):
            return {key: scrub(item) for key, item in value.items()}
        return value

    naming = (
        AuditEvent._base_manager.annotate(values_text=Cast("changes", models.TextField()))
        .filter(Q(values_text__icontains=email) | Q(target_label__icontains=email))
        .only("pk", "changes", "target_label")
    )
    changed = 0
    for event in naming:
        AuditEvent._base_manager.filter(pk=event.pk).update(
            changes=scrub(event.changes), target_label=scrub(event.target_label)
        )
        changed += 1
    return changed
