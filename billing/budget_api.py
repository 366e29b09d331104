"""REST: an organization's budgets, a project's and its keys' rate limits.

- ``organizations/<id>/budgets/`` (and ``…/<budget_id>/``): owners and admins list, add,
  change and delete every budget of their organization — its own, its projects', members' and
  keys'; a member lists and reads the enabled budgets that apply to their calls, and is refused
  (403) every change. Budgets are people's business: a project key is refused (a key of this
  organization 403 ``keys_not_allowed``; any other key is no key at all here, 401, as another
  project's key is on a project's URLs), so a leaked key cannot raise its own budget.
- ``projects/<id>/rate-limits/``: everyone in the project and its keys (scope ``read``) read
  them; owners and admins change them, signed in.
- ``projects/<id>/keys/<key_id>/rate-limits/``: a key's own limits, owners and admins only
  (as the project's keys themselves).

Thin: serializers check shapes, ``budget_services`` checks rules and writes (a refusal names
its field: 400 with ``param``), ``budget_selectors`` finds.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, NoReturn

from django.utils.translation import gettext as _
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import key_selectors
from accounts.api_auth import api_key_of
from accounts.api_base import ProjectEndpoint
from accounts.api_keys import INVALID_KEY_MESSAGE
from accounts.models import ApiKey, Membership, Organization, Project, User
from accounts.selectors import membership_for, organizations_for_user
from accounts.two_factor import two_factor_satisfied
from core.errors import ServiceError

from . import budget_selectors, budget_services
from .budget_services import COVERAGE, DEFAULT_THRESHOLDS, MAX_THRESHOLDS, NO_COVERAGE_CHANGE
from .models import MONEY, PRICE, Budget
from .selectors import BudgetStatus, statuses_of

PER_MINUTE_MAX = 2**31 - 1


def _refuse_on_field(error: ServiceError) -> NoReturn:
    """A service's refusal about one field answers as invalid input does: 400 naming it."""
    if error.param:
        raise serializers.ValidationError({error.param: [error.message]}) from None
    raise error


def _refuse_unknown(serializer: serializers.Serializer[Any]) -> None:
    """A field the API does not know is refused (400 naming it), never dropped."""
    unknown = sorted(set(serializer.initial_data) - set(serializer.fields))
    if unknown:
        raise serializers.ValidationError({unknown[0]: [_("This field is not recognized.")]})


# --- the organization ------------------------------------------------------------------------


class OrganizationEndpoint(GenericAPIView):  # type: ignore[type-arg]
    """Resolves ``self.organization`` and the caller's ``self.membership`` from the URL's
    ``organization_id`` before any handler runs, for a signed-in person only: an outsider gets
    404, the same as for an organization that does not exist."""

    allow_keys = False
    organization: Organization
    membership: Membership

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self.perform_authentication(request)
        key = api_key_of(request)
        if key is None and not request.user.is_authenticated:
            raise exceptions.NotAuthenticated()
        organization_id = int(kwargs["organization_id"])
        if key is not None and key.project.organization_id != organization_id:
            # As on a project's URLs: to another organization a key is no key at all.
            raise exceptions.AuthenticationFailed(INVALID_KEY_MESSAGE, code="invalid_api_key")
        super().initial(request, *args, **kwargs)  # a key of this organization: 403 here
        organization = organizations_for_user(request.user).filter(pk=organization_id).first()
        membership = (
            None
            if organization is None
            else membership_for(user=request.user, organization=organization)
        )
        if organization is None or membership is None:
            raise exceptions.NotFound(_("No such organization."), code="not_found")
        self.organization, self.membership = organization, membership
        if not two_factor_satisfied(user=request.user, organization=organization):
            raise ServiceError(code="two_factor_required")

    def require_manager(self) -> Membership:
        if not self.membership.can_manage:
            raise exceptions.PermissionDenied(
                _("Only the organization's owners and admins can do this."), code="forbidden"
            )
        return self.membership


# --- budgets ---------------------------------------------------------------------------------


class BudgetSerializer(serializers.Serializer[BudgetStatus]):
    """A budget and its current period's figures."""

    id = serializers.IntegerField(source="budget.pk")
    scope = serializers.ChoiceField(source="budget.scope", choices=Budget.Scope.values)
    project = serializers.IntegerField(
        source="budget.project_id", allow_null=True, help_text="Project, member and key budgets."
    )
    user = serializers.IntegerField(
        source="budget.user_id", allow_null=True, help_text="The member, for a member budget."
    )
    api_key = serializers.IntegerField(
        source="budget.api_key_id", allow_null=True, help_text="The key, for a key budget."
    )
    subject = serializers.CharField(help_text="Whose spending it limits, in words.")
    period = serializers.ChoiceField(source="budget.period", choices=Budget.Period.values)
    limit_usd = serializers.DecimalField(
        source="budget.limit_usd", **PRICE, help_text="The hard limit in USD."
    )
    soft_thresholds = serializers.ListField(
        source="budget.thresholds",
        child=serializers.IntegerField(),
        help_text="Percentages of the limit that send an alert.",
    )
    enabled = serializers.BooleanField(source="budget.enabled")
    created_at = serializers.DateTimeField(source="budget.created_at")
    period_start = serializers.DateTimeField(help_text="Start of the current period (UTC).")
    resets_at = serializers.DateTimeField(
        source="period_end",
        allow_null=True,
        help_text="When the current period ends and spending counts from 0; null: lifetime.",
    )
    spent = serializers.DecimalField(**MONEY, help_text="Spent this period, USD, exactly.")
    reserved = serializers.DecimalField(
        **MONEY, help_text="Held for calls in flight this period, USD."
    )
    remaining = serializers.DecimalField(
        **MONEY, help_text="What calls may still spend this period: limit - spent - reserved."
    )


class BudgetFilterSerializer(serializers.Serializer[Any]):
    scope = serializers.ChoiceField(choices=Budget.Scope.values, required=False)
    project = serializers.IntegerField(
        required=False, help_text="Budgets of this project (its own, its members', its keys')."
    )


class BudgetCreateSerializer(serializers.Serializer[Any]):
    scope = serializers.ChoiceField(
        choices=Budget.Scope.values,
        help_text="organization: every call; project: the project's calls; member: one member's "
        "calls in a project (project and user); api_key: the calls made with one key (api_key).",
    )
    project = serializers.PrimaryKeyRelatedField(
        queryset=Project.objects.none(), required=False, allow_null=True
    )
    user = serializers.PrimaryKeyRelatedField(
        queryset=User.objects.none(),
        required=False,
        allow_null=True,
        help_text="A member of the organization, for a member budget.",
    )
    api_key = serializers.PrimaryKeyRelatedField(
        queryset=ApiKey.objects.none(),
        required=False,
        allow_null=True,
        help_text="A key of one of the organization's projects, for a key budget.",
    )
    period = serializers.ChoiceField(
        choices=Budget.Period.values, default=Budget.Period.MONTH, help_text="UTC periods."
    )
    limit_usd = serializers.DecimalField(**PRICE, min_value=Decimal(0))
    soft_thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=100),
        max_length=MAX_THRESHOLDS,
        default=list(DEFAULT_THRESHOLDS),
        help_text="Percentages of the limit (1-100) that alert the owners and admins.",
    )
    enabled = serializers.BooleanField(default=True)

    def __init__(self, *args: Any, organization: Organization | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if organization is not None:
            choices = budget_selectors.budget_choices(organization)
            self.fields["project"].queryset = choices.projects  # type: ignore[attr-defined]
            self.fields["user"].queryset = choices.members  # type: ignore[attr-defined]
            self.fields["api_key"].queryset = choices.api_keys  # type: ignore[attr-defined]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        _refuse_unknown(self)
        return attrs


class BudgetUpdateSerializer(serializers.Serializer[Any]):
    period = serializers.ChoiceField(
        choices=Budget.Period.values,
        required=False,
        help_text="A new period counts from its start, from the ledger.",
    )
    limit_usd = serializers.DecimalField(**PRICE, min_value=Decimal(0), required=False)
    soft_thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=100),
        max_length=MAX_THRESHOLDS,
        required=False,
    )
    enabled = serializers.BooleanField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        fixed = sorted(set(self.initial_data) & set(COVERAGE))
        if fixed:
            raise serializers.ValidationError({fixed[0]: [str(NO_COVERAGE_CHANGE)]})
        _refuse_unknown(self)
        return attrs


def _one(budget: Budget) -> dict[str, Any]:
    [figures] = statuses_of([budget])
    return BudgetSerializer(figures).data


@extend_schema(tags=["Budgets"])
class BudgetListView(OrganizationEndpoint):
    serializer_class = BudgetSerializer

    def get_queryset(self) -> Any:
        filters = BudgetFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        budgets = budget_selectors.budgets_visible_to(self.membership)
        if "scope" in filters.validated_data:
            budgets = budgets.filter(scope=filters.validated_data["scope"])
        if "project" in filters.validated_data:
            budgets = budgets.filter(project_id=filters.validated_data["project"])
        return budgets

    @extend_schema(parameters=[BudgetFilterSerializer], responses=BudgetSerializer(many=True))
    def get(self, request: Request, organization_id: int) -> Response:
        """Owners and admins: every budget of the organization; a member: those that apply to
        their calls. Each with its current period's spend, holds and reset."""
        page = self.paginate_queryset(self.get_queryset())
        figures = statuses_of(page or [])
        return self.get_paginated_response([BudgetSerializer(one).data for one in figures])

    @extend_schema(request=BudgetCreateSerializer, responses={201: BudgetSerializer})
    def post(self, request: Request, organization_id: int) -> Response:
        """Add a budget (owners and admins). It limits the very next call."""
        actor = self.require_manager()
        form = BudgetCreateSerializer(data=request.data, organization=self.organization)
        form.is_valid(raise_exception=True)
        try:
            budget = budget_services.budget_create(actor=actor, **form.validated_data)
        except ServiceError as error:
            _refuse_on_field(error)
        return Response(_one(budget), status=status.HTTP_201_CREATED)


@extend_schema(tags=["Budgets"])
class BudgetDetailView(OrganizationEndpoint):
    def _budget(self, budget_id: int) -> Budget:
        return budget_selectors.get_budget_or_404(membership=self.membership, pk=budget_id)

    @extend_schema(responses=BudgetSerializer)
    def get(self, request: Request, organization_id: int, budget_id: int) -> Response:
        return Response(_one(self._budget(budget_id)))

    @extend_schema(request=BudgetUpdateSerializer, responses=BudgetSerializer)
    def patch(self, request: Request, organization_id: int, budget_id: int) -> Response:
        """Change the limit, thresholds, period or state (owners and admins); what a budget
        covers is fixed. Takes effect on the very next call."""
        actor = self.require_manager()
        budget = self._budget(budget_id)
        form = BudgetUpdateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            budget = budget_services.budget_update(
                actor=actor, budget=budget, **form.validated_data
            )
        except ServiceError as error:
            _refuse_on_field(error)
        return Response(_one(budget))

    @extend_schema(responses={204: None})
    def delete(self, request: Request, organization_id: int, budget_id: int) -> Response:
        actor = self.require_manager()
        budget_services.budget_delete(actor=actor, budget=self._budget(budget_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- rate limits -----------------------------------------------------------------------------


class RateLimitSerializer(serializers.Serializer[Any]):
    requests_per_minute = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=PER_MINUTE_MAX,
        help_text="null: no limit.",
    )
    tokens_per_minute = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=PER_MINUTE_MAX,
        help_text="Prompt and reply tokens a minute; null: no limit.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        _refuse_unknown(self)
        return attrs


def _limits(requests: int | None, tokens: int | None) -> dict[str, int | None]:
    return {"requests_per_minute": requests, "tokens_per_minute": tokens}


@extend_schema(tags=["Rate limits"])
class ProjectRateLimitView(ProjectEndpoint):
    """The project's requests and tokens per minute, which every call in it must pass."""

    @property
    def allow_keys(self) -> bool:
        return self.request.method in SAFE_METHODS

    def _current(self) -> dict[str, int | None]:
        limit = budget_selectors.rate_limit_of(self.project)
        if limit is None:
            return _limits(None, None)
        return _limits(limit.requests_per_minute, limit.tokens_per_minute)

    @extend_schema(responses=RateLimitSerializer)
    def get(self, request: Request, project_id: int) -> Response:
        return Response(self._current())

    @extend_schema(request=RateLimitSerializer, responses=RateLimitSerializer)
    def patch(self, request: Request, project_id: int) -> Response:
        """Owners and admins, signed in. Fields left out keep their value; null removes one."""
        actor = self.require_manager()
        form = RateLimitSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        values = {**self._current(), **form.validated_data}
        try:
            budget_services.rate_limit_set(actor=actor, project=self.project, **values)
        except ServiceError as error:
            _refuse_on_field(error)
        return Response(self._current())


@extend_schema(tags=["Rate limits"])
class ApiKeyRateLimitView(ProjectEndpoint):
    """One key's own limits, on top of its project's (owners and admins, never a key)."""

    allow_keys = False

    def _key(self, key_id: int) -> tuple[Membership, ApiKey]:
        actor = self.require_manager()  # before the lookup: a member learns nothing of keys
        return actor, key_selectors.get_api_key_or_404(project=self.project, pk=key_id)

    @extend_schema(responses=RateLimitSerializer)
    def get(self, request: Request, project_id: int, key_id: int) -> Response:
        _, key = self._key(key_id)
        return Response(_limits(key.requests_per_minute, key.tokens_per_minute))

    @extend_schema(request=RateLimitSerializer, responses=RateLimitSerializer)
    def patch(self, request: Request, project_id: int, key_id: int) -> Response:
        """Fields left out keep their value; null removes one."""
        actor, key = self._key(key_id)
        form = RateLimitSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        values = {
            **_limits(key.requests_per_minute, key.tokens_per_minute),
            **form.validated_data,
        }
        try:
            key = budget_services.api_key_rate_limits_set(actor=actor, key=key, **values)
        except ServiceError as error:
            _refuse_on_field(error)
        return Response(_limits(key.requests_per_minute, key.tokens_per_minute))
