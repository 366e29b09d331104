"""Reads of provider connections and of the models a project may use."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils.translation import gettext as _

from accounts.models import Project
from core.config_cache import cached

from .llm.catalog import LOCAL_MODEL_NAME
from .models import ConnectionModel, ProjectModel, ProviderConnection


def connections_for_project(project: Project) -> QuerySet[ProviderConnection]:
    return ProviderConnection.objects.for_project(project).select_related("project")


def get_project_connection_or_404(*, project: Project, pk: int) -> ProviderConnection:
    """A connection managers may edit from this project's pages: the organization's shared
    ones and this project's own. Another project's own, or a global one, answers 404."""
    try:
        return (
            ProviderConnection.objects.managed_by(project.organization)
            .filter(Q(project__isnull=True) | Q(project=project))
            .get(pk=pk)
        )
    except ProviderConnection.DoesNotExist:
        raise Http404(_("No such connection.")) from None


def models_visible_to(project: Project) -> list[ConnectionModel]:
    """Every model of every connection the project sees, by connection."""
    return list(
        ConnectionModel.objects.filter(connection__in=connections_for_project(project))
        .select_related("connection")
        .order_by("connection__name", "connection_id", "name")
    )


def saved_allow_list(project: Project) -> list[ProjectModel]:
    """The project's explicit allow-list (empty: every visible model is allowed)."""
    return list(ProjectModel.objects.filter(project=project).select_related("model"))


def get_visible_connection_or_404(*, project: Project, pk: int) -> ProviderConnection:
    try:
        return connections_for_project(project).get(pk=pk)
    except ProviderConnection.DoesNotExist:
        raise Http404(_("No such connection.")) from None


# Precedence when two visible connections serve the same model name.
def _rank(connection: ProviderConnection) -> int:
    if connection.project_id:
        return 0
    return 1 if connection.organization_id else 2


@dataclass(frozen=True)
class ModelChoice:
    name: str
    model: ConnectionModel
    is_default: bool


def model_choices(project: Project) -> list[ModelChoice]:
    """The models members of the project may pick, the default first.

    With an explicit allow-list, exactly those. Without one, every model of every visible
    connection (a name served twice goes to the nearest connection), defaulting to the local
    model — so a new project chats out of the box.
    """
    allowed = list(ProjectModel.objects.filter(project=project).select_related("model__connection"))
    if allowed:
        choices = [ModelChoice(a.name, a.model, a.is_default) for a in allowed]
    else:
        by_name: dict[str, ConnectionModel] = {}
        candidates = ConnectionModel.objects.filter(
            connection__in=connections_for_project(project)
        ).select_related("connection")
        for model in sorted(candidates, key=lambda m: (_rank(m.connection), m.pk)):
            by_name.setdefault(model.name, model)
        default = LOCAL_MODEL_NAME if LOCAL_MODEL_NAME in by_name else next(iter(by_name), None)
        choices = [ModelChoice(name, m, name == default) for name, m in by_name.items()]
    if choices and not any(c.is_default for c in choices):
        choices[0] = ModelChoice(choices[0].name, choices[0].model, True)
    return sorted(choices, key=lambda c: (not c.is_default, c.name))


def allowed_model_names(project: Project) -> list[str]:
    return [c.name for c in model_choices(project)]


def default_model_name(project: Project) -> str | None:
    choices = model_choices(project)
    return choices[0].name if choices else None


def resolve_model(project: Project, name: str) -> ConnectionModel | None:
    for choice in model_choices(project):
        if choice.name == name:
            return choice.model
    return None


@dataclass(frozen=True)
class Abilities:
    """What a project's model can take besides text (its ConnectionModel's flags)."""

    vision: bool
    tools: bool
    json: bool


def model_abilities(project: Project, name: str) -> Abilities | None:
    """``resolve_model``'s flags, kept in memory until a connection or model changes: every
    reply asks, and most never need the rest of the row."""
    return cached(("abilities", project.pk, name), partial(_abilities, project, name))


def _abilities(project: Project, name: str) -> Abilities | None:
    found = resolve_model(project, name)
    if found is None:
        return None
    return Abilities(
        vision=found.supports_vision, tools=found.supports_tools, json=found.supports_json
    )


def connections_using(connection: ProviderConnection) -> dict[str, list[str]]:
    """What would break if the connection went: projects allowing its models, by project."""
    uses: dict[str, list[str]] = {}
    for allowed in ProjectModel.objects.filter(model__connection=connection).select_related(
        "project"
    ):
        uses.setdefault(allowed.project.name, []).append(allowed.name)
    return uses
