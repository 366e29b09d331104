"""Writes on provider connections, their models and the models a project allows.

Keys are write-only: they come in as plaintext, are stored encrypted, and only a hint
(``sk-…abcd``) ever goes back out — in pages, the admin, the API, logs and error texts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django_stubs_ext import StrOrPromise

from accounts.models import Membership, Project
from accounts.services import check_can_manage
from accounts.signals import SECRET, created, diff, record_change, removed, values_of
from core import config_cache
from core.errors import ServiceError

from . import selectors
from .addresses import AddressRefused
from .crypto import encrypt, key_hint, rotate
from .llm.base import ErrorCode, ProviderError
from .llm.catalog import LOCAL_MODEL_NAME, capabilities
from .llm.catalog import context_window as guess_window
from .llm.catalog import max_output_tokens as guess_max_output
from .models import ConnectionModel, ProjectModel, ProviderConnection
from .specs import address_policy, build_provider, spec_for_connection

logger = logging.getLogger(__name__)

TENANT_KINDS = (ProviderConnection.Kind.OPENAI, ProviderConnection.Kind.COMPATIBLE)
LOCAL_CONNECTION_NAME = "Built-in local model"
SHARED_OPENAI_NAME = "OpenAI (server key)"
DEFAULT_OPENAI_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4-turbo", "gpt-3.5-turbo")


@dataclass(frozen=True)
class ConnectionPreset:
    """A provider known by name: an OpenAI-compatible connection with its address and models
    filled in, so that adding one takes only its key."""

    key: str  # what the connection form's kind field sends
    label: StrOrPromise
    name: str  # the connection's name unless one is typed
    base_url: str
    models: tuple[str, ...]  # added with the catalog's windows and capabilities
    key_required: StrOrPromise  # the refusal when no key is given


GEMINI = ConnectionPreset(
    key="gemini",
    label=gettext_lazy("Gemini (Google AI Studio)"),
    name="Gemini",
    # Google's OpenAI-compatible endpoint of the Gemini API: /chat/completions, /models.
    base_url="https://generativelanguage.googleapis.com/v1beta/openai/",
    models=("gemini-2.5-flash", "gemini-2.5-pro"),
    key_required=gettext_lazy(
        "Gemini needs an API key from Google AI Studio (https://aistudio.google.com/apikey)."
    ),
)
PRESETS = {preset.key: preset for preset in (GEMINI,)}

# What the audit trail shows of a connection; its key only as "changed".
AUDITED_FIELDS = (
    "kind", "name", "base_url", "openai_organization", "openai_project", "timeout",
    "max_retries", "supports_moderation",
)  # fmt: skip


def check_can_edit(*, actor: Membership, connection: ProviderConnection) -> None:
    """Managers of the connection's own organization only; global ones are staff's."""
    check_can_manage(actor)
    if connection.organization_id != actor.organization_id:
        raise ServiceError(
            _("This connection is kept by the site's staff; it cannot be changed here."),
            code="forbidden",
        )


def _check_fields(*, kind: str, base_url: str, has_key: bool) -> None:
    if kind not in TENANT_KINDS:
        raise ServiceError(_("Choose OpenAI or an OpenAI-compatible server."), code="invalid_kind")
    if kind == ProviderConnection.Kind.COMPATIBLE and not base_url:
        raise ServiceError(
            _("An OpenAI-compatible server needs its base URL, e.g. http://localhost:11434/v1."),
            code="base_url_required",
        )
    if kind == ProviderConnection.Kind.OPENAI and not has_key:
        raise ServiceError(_("OpenAI needs an API key."), code="api_key_required")


def _check_address(base_url: str) -> None:
    """Refuse, as it is saved, a base URL the address policy forbids: a forbidden literal, or
    a name resolving to a forbidden address now. A name that does not resolve yet passes (a
    compose service may not be up); every request is checked again anyway."""
    if not base_url.strip():
        return
    try:
        address_policy().check_url(base_url.strip())
    except AddressRefused as refused:
        raise ServiceError(
            refused.message, code="upstream_address_refused", param="base_url"
        ) from None


def _set_key(connection: ProviderConnection, api_key: str) -> None:
    api_key = api_key.strip()
    connection.api_key_encrypted = encrypt(api_key) if api_key else ""
    connection.api_key_hint = key_hint(api_key) if api_key else ""


def _new_connection(
    *,
    actor: Membership,
    project: Project | None,
    kind: str,
    name: str,
    base_url: str,
    api_key: str,
    openai_organization: str,
    openai_project: str,
    timeout: float,
    max_retries: int,
    supports_moderation: bool | None,
) -> ProviderConnection:
    connection = ProviderConnection(
        organization=actor.organization,
        project=project,
        kind=kind,
        name=name.strip() or str(dict(ProviderConnection.Kind.choices)[kind]),
        base_url=base_url.strip(),
        openai_organization=openai_organization.strip(),
        openai_project=openai_project.strip(),
        timeout=timeout,
        max_retries=max_retries,
        supports_moderation=kind == ProviderConnection.Kind.OPENAI
        if supports_moderation is None
        else supports_moderation,
        created_by=actor.user,
    )
    _set_key(connection, api_key)
    with transaction.atomic():  # the row and its audit event, or neither
        connection.save()
        record_change(
            action="connection.created",
            organization=connection.organization,
            actor=actor,
            project=project,
            target=connection,
            changes={
                **created(values_of(connection, AUDITED_FIELDS)),
                **({"api_key": SECRET} if api_key.strip() else {}),
            },
        )
    return connection


# Not @transaction.atomic, unlike the other writes: the address check may wait for DNS, and
# no transaction (on SQLite, the write lock) should wait with it. The one save is atomic.
def connection_create(
    *,
    actor: Membership,
    project: Project | None,
    kind: str,
    name: str,
    base_url: str = "",
    api_key: str = "",
    openai_organization: str = "",
    openai_project: str = "",
    timeout: float = 60.0,
    max_retries: int = 2,
    supports_moderation: bool | None = None,
) -> ProviderConnection:
    """A connection for one project, or (``project=None``) shared by the organization's.
    ``supports_moderation``: it answers /v1/moderations (None: OpenAI does, others are
    assumed not to until said so)."""
    check_can_manage(actor)
    _check_fields(kind=kind, base_url=base_url, has_key=bool(api_key.strip()))
    _check_address(base_url)
    return _new_connection(
        actor=actor,
        project=project,
        kind=kind,
        name=name,
        base_url=base_url,
        api_key=api_key,
        openai_organization=openai_organization,
        openai_project=openai_project,
        timeout=timeout,
        max_retries=max_retries,
        supports_moderation=supports_moderation,
    )


@transaction.atomic  # no DNS to wait for: the preset's address is ours, not the tenant's
def connection_create_preset(
    *,
    actor: Membership,
    project: Project | None,
    preset: str,
    name: str = "",
    api_key: str = "",
    timeout: float = 60.0,
    max_retries: int = 2,
) -> ProviderConnection:
    """A connection to a provider known by name (``PRESETS``: Gemini), with its models added
    at once from the catalog: nothing is fetched from the provider (its "Refresh models"
    lists the rest). Its moderation is off: the project's pattern list checks its input."""
    check_can_manage(actor)
    chosen = PRESETS.get(preset)
    if chosen is None:
        raise ServiceError(_("Choose OpenAI or an OpenAI-compatible server."), code="invalid_kind")
    if not api_key.strip():
        raise ServiceError(str(chosen.key_required), code="api_key_required", param="api_key")
    connection = _new_connection(
        actor=actor,
        project=project,
        kind=ProviderConnection.Kind.COMPATIBLE,
        name=name.strip() or chosen.name,
        base_url=chosen.base_url,
        api_key=api_key,
        openai_organization="",
        openai_project="",
        timeout=timeout,
        max_retries=max_retries,
        supports_moderation=False,
    )
    for model in chosen.models:
        connection_model_add(actor=None, connection=connection, name=model)
    return connection


def connection_update(  # not atomic: see connection_create
    *,
    actor: Membership,
    connection: ProviderConnection,
    name: str,
    base_url: str = "",
    api_key: str = "",
    openai_organization: str = "",
    openai_project: str = "",
    timeout: float = 60.0,
    max_retries: int = 2,
    supports_moderation: bool | None = None,
) -> ProviderConnection:
    """An empty ``api_key`` keeps the stored one: the form never shows it back.
    ``supports_moderation`` None: as it was."""
    check_can_edit(actor=actor, connection=connection)
    _check_fields(
        kind=connection.kind,
        base_url=base_url,
        has_key=bool(api_key.strip() or connection.api_key_encrypted),
    )
    _check_address(base_url)
    before = values_of(connection, AUDITED_FIELDS)
    connection.name = name.strip() or connection.name
    connection.base_url = base_url.strip()
    connection.openai_organization = openai_organization.strip()
    connection.openai_project = openai_project.strip()
    connection.timeout = timeout
    connection.max_retries = max_retries
    if supports_moderation is not None:
        connection.supports_moderation = supports_moderation
    if api_key.strip():
        _set_key(connection, api_key)
    with transaction.atomic():  # the row and its audit event, or neither
        connection.save()
        record_change(
            action="connection.updated",
            organization=connection.organization,
            actor=actor,
            project=connection.project,
            target=connection,
            changes={
                **diff(before, values_of(connection, AUDITED_FIELDS)),
                **({"api_key": SECRET} if api_key.strip() else {}),
            },
        )
    return connection


@transaction.atomic
def connection_delete(*, actor: Membership, connection: ProviderConnection) -> None:
    """Refused while a project's allow-list names one of its models: say which."""
    check_can_edit(actor=actor, connection=connection)
    uses = selectors.connections_using(connection)
    if uses:
        listed = "; ".join(f"{project}: {', '.join(names)}" for project, names in uses.items())
        raise ServiceError(
            _(
                "“%(name)s” is still in use by %(uses)s. Remove those models from the projects' "
                "allowed models first."
            )
            % {"name": connection.name, "uses": listed},
            code="connection_in_use",
        )
    record_change(
        action="connection.deleted",
        organization=connection.organization,
        actor=actor,
        project=connection.project,
        target=connection,
        changes=removed(values_of(connection, AUDITED_FIELDS)),
    )
    connection.delete()


# --- models --------------------------------------------------------------------------------


@transaction.atomic
def connection_model_add(
    *,
    actor: Membership | None,
    connection: ProviderConnection,
    name: str,
    context_window: int | None = None,
    max_output_tokens: int | None = None,
    supports_vision: bool | None = None,
    supports_tools: bool | None = None,
    supports_json: bool | None = None,
    supports_embeddings: bool | None = None,
    unpriced_allowed: bool | None = None,
    fetched: bool = False,
) -> ConnectionModel:
    """Add (or update) a model of the connection; what is not given is guessed from the
    catalog (``providers.llm.catalog``): its window, longest reply and capabilities.
    ``unpriced_allowed`` (None: as it was, else no) is staff's to set: never from a
    tenant's form."""
    if actor is not None:
        check_can_edit(actor=actor, connection=connection)
        if unpriced_allowed is not None:
            raise ServiceError(
                _("Only the site's staff can let a model run without a price."),
                code="forbidden",
            )
    name = name.strip()
    if not name:
        raise ServiceError(_("A model needs a name."), code="invalid_model")
    guessed = capabilities(name)
    model, added = ConnectionModel.objects.update_or_create(
        connection=connection,
        name=name,
        defaults={
            "context_window": context_window or guess_window(name),
            "max_output_tokens": max_output_tokens or guess_max_output(name),
            "supports_vision": guessed["supports_vision"]
            if supports_vision is None
            else supports_vision,
            "supports_tools": guessed["supports_tools"]
            if supports_tools is None
            else supports_tools,
            "supports_json": guessed["supports_json"] if supports_json is None else supports_json,
            "supports_embeddings": guessed["supports_embeddings"]
            if supports_embeddings is None
            else supports_embeddings,
            "fetched": fetched,
            **({} if unpriced_allowed is None else {"unpriced_allowed": unpriced_allowed}),
        },
    )
    if added and actor is not None:  # a person's; not what a refresh or a preset lists
        record_change(
            action="connection_model.added",
            organization=connection.organization,
            actor=actor,
            project=connection.project,
            target=model,
            changes={"connection": [None, connection.name], "model": [None, model.name]},
        )
    return model


@transaction.atomic
def connection_model_remove(*, actor: Membership, model: ConnectionModel) -> None:
    check_can_edit(actor=actor, connection=model.connection)
    if ProjectModel.objects.filter(model=model).exists():
        raise ServiceError(
            _("%(name)s is allowed in a project; remove it from the project's models first.")
            % {"name": model.name},
            code="model_in_use",
        )
    record_change(
        action="connection_model.removed",
        organization=model.connection.organization,
        actor=actor,
        project=model.connection.project,
        target=model,
        changes={"connection": [model.connection.name, None], "model": [model.name, None]},
    )
    model.delete()


@dataclass(frozen=True)
class ConnectionCheck:
    """The outcome of "test connection", specific enough to act on."""

    status: str  # ok, bad_key, unreachable, timeout, not_openai, refused, redirect, error
    message: str
    models: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _list_models(connection: ProviderConnection) -> list[str]:
    spec = spec_for_connection(connection, model="", window=0)

    async def call() -> list[str]:
        provider = build_provider(spec)
        try:
            return await provider.list_models()
        finally:
            await provider.aclose()

    return asyncio.run(call())


def connection_check(connection: ProviderConnection) -> ConnectionCheck:
    """Ask the server for its models and say plainly what went wrong, without any key."""
    try:
        names = _list_models(connection)
    except ServiceError as error:  # e.g. a key no configured encryption key opens
        return ConnectionCheck("error", error.message)
    except ProviderError as error:
        status = {
            ErrorCode.AUTH: "bad_key",
            ErrorCode.TIMEOUT: "timeout",
            ErrorCode.MODEL_NOT_FOUND: "not_openai",
            ErrorCode.BAD_REQUEST: "not_openai",
            ErrorCode.ADDRESS_REFUSED: "refused",
        }.get(error.code)
        if error.status is not None and 300 <= error.status < 400:
            status = "redirect"
        if status is None and error.code == ErrorCode.UPSTREAM_UNAVAILABLE:
            status = "unreachable" if error.status is None else "not_openai"
        messages = {
            "bad_key": _("The server refused the API key."),
            "timeout": _("No answer within %(seconds)s s.")
            % {"seconds": f"{connection.timeout:g}"},
            "unreachable": _("The server cannot be reached at that address."),
            "not_openai": _(
                "Something answered, but not like an OpenAI-compatible server "
                "(no /v1/models there)."
            ),
        }
        status = status or "error"
        return ConnectionCheck(status, messages.get(status, error.message))
    except Exception as error:  # a 200 that is not OpenAI JSON, a malformed URL…
        logger.info("connection %s check failed: %s", connection.pk, type(error).__name__)
        return ConnectionCheck(
            "not_openai",
            _("Something answered, but not like an OpenAI-compatible server."),
        )
    message = ngettext(
        "Connected: %(count)d model available.",
        "Connected: %(count)d models available.",
        len(names),
    ) % {"count": len(names)}
    return ConnectionCheck("ok", message, tuple(names))


@transaction.atomic
def connection_refresh_models(
    *, actor: Membership | None, connection: ProviderConnection
) -> ConnectionCheck:
    """Fetch the server's models; new ones are added, typed-in ones are kept."""
    if actor is not None:
        check_can_manage(actor)
    result = connection_check(connection)
    if result.ok:
        for name in result.models:
            connection_model_add(actor=None, connection=connection, name=name, fetched=True)
        connection.models_refreshed_at = timezone.now()
        connection.save(update_fields=["models_refreshed_at", "updated_at"])
    return result


# --- the models a project allows ------------------------------------------------------------


@transaction.atomic
def project_models_set(
    *, actor: Membership, project: Project, model_ids: list[int], default_id: int | None
) -> list[ProjectModel]:
    """Replace the project's allow-list. An empty list goes back to "every visible model"."""
    check_can_manage(actor)
    visible = ConnectionModel.objects.filter(
        connection__in=selectors.connections_for_project(project), pk__in=model_ids
    )
    chosen = list(visible)
    if len(chosen) != len(set(model_ids)):
        raise ServiceError(
            _("Some of those models are not available to this project."), code="model_not_visible"
        )
    names = [m.name for m in chosen]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ServiceError(
            _("Two connections serve %(models)s: allow it from one of them only.")
            % {"models": ", ".join(duplicates)},
            code="duplicate_model",
        )
    if chosen and default_id not in {m.pk for m in chosen}:
        raise ServiceError(_("Choose the default among the allowed models."), code="no_default")
    before = _allowed(ProjectModel.objects.filter(project=project))
    ProjectModel.objects.filter(project=project).delete()
    allowed = [
        ProjectModel.objects.create(
            project=project, model=m, name=m.name, is_default=m.pk == default_id
        )
        for m in chosen
    ]
    record_change(
        action="project_models.changed",
        organization=project.organization,
        actor=actor,
        project=project,
        target=project,
        changes=diff(before, _allowed(allowed)),
    )
    return allowed


def _allowed(rows: Iterable[ProjectModel]) -> dict[str, Any]:
    """A project's allow-list as the audit trail shows it (empty: every visible model)."""
    rows = list(rows)
    default = next((row.name for row in rows if row.is_default), None)
    return {"models": sorted(row.name for row in rows), "default": default}


# --- global connections and key rotation ----------------------------------------------------


@transaction.atomic
def connections_ensure_defaults() -> None:
    """The built-in local model for everyone, and a shared OpenAI connection when the server
    has OPENAI_API_KEY. Idempotent; runs after every migrate."""
    local, _created = ProviderConnection.objects.get_or_create(
        organization=None,
        kind=ProviderConnection.Kind.LOCAL,
        defaults={"name": LOCAL_CONNECTION_NAME, "timeout": 120.0, "max_retries": 0},
    )
    # llama.cpp keeps the answer to a JSON grammar when asked (response_format json_object).
    # It is priced at 0 (billing 0002); should that row ever go, it still runs (unpriced):
    # the built-in model costs nobody anything.
    connection_model_add(
        actor=None,
        connection=local,
        name=LOCAL_MODEL_NAME,
        fetched=True,
        supports_json=True,
        unpriced_allowed=True,
    )

    key = settings.OPENAI_API_KEY.strip()
    shared = ProviderConnection.objects.filter(
        organization=None, kind=ProviderConnection.Kind.OPENAI, name=SHARED_OPENAI_NAME
    ).first()
    if not key:
        return
    if shared is None:
        shared = ProviderConnection(
            organization=None,
            kind=ProviderConnection.Kind.OPENAI,
            name=SHARED_OPENAI_NAME,
            supports_moderation=True,  # OpenAI answers /v1/moderations
        )
    if shared.api_key_hint != key_hint(key) or not shared.pk:
        _set_key(shared, key)
        shared.save()
    for name in DEFAULT_OPENAI_MODELS:
        if not shared.models.filter(name=name).exists():
            connection_model_add(actor=None, connection=shared, name=name)


def connections_rotate_keys() -> int:
    """Re-encrypt every stored key with the newest FIELD_ENCRYPTION_KEYS entry."""
    rotated = 0
    for connection in ProviderConnection.objects.exclude(api_key_encrypted="").only(
        "pk", "api_key_encrypted"
    ):
        with transaction.atomic():
            ProviderConnection.objects.filter(pk=connection.pk).update(
                api_key_encrypted=rotate(connection.api_key_encrypted)
            )
        rotated += 1
    config_cache.invalidate()  # update() sends no signal
    return rotated
