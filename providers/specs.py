"""From a project's model name to a Provider. The only place services get a Provider from.

Resolution (database) and construction (no database) are separate steps: services resolve a
``ProviderSpec`` inside their transaction; the streaming task builds the provider from it on
the event loop without touching the ORM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache, partial

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext as _

from accounts.models import Project
from core.config_cache import cached
from core.errors import ServiceError

from . import selectors
from .addresses import AddressPolicy
from .crypto import DecryptionError, decrypt
from .llm.base import ChatRequest, Provider
from .llm.openai_provider import OpenAIProvider
from .models import ProviderConnection


@dataclass(frozen=True)
class ProviderSpec:
    kind: str
    model: str
    context_window: int
    max_output_tokens: int | None = None  # None: as much as the context window leaves
    base_url: str | None = None
    api_key: str = field(default="", repr=False)  # plaintext, in memory only, never printed
    organization: str | None = None
    project: str | None = None
    timeout: float = 60.0
    max_retries: int = 2
    connection_id: int | None = None
    # The connection answers /v1/moderations (``ProviderConnection.supports_moderation``).
    supports_moderation: bool = False


def spec_for_connection(
    connection: ProviderConnection,
    *,
    model: str,
    window: int,
    max_output_tokens: int | None = None,
) -> ProviderSpec:
    try:
        api_key = decrypt(connection.api_key_encrypted) if connection.api_key_encrypted else ""
    except DecryptionError:
        raise ServiceError(
            _(
                "The key of the connection “%(name)s” cannot be read with the configured "
                "encryption keys. An admin needs to enter it again."
            )
            % {"name": connection.name},
            code="connection_key_unreadable",
        ) from None
    return ProviderSpec(
        kind=connection.kind,
        model=model,
        context_window=window,
        max_output_tokens=max_output_tokens,
        base_url=connection.base_url or None,
        api_key=api_key,
        organization=connection.openai_organization or None,
        project=connection.openai_project or None,
        timeout=connection.timeout,
        max_retries=connection.max_retries,
        connection_id=connection.pk,
        supports_moderation=connection.supports_moderation,
    )


def spec_for(*, project: Project, model: str) -> ProviderSpec:
    """The provider serving ``model`` in ``project``; refuses a model the project does not allow.
    Kept in memory until a connection, its models or the project's models change."""
    return cached(("spec", project.pk, model), partial(_spec_for, project, model))


def _spec_for(project: Project, model: str) -> ProviderSpec:
    connection_model = selectors.resolve_model(project, model)
    if connection_model is None:
        raise ServiceError(
            _("The model %(model)r is not available in this project.") % {"model": model},
            code="model_not_found",
        )
    return spec_for_connection(
        connection_model.connection,
        model=model,
        window=connection_model.context_window,
        max_output_tokens=connection_model.max_output_tokens,
    )


def unsupported_param(spec: ProviderSpec, request: ChatRequest) -> str | None:
    """The first parameter of ``request`` the provider cannot honour, known before any call:
    the built-in model says (``LocalProvider.unsupported``); an OpenAI-compatible server
    decides for itself, and refuses with a 400 of its own."""
    if spec.kind == ProviderConnection.Kind.LOCAL:
        return build_provider(spec).unsupported(request)
    return None


@lru_cache(maxsize=4)
def _policy(networks: tuple[str, ...]) -> AddressPolicy:
    try:
        return AddressPolicy.allowing(networks)
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None


def address_policy() -> AddressPolicy:
    """Where the server may send requests for a tenant: public addresses, and the networks of
    the UPSTREAM_ALLOWED_NETWORKS setting."""
    return _policy(tuple(settings.UPSTREAM_ALLOWED_NETWORKS))


def build_provider(spec: ProviderSpec) -> Provider:
    if spec.kind == ProviderConnection.Kind.LOCAL:
        from .llm.local_provider import LocalProvider  # loads llama.cpp only when used

        # One configuration per process: a second one would load a second model and thread.
        return LocalProvider(
            n_ctx=settings.LOCAL_MODEL_CONTEXT or None,
            n_threads=settings.LOCAL_MODEL_THREADS or None,
        )
    return OpenAIProvider(
        base_url=spec.base_url,
        api_key=spec.api_key,
        timeout=spec.timeout,
        max_retries=spec.max_retries,
        organization=spec.organization,
        project=spec.project,
        address_policy=address_policy(),
    )
