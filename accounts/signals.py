"""How every app tells the audit trail that money or access changed: ``record_change``.

The audit app sits above accounts (import-linter's layers), so accounts cannot call
``audit.services``. It sends ``changed`` instead, and the audit app's one receiver
(``audit.services.audit_record``, connected in audit/apps.py) writes the ``AuditEvent``. The apps
above accounts (providers, billing, chat) send it the same way rather than calling
``audit_record`` themselves: one path, so every hook reads alike, the same checks and the same
request context (who, from which address) apply to every event, and there is one place to look
for what is recorded (``grep record_change``).

The signal is not the loose coupling signals usually are: it is sent with ``send`` (not
``send_robust``), synchronously, inside the transaction of the change it records. An event that
cannot be written rolls the change back, a change rolled back leaves no event, and sending with
no receiver connected raises, so the trail cannot silently go missing.

What goes in ``changes``: ``{"field": [before, after]}`` of plain JSON values; a secret (a
provider key) shows only ``"changed"`` and never its value, an API key's digest never appears.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import models, transaction
from django.dispatch import Signal
from django.http import HttpRequest

from .models import ApiKey, Membership, Organization, Project, User

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin
    from django.forms import BaseModelForm, BaseModelFormSet

# Sent with: action, organization, actor, actor_label, project, target, changes, request.
changed = Signal()

# What a secret's change shows, in place of its value before and after.
SECRET = "changed"  # noqa: S105 - the word shown, not a secret

# Who a change made in the Django admin is shown as to the organization's owners (the staff
# account itself stays on the event, for the admin's eyes).
STAFF_LABEL = "staff (admin)"

Actor = User | Membership | ApiKey


@dataclass(frozen=True)
class Target:
    """What a change was made to: its model (``app_label.model``), id and a label to read it by,
    kept as text so that the event outlives the object."""

    type: str
    id: str
    label: str

    @classmethod
    def of(cls, obj: models.Model, *, label: str | None = None) -> Target:
        return cls(
            type=obj._meta.label_lower,
            id="" if obj.pk is None else str(obj.pk),
            label=str(obj) if label is None else label,
        )


def plain(value: Any) -> Any:
    """``value`` as JSON can hold it and a person can read it: money exact (Decimal as text),
    times in ISO 8601, an object by its name."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):  # exact, without the stored places' trailing zeros
        return f"{value.normalize():f}" if value.is_finite() else str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item) for item in value]
    return str(value)  # a model instance, a lazy translation (Promise), an enum…


def values_of(obj: models.Model, fields: Iterable[str]) -> dict[str, Any]:
    """The fields' values, plain; a foreign key by its object's name (not its id)."""
    # getattr of a foreign key is its object (None when empty), which plain() names.
    return {name: plain(getattr(obj, name)) for name in fields}


def diff(
    before: Mapping[str, Any], after: Mapping[str, Any], *, secret: Iterable[str] = ()
) -> dict[str, Any]:
    """``{"field": [before, after]}`` for what differs; a ``secret`` field that differs is only
    ``"changed"``. Empty when nothing changed (``record_change`` then records nothing)."""
    hidden = set(secret)
    changes: dict[str, Any] = {}
    for name in [*before, *(name for name in after if name not in before)]:
        old, new = plain(before.get(name)), plain(after.get(name))
        if old != new:
            changes[name] = SECRET if name in hidden else [old, new]
    return changes


def created(values: Mapping[str, Any]) -> dict[str, Any]:
    """What a new object was made with: ``[None, value]`` for every field that has one."""
    return {name: [None, plain(value)] for name, value in values.items() if value not in (None, "")}


def removed(values: Mapping[str, Any]) -> dict[str, Any]:
    """What a deleted object held: ``[value, None]``."""
    return {name: [plain(value), None] for name, value in values.items() if value not in (None, "")}


def record_change(
    *,
    action: str,
    organization: Organization | None,
    actor: Actor | None = None,
    actor_label: str | None = None,
    project: Project | None = None,
    target: models.Model | Target | None = None,
    changes: Mapping[str, Any] | None = None,
    request: HttpRequest | None = None,
) -> None:
    """Record that ``actor`` did ``action`` (an ``audit.models.AuditEvent.Action`` value): call
    it in the transaction of the change, after the checks that may refuse it (a refused change
    records nothing). ``changes={}``, an edit that changed nothing, records nothing; ``None``
    means the action has no fields to show. ``actor`` None: whoever the current request is
    from, else "system"."""
    if changes is not None and not changes:
        return
    received = changed.send(
        sender=type(target) if isinstance(target, models.Model) else Organization,
        action=action,
        organization=organization,
        actor=actor,
        actor_label=actor_label,
        project=project,
        target=target,
        changes=changes,
        request=request,
    )
    if not received:
        raise ImproperlyConfigured("Nothing records audit events: is the audit app installed?")


# --- the admin ---------------------------------------------------------------------------------


if TYPE_CHECKING:
    _AdminBase = ModelAdmin[Any]
else:
    _AdminBase = object


def audit_scope(obj: models.Model, *, depth: int = 0) -> tuple[Organization | None, Project | None]:
    """The organization and project an object belongs to: its own, or those of the row it
    belongs to (a connection's model: the connection's). (None, None): a global one, such as a
    price, a person or a global connection."""
    if isinstance(obj, Organization):
        return obj, None
    if isinstance(obj, Project):
        return obj.organization, obj
    project = getattr(obj, "project", None)
    project = project if isinstance(project, Project) else None
    organization = getattr(obj, "organization", None)
    if not isinstance(organization, Organization):
        organization = project.organization if project is not None else None
    if organization is None and depth < 2:
        for field in obj._meta.get_fields():
            if not field.many_to_one or field.name in ("organization", "project"):
                continue
            parent = getattr(obj, field.name, None)
            if isinstance(parent, models.Model) and not isinstance(parent, User):
                found = audit_scope(parent, depth=depth + 1)
                if found[0] is not None:
                    return found
    return organization, project


def audit_target(obj: models.Model) -> Target:
    # A membership is a person's access: it is named, and anonymized, as that person.
    if isinstance(obj, Membership):
        return Target.of(obj.user)
    return Target.of(obj)


def _form_values(
    form: BaseModelForm[Any], names: Iterable[str], *, initial: bool
) -> dict[str, Any]:
    """The values of model fields as the form had them at first (``initial``) or as saved:
    foreign keys by their object's name."""
    model = type(form.instance)
    values: dict[str, Any] = {}
    for name in names:
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:  # a form field that is no model field (a write-only key)
            continue
        if field.many_to_many:
            continue  # saved after the object (save_related): not seen here
        if initial:
            value = form.initial.get(name)  # a foreign key's id: named as its object
            if field.is_relation and value is not None:
                related = field.related_model._default_manager.filter(pk=value).first()
                value = related if related is not None else value
        else:
            value = getattr(form.instance, name)
        values[name] = plain(value)
    return values


class AuditedAdmin(_AdminBase):
    """A ModelAdmin mixin: staff's additions, changes and deletions of money and access, on the
    object's page, in its list's bulk delete and in the inlines named by ``audit_inlines``, are
    recorded as ``AuditEvent``s (the admin's pages save in one transaction; so do the bulk
    actions here). The event's actor is the staff account, shown to owners as "staff (admin)".

    - ``audit_actions``: ``{"add" | "change" | "delete": action}``; a missing key: not recorded.
    - ``audit_fields``: the fields a change is recorded for (None: every field of the form).
    - ``audit_secrets``: form fields shown only as "changed" (a provider key).
    - ``audit_inlines``: ``{model: audit_actions}`` for the inlines of this page."""

    audit_actions: Mapping[str, str] = {}
    audit_fields: Iterable[str] | None = None
    audit_secrets: Iterable[str] = ("api_key",)
    audit_inlines: Mapping[type[models.Model], Mapping[str, str]] = {}

    def audit(
        self,
        request: HttpRequest,
        action: str,
        obj: models.Model,
        changes: Mapping[str, Any] | None = None,
    ) -> None:
        """Record one staff action on ``obj`` (for the admin actions that write themselves)."""
        organization, project = audit_scope(obj)
        record_change(
            action=action,
            organization=organization,
            actor=request.user if isinstance(request.user, User) else None,
            actor_label=STAFF_LABEL,
            project=project,
            target=audit_target(obj),
            changes=changes,
            request=request,
        )

    def audit_action_for_change(self, changes: Mapping[str, Any]) -> str | None:
        """The action a change of the object's page is recorded as."""
        return self.audit_actions.get("change")

    def _audit_form(
        self,
        form: BaseModelForm[Any],
        *,
        actions: Mapping[str, str],
        adding: bool,
        inline: bool = False,
    ) -> tuple[str | None, dict[str, Any] | None]:
        """What to record of a validated form (saved or not): the action and the changes
        (None for an addition with nothing to show, {} for a change of nothing recorded)."""
        secrets = set(self.audit_secrets) & set(form.changed_data)
        if adding:
            values = created(_form_values(form, list(form.fields), initial=False))
            values.update(dict.fromkeys(secrets, SECRET))
            return actions.get("add"), values or None
        fields = None if inline else self.audit_fields  # an inline's: every field of its form
        names = [name for name in form.changed_data if fields is None or name in fields]
        secrets &= set(names)
        changes = diff(
            _form_values(form, names, initial=True), _form_values(form, names, initial=False)
        )
        changes.update(dict.fromkeys(secrets, SECRET))
        if inline:
            return actions.get("change"), changes
        return self.audit_action_for_change(changes), changes

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        action, changes = self._audit_form(form, actions=self.audit_actions, adding=not change)
        if action is not None:
            self.audit(request, action, obj, changes)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        if "delete" in self.audit_actions:
            self.audit(request, self.audit_actions["delete"], obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        # The list's "delete selected": not in a transaction of its own, unlike the pages.
        with transaction.atomic():
            if "delete" in self.audit_actions:
                for obj in queryset:
                    self.audit(request, self.audit_actions["delete"], obj)
            super().delete_queryset(request, queryset)

    def save_formset(
        self, request: HttpRequest, form: Any, formset: BaseModelFormSet[Any, Any], change: bool
    ) -> None:
        actions = self.audit_inlines.get(formset.model) if formset.model else None
        if not actions:
            super().save_formset(request, form, formset, change)
            return
        deleted = [f for f in formset.deleted_forms if f.instance.pk is not None]
        for inline in deleted:  # while they still have their ids
            if "delete" in actions:
                self.audit(request, actions["delete"], inline.instance)
        pending = []
        for inline in formset.forms:
            if inline in deleted or not inline.has_changed():
                continue
            adding = inline.instance.pk is None
            action, changes = self._audit_form(inline, actions=actions, adding=adding, inline=True)
            if action is not None:
                pending.append((action, inline.instance, changes))
        super().save_formset(request, form, formset, change)
        for action, obj, changes in pending:  # saved: the new ones have their ids now
            self.audit(request, action, obj, changes)
