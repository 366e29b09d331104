"""The admin for prices, the usage ledger and cost limits (staff only).

Budget figures are always the current period's, computed in SQL (see ``with_current_figures``)
so that lists, inlines and the "≥ 80 %" / "blocked" filters agree and cost one query.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, TypedDict, TypeGuard, TypeVar

from django import forms
from django.contrib import admin
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import (
    Case,
    Count,
    DateTimeField,
    DecimalField,
    F,
    Field,
    Model,
    OuterRef,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.db.models.lookups import GreaterThanOrEqual, LessThan
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from accounts.admin import OrganizationAdmin, ProjectAdmin
from accounts.models import Membership, Organization, Project
from accounts.signals import AuditedAdmin
from core import config_cache
from core.money import usd

from .models import (
    MONEY,
    Budget,
    BudgetAlert,
    BudgetPeriod,
    Hold,
    ModelPrice,
    RateLimit,
    Statement,
    StatementLine,
    UsageRecord,
    UsageRollup,
)
from .services import period_bounds

MONEY_FIELD = DecimalField(**MONEY)
# Where a lifetime budget's period "ends", for a bound every database can compare against.
NEVER = datetime(9999, 1, 1, tzinfo=UTC)


# --- figures -----------------------------------------------------------------------------------


if TYPE_CHECKING:
    # For type checkers only: WithAnnotations cannot be subscripted at run time.
    from django_stubs_ext import WithAnnotations

    class BudgetFigures(TypedDict):
        """What ``with_current_figures`` annotates."""

        _period_start: datetime
        _period_end: datetime
        _spent: Decimal
        _reserved: Decimal

    BudgetWithFigures = WithAnnotations[Budget, BudgetFigures]


def with_current_figures(
    budgets: QuerySet[Budget], *, now: datetime | None = None
) -> QuerySet[BudgetWithFigures]:
    """Annotate ``_spent`` and ``_reserved`` for the period containing ``now``.

    They come from the budget's BudgetPeriod row for that period; without one yet (no call so
    far this period), spent is what the ledger says (as ``services.ledger_spend``) and nothing
    is reserved — the same figures ``quota_reserve`` will start the row from.
    """
    now = now or timezone.now()
    bounds = {period: period_bounds(period, now) for period in Budget.Period.values}
    current = BudgetPeriod.objects.filter(budget=OuterRef("pk"), start=OuterRef("_period_start"))
    ledger = UsageRecord.objects.filter(
        organization_id=OuterRef("organization_id"),
        created_at__gte=OuterRef("_period_start"),
        created_at__lt=OuterRef("_period_end"),
    )
    return budgets.annotate(
        _period_start=Case(
            *(When(period=p, then=Value(start)) for p, (start, _) in bounds.items()),
            output_field=DateTimeField(),
        ),
        _period_end=Case(
            *(When(period=p, then=Value(end or NEVER)) for p, (_, end) in bounds.items()),
            output_field=DateTimeField(),
        ),
        _spent=Coalesce(
            Subquery(current.values("spent"), output_field=MONEY_FIELD),
            Case(
                When(scope=Budget.Scope.ORGANIZATION, then=_total_cost(ledger)),
                When(
                    scope=Budget.Scope.PROJECT,
                    then=_total_cost(ledger.filter(project_id=OuterRef("project_id"))),
                ),
                When(
                    scope=Budget.Scope.MEMBER,
                    then=_total_cost(
                        ledger.filter(
                            project_id=OuterRef("project_id"), user_id=OuterRef("user_id")
                        )
                    ),
                ),
                When(
                    scope=Budget.Scope.API_KEY,
                    then=_total_cost(ledger.filter(api_key_id=OuterRef("api_key_id"))),
                ),
                output_field=MONEY_FIELD,
            ),
            Value(Decimal(0)),
            output_field=MONEY_FIELD,
        ),
        _reserved=Coalesce(
            Subquery(current.values("reserved"), output_field=MONEY_FIELD),
            Value(Decimal(0)),
            output_field=MONEY_FIELD,
        ),
    )


def _total_cost(rows: QuerySet[UsageRecord]) -> Subquery:
    total = rows.order_by().values("organization_id").annotate(total=Sum("cost")).values("total")
    return Subquery(total, output_field=MONEY_FIELD)


def has_figures(budget: Budget) -> TypeGuard[BudgetWithFigures]:
    """Whether the budget comes annotated by ``with_current_figures`` (an inline's new row
    does not)."""
    return hasattr(budget, "_spent")


def used_percent(budget: BudgetWithFigures) -> Decimal:
    """Spent as a share of the limit; a zero limit is fully used."""
    if not budget.limit_usd:
        return Decimal(100)
    return budget._spent * 100 / budget.limit_usd


def usage_bar(percent: Decimal) -> SafeString:
    shown = percent.quantize(Decimal(1), ROUND_HALF_UP)
    color = "#ba2121" if percent >= 100 else "#d98200" if percent >= 80 else "#3d8b3d"
    # Drawn with SVG attributes, not style="": the Content-Security-Policy refuses inline styles.
    return format_html(
        '<svg width="80" height="10" role="img"><title>{}% of the limit spent</title>'
        '<rect width="100%" height="100%" rx="3" fill="#f4f4f4"/>'
        '<rect width="{}%" height="100%" rx="3" fill="{}"/>'
        '<rect x=".5" y=".5" width="79" height="9" rx="3" fill="none" stroke="#aaa"/></svg> {}%',
        shown,
        min(shown, Decimal(100)),
        color,
        shown,
    )


if TYPE_CHECKING:
    # What the mixin goes into (a budget admin or inline), whose get_queryset it extends.
    _BudgetAdminBase = admin.options.BaseModelAdmin[Budget]
else:
    _BudgetAdminBase = object


class BudgetFiguresMixin(_BudgetAdminBase):
    """This period's spent / reserved / % used / remaining, for lists and inlines."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[BudgetWithFigures]:
        return with_current_figures(
            super()
            .get_queryset(request)
            .select_related("organization", "project", "user", "api_key")
        )

    @admin.display(description="spent this period", ordering="_spent")
    def spent(self, budget: Budget) -> str:
        return usd(budget._spent) if has_figures(budget) else "—"

    @admin.display(description="reserved (in flight)", ordering="_reserved")
    def reserved(self, budget: Budget) -> str:
        return usd(budget._reserved) if hasattr(budget, "_reserved") else "—"

    @admin.display(description="limit", ordering="limit_usd")
    def limit(self, budget: Budget) -> str:
        return usd(budget.limit_usd) if budget.limit_usd is not None else "—"

    @admin.display(description="% used")
    def used(self, budget: Budget) -> str:
        return usage_bar(used_percent(budget)) if has_figures(budget) else "—"

    @admin.display(description="remaining")
    def remaining(self, budget: Budget) -> str:
        if not has_figures(budget):
            return "—"
        return usd(max(budget.limit_usd - budget._spent - budget._reserved, Decimal(0)))


class UsedFilter(admin.SimpleListFilter):
    title = "usage this period"
    parameter_name = "used"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("80", "≥ 80 % used")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Budget]) -> QuerySet[Budget]:
        if self.value() == "80":  # in whole numbers: SQLite compares decimals as floats
            return queryset.filter(GreaterThanOrEqual(F("_spent") * 100, F("limit_usd") * 80))
        return queryset


class BlockedFilter(admin.SimpleListFilter):
    title = "blocked"
    parameter_name = "blocked"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Blocked (spent + reserved ≥ limit)"), ("no", "Not blocked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Budget]) -> QuerySet[Budget]:
        committed = F("_spent") + F("_reserved")
        if self.value() == "yes":
            return queryset.filter(GreaterThanOrEqual(committed, F("limit_usd")))
        if self.value() == "no":
            return queryset.filter(LessThan(committed, F("limit_usd")))
        return queryset


# --- budgets -----------------------------------------------------------------------------------

BUDGET_FIELDS = [
    "scope", "project", "user", "api_key", "period", "limit_usd", "soft_thresholds", "enabled",
]  # fmt: skip
FIGURES = ["spent", "reserved", "used", "remaining"]
# What staff's changes are recorded as in the audit trail (accounts.signals.AuditedAdmin).
BUDGET_AUDIT = {"add": "budget.created", "change": "budget.updated", "delete": "budget.deleted"}
COVERS = ["organization", "scope", "project", "user", "api_key"]


class BudgetForm(forms.ModelForm[Budget]):
    """Scope and fields must agree: what the database constraint checks, said clearly, plus
    what it cannot check (the project's organization, the member's membership, the key's
    project)."""

    class Meta:
        model = Budget
        fields = ["organization", *BUDGET_FIELDS]

    def clean_soft_thresholds(self) -> str:
        value = self.cleaned_data["soft_thresholds"]
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not all(part.isdigit() and 0 < int(part) <= 1000 for part in parts):
            raise ValidationError("Whole percentages from 1 to 1000, comma-separated: 50,80,100.")
        return ",".join(parts)

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data  # what ModelForm.clean() returns (typed as possibly None)
        if self.instance.pk is not None:
            # The period counters were kept for what the budget covered; they would be wrong.
            for name in [n for n in COVERS if n in self.changed_data]:
                self._error(name, "What a budget covers cannot change: add a new budget instead.")
        scope, project, user, key = (
            self._value(name) for name in ("scope", "project", "user", "api_key")
        )
        # A key has one project: no need to pick it twice. (The project page's inline has no
        # project field: its project is the page's, which the key must belong to.)
        if scope == Budget.Scope.API_KEY and key and project is None and "project" in self.fields:
            project = cleaned["project"] = key.project
        if scope != Budget.Scope.API_KEY and key is not None:
            self._error("api_key", "Only an API key budget names a key: leave empty.")
        if "organization" not in self.fields and project is not None:
            self.instance.organization = project.organization  # the project page's inline
        organization = self._value("organization")
        if scope == Budget.Scope.ORGANIZATION:
            if project is not None:
                self._error("project", "An organization budget covers every project: leave empty.")
            if user is not None:
                self._error("user", "An organization budget covers everyone: leave empty.")
            return cleaned
        if project is None:
            self._error("project", f"{_A_SCOPE_BUDGET.get(scope, 'This budget')} needs a project.")
        elif organization is not None and project.organization_id != organization.pk:
            self._error("project", f"{project} is not a project of {organization}.")
        if scope == Budget.Scope.PROJECT and user is not None:
            self._error("user", "A project budget covers everyone in it: leave empty.")
        if scope == Budget.Scope.MEMBER:
            if user is None:
                self._error("user", "A member budget needs the member.")
            elif project is not None and not _is_member(user, project.organization_id):
                self._error("user", f"{user} is not a member of {project.organization}.")
        if scope == Budget.Scope.API_KEY:
            if user is not None:
                self._error("user", "An API key budget covers the key's calls: leave empty.")
            if key is None:
                self._error("api_key", "An API key budget needs the key.")
            elif project is not None and key.project_id != project.pk:
                self._error("api_key", f"{key} is not a key of project {project.name}.")
        return cleaned

    def _value(self, name: str) -> Any:
        """The submitted value, or the instance's for a field this form leaves out."""
        if name in self.fields:
            return self.cleaned_data.get(name)
        field = Budget._meta.get_field(name)
        # isinstance: a reverse relation has no attname (and is never one of this form's).
        if (
            field.is_relation
            and isinstance(field, Field)
            and getattr(self.instance, field.attname) is None
        ):
            return None
        return getattr(self.instance, name)

    def _error(self, name: str, message: str) -> None:
        self.add_error(name if name in self.fields else None, message)


_A_SCOPE_BUDGET = {
    Budget.Scope.PROJECT: "A project budget",
    Budget.Scope.MEMBER: "A member budget",
    Budget.Scope.API_KEY: "An API key budget",
}


def _is_member(user: Any, organization_id: int) -> bool:
    return Membership.objects.filter(user=user, organization_id=organization_id).exists()


class RaiseLimitForm(forms.Form):
    amount = forms.DecimalField(
        label="Raise by (USD)", max_digits=14, decimal_places=6, help_text="Added to each limit."
    )

    def __init__(self, *args: Any, budgets: Iterable[Budget], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budgets = list(budgets)

    def clean_amount(self) -> Decimal:
        amount: Decimal = self.cleaned_data["amount"]
        if amount <= 0:
            raise ValidationError("Enter an amount greater than zero.")
        field = Budget._meta.get_field("limit_usd")
        for budget in self.budgets:
            try:
                field.run_validators(budget.limit_usd + amount)
            except ValidationError:
                raise ValidationError(f"That would take {budget} past the largest limit.") from None
        return amount


# The parent is the organization here and the project in ProjectBudgetInline.
class OrganizationBudgetInline(BudgetFiguresMixin, admin.TabularInline[Budget, Any]):
    model = Budget
    form = BudgetForm
    extra = 0
    fields = [*BUDGET_FIELDS, *FIGURES]
    readonly_fields = FIGURES
    autocomplete_fields = ["project", "user", "api_key"]
    show_change_link = True


class ProjectBudgetInline(OrganizationBudgetInline):
    fk_name = "project"
    fields = [f for f in OrganizationBudgetInline.fields if f != "project"]

    def formfield_for_choice_field(
        self, db_field: Field[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> forms.TypedChoiceField | None:
        if db_field.name == "scope":
            kwargs["choices"] = [
                (value, label)
                for value, label in Budget.Scope.choices
                if value != Budget.Scope.ORGANIZATION
            ]
        return super().formfield_for_choice_field(db_field, request, **kwargs)


admin.site.unregister(Organization)
admin.site.unregister(Project)


@admin.register(Organization)
class OrganizationWithBudgetsAdmin(OrganizationAdmin):
    inlines = [*OrganizationAdmin.inlines, OrganizationBudgetInline]
    audit_inlines = {**OrganizationAdmin.audit_inlines, Budget: BUDGET_AUDIT}


@admin.register(Project)
class ProjectWithBudgetsAdmin(ProjectAdmin):
    inlines = [*ProjectAdmin.inlines, ProjectBudgetInline]
    audit_inlines = {**ProjectAdmin.audit_inlines, Budget: BUDGET_AUDIT}


@admin.register(Budget)
class BudgetAdmin(AuditedAdmin, BudgetFiguresMixin, admin.ModelAdmin[Budget]):
    audit_actions = BUDGET_AUDIT
    form = BudgetForm
    list_display = [
        "scope", "organization", "project", "user", "api_key", "period", "limit", *FIGURES,
        "enabled",
    ]  # fmt: skip
    list_filter = [UsedFilter, BlockedFilter, "scope", "period", "enabled"]
    search_fields = [
        "organization__name", "organization__slug", "project__name", "user__email",
        "api_key__name", "api_key__prefix",
    ]  # fmt: skip
    autocomplete_fields = ["organization", "project", "user", "api_key"]
    fields = ["organization", *BUDGET_FIELDS, *FIGURES, "created_at"]
    readonly_fields = [*FIGURES, "created_at"]
    actions = ["raise_limit", "disable"]

    @admin.action(description="Raise the limit by…", permissions=["change"])
    def raise_limit(self, request: HttpRequest, queryset: QuerySet[Budget]) -> HttpResponse | None:
        budgets = list(queryset)
        form = RaiseLimitForm(request.POST if "apply" in request.POST else None, budgets=budgets)
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "title": "Raise the limit",
                "opts": self.opts,
                "budgets": budgets,
                "form": form,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            }
            return TemplateResponse(request, "admin/billing/budget/raise_limit.html", context)
        amount = form.cleaned_data["amount"]
        with transaction.atomic():
            # Decimal arithmetic here, not F() + amount: SQLite would add in floating point.
            for budget in Budget.objects.select_for_update().filter(pk__in=[b.pk for b in budgets]):
                before = budget.limit_usd
                budget.limit_usd += amount
                budget.save(update_fields=["limit_usd"])
                self.log_change(request, budget, f"Raised the limit by ${amount}.")
                self.audit(
                    request, "budget.updated", budget, {"limit_usd": [before, budget.limit_usd]}
                )
        self.message_user(request, f"Raised {len(budgets)} limit(s) by {usd(amount)}.")
        return None

    @admin.action(description="Disable", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Budget]) -> None:
        with transaction.atomic():  # the change and its audit events, or neither
            budgets = list(queryset.filter(enabled=True))
            Budget.objects.filter(pk__in=[b.pk for b in budgets]).update(enabled=False)
            for budget in budgets:
                self.audit(request, "budget.updated", budget, {"enabled": [True, False]})
        config_cache.invalidate()  # update() sends no signal: calls must stop seeing them now
        for budget in budgets:
            self.log_change(request, budget, "Disabled.")
        self.message_user(request, f"Disabled {len(budgets)} budget(s).")


# --- prices and the ledger ---------------------------------------------------------------------


PRICE_FIELDS = [
    "model", "input_per_million", "cached_input_per_million", "output_per_million",
    "batch_input_per_million", "batch_output_per_million", "effective_from", "source",
]  # fmt: skip
LONG_CONTEXT_FIELDS = [
    "long_context_threshold", "long_input_per_million", "long_cached_input_per_million",
    "long_output_per_million",
]  # fmt: skip


@admin.register(ModelPrice)
class ModelPriceAdmin(AuditedAdmin, admin.ModelAdmin[ModelPrice]):
    audit_actions = {"add": "price.created", "change": "price.changed", "delete": "price.deleted"}
    list_display = [*PRICE_FIELDS, "created_at"]
    list_filter = ["effective_from"]
    search_fields = ["model"]
    date_hierarchy = "effective_from"
    fieldsets = [
        (
            None,
            {
                "fields": [*PRICE_FIELDS],  # a list typed as field groups, which list[str] is not
                "description": (
                    "USD per 1M tokens. To change a model's price, add a new row with a later "
                    "“effective from” date rather than editing this one: calls already made "
                    "keep the price they were charged, so history is never rewritten. Batch "
                    "prices are what a batch line costs (empty: half the normal price); the "
                    "source names the price page and the day it was read."
                ),
            },
        ),
        (
            "Long-context tier",
            {
                "fields": [*LONG_CONTEXT_FIELDS],
                "classes": ["collapse"],
                "description": (
                    "For a model priced by prompt length (gemini-2.5-pro: over 200,000 prompt "
                    "tokens): a call whose prompt is longer than the threshold is charged these "
                    "rates for all its tokens (empty: the normal rate); a batch line, half."
                ),
            },
        ),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: ModelPrice | None = None) -> list[str]:
        if obj is not None and UsageRecord.objects.filter(price=obj).exists():
            # Already charged: the ledger points at it.
            return [*PRICE_FIELDS, *LONG_CONTEXT_FIELDS]
        return []


class _Echo:
    """A file-like object whose write returns the line: csv.writer into a streaming response."""

    def write(self, value: str) -> str:
        return value


CSV_HEADER = [
    "request_id", "created_at", "organization", "project", "user", "conversation_id", "source",
    "model", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_usd", "status",
    "estimated", "latency_ms",
]  # fmt: skip


def usage_csv_rows(records: QuerySet[UsageRecord]) -> Iterator[list[Any]]:
    yield CSV_HEADER
    for r in records.iterator(chunk_size=2000):
        yield [
            r.request_id, r.created_at.isoformat(), r.organization.slug,
            r.project.slug if r.project else "", r.user.email if r.user else "",
            r.conversation_id or "", r.source, r.model, r.prompt_tokens, r.cached_tokens,
            r.completion_tokens, r.cost, r.status, r.estimated,
            "" if r.latency_ms is None else r.latency_ms,
        ]  # fmt: skip


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin[UsageRecord]):
    """The ledger, view only: rows are written once by the quota service, never here."""

    list_display = [
        "created_at", "organization", "project", "user", "api_key", "model", "tokens",
        "cost_display", "status", "estimated", "source",
    ]  # fmt: skip
    list_filter = [
        "organization", "project", "model", "status", "estimated", "source", "created_at",
    ]  # fmt: skip
    list_select_related = ["organization", "project", "user", "api_key"]
    search_fields = ["=request_id", "model", "organization__name", "project__name", "user__email"]
    date_hierarchy = "created_at"
    actions = ["export_csv"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="tokens (in / cached / out)")
    def tokens(self, record: UsageRecord) -> str:
        return f"{record.prompt_tokens:,} / {record.cached_tokens:,} / {record.completion_tokens:,}"

    @admin.display(description="cost", ordering="cost")
    def cost_display(self, record: UsageRecord) -> str:
        if record.price_id is None and not record.cost:
            # Charged at no price (a model staff let run unpriced): not the same as free.
            return format_html('<span title="{}">unpriced</span>', record.cost)
        return format_html('<span title="{}">{}</span>', record.cost, usd(record.cost))

    @admin.action(description="Export selected as CSV", permissions=["view"])
    def export_csv(
        self, request: HttpRequest, queryset: QuerySet[UsageRecord]
    ) -> StreamingHttpResponse:
        records = queryset.select_related("organization", "project", "user").order_by(
            "created_at", "id"
        )
        writer = csv.writer(_Echo())
        response = StreamingHttpResponse(
            (writer.writerow(row) for row in usage_csv_rows(records)), content_type="text/csv"
        )
        response["Content-Disposition"] = 'attachment; filename="usage.csv"'
        return response

    def get_urls(self) -> list[URLPattern]:
        summary = path(
            "summary/",
            self.admin_site.admin_view(self.summary_view),
            name="billing_usagerecord_summary",
        )
        return [summary, *super().get_urls()]

    def summary_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        start, end = period_bounds(Budget.Period.MONTH, timezone.now())
        rows = (
            UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
            .order_by()
            .values("organization_id", "organization__name", "organization__slug")
            .annotate(
                cost=Sum("cost"),
                tokens=Sum(F("prompt_tokens") + F("completion_tokens")),
                calls=Count("id"),
            )
            .order_by("-cost", "organization__name")
        )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Usage by organization, {start:%B %Y} (UTC)",
            "opts": self.opts,
            "month_start": start,
            "rows": [
                {**row, "cost_display": usd(row["cost"]), "tokens_display": f"{row['tokens']:,}"}
                for row in rows
            ],
        }
        return TemplateResponse(request, "admin/billing/usagerecord/summary.html", context)


# --- counters, holds, alerts, rate limits ------------------------------------------------------


_M = TypeVar("_M", bound=Model)


class ReadOnlyAdmin(admin.ModelAdmin[_M]):
    """Kept by the quota service: editing a row by hand would put it out of step with the
    ledger and the other counters."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


BUDGET_RELATED = ["budget__organization", "budget__project", "budget__user", "budget__api_key"]
BUDGET_SEARCH = [
    "budget__organization__name", "budget__project__name", "budget__user__email",
    "budget__api_key__name",
]  # fmt: skip


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdmin[UsageRollup]):
    """The ledger summed per day and group, for the dashboards: derived, so view only (see
    ``manage.py rebuild_usage_rollups``)."""

    list_display = [
        "day", "organization", "project", "user", "api_key", "model", "calls", "tokens",
        "cost_display",
    ]  # fmt: skip
    list_filter = ["day", "model"]
    list_select_related = ["organization", "project", "user", "api_key"]
    search_fields = ["organization__name", "organization__slug", "project__name", "user__email",
                     "model"]  # fmt: skip
    date_hierarchy = "day"

    @admin.display(description="tokens (in / cached / out)")
    def tokens(self, rollup: UsageRollup) -> str:
        return f"{rollup.prompt_tokens:,} / {rollup.cached_tokens:,} / {rollup.completion_tokens:,}"

    @admin.display(description="cost", ordering="cost_units")
    def cost_display(self, rollup: UsageRollup) -> str:
        return format_html('<span title="{}">{}</span>', rollup.cost, usd(rollup.cost))


@admin.register(BudgetPeriod)
class BudgetPeriodAdmin(ReadOnlyAdmin[BudgetPeriod]):
    list_display = ["budget", "start", "spent", "reserved"]
    list_filter = ["start", "budget__scope", "budget__period"]
    list_select_related = BUDGET_RELATED
    search_fields = BUDGET_SEARCH
    date_hierarchy = "start"


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin[Hold]):
    list_display = ["request_id", "period", "amount", "expires_at", "created_at"]
    list_filter = ["expires_at"]
    list_select_related = [f"period__{name}" for name in BUDGET_RELATED]
    search_fields = ["=request_id", "period__budget__organization__name"]


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin[BudgetAlert]):
    list_display = ["budget", "threshold", "period_start", "created_at"]
    list_filter = ["threshold", "period_start", "created_at"]
    list_select_related = BUDGET_RELATED
    search_fields = BUDGET_SEARCH


@admin.register(RateLimit)
class RateLimitAdmin(AuditedAdmin, admin.ModelAdmin[RateLimit]):
    audit_actions = dict.fromkeys(["add", "change", "delete"], "rate_limit.changed")
    list_display = ["project", "requests_per_minute", "tokens_per_minute"]
    list_select_related = ["project__organization"]
    search_fields = ["project__name", "project__organization__name"]
    autocomplete_fields = ["project"]


# --- statements ----------------------------------------------------------------------------------


STATEMENT_LINE_FIELDS = [
    "project_name", "model", "calls", "prompt_tokens", "completion_tokens", "cost",
]  # fmt: skip


class StatementLineInline(admin.TabularInline[StatementLine, Statement]):
    model = StatementLine
    extra = 0
    fields = [*STATEMENT_LINE_FIELDS]  # its own list: typed as field groups, unlike the next
    readonly_fields = STATEMENT_LINE_FIELDS
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Statement)
class StatementAdmin(ReadOnlyAdmin[Statement]):
    """Closed months, written once from the ledger."""

    list_display = ["organization", "period_start", "period_end", "total_cost", "created_at"]
    list_filter = ["period_start"]
    list_select_related = ["organization"]
    search_fields = ["organization__name", "organization__slug"]
    inlines = [StatementLineInline]


@admin.register(StatementLine)
class StatementLineAdmin(ReadOnlyAdmin[StatementLine]):
    list_display = ["statement", "project_name", "model", "calls", "prompt_tokens",
                    "completion_tokens", "cost"]  # fmt: skip
    list_filter = ["model"]
    list_select_related = ["statement__organization"]
    search_fields = ["statement__organization__name", "project_name", "model"]
