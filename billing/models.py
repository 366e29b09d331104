"""Prices, the usage ledger, budgets and their per-period counters, rate limits.

Money is Decimal everywhere. The rounding rule: a call's cost is computed exactly — tokens are
integers and prices have at most 6 decimal places per 1M tokens, so every per-token price has at
most 12 — and stored exactly with 12 decimal places. Nothing is rounded until it is shown, where
amounts are rounded half-up to the cent, or to 4 places under a dollar (core.money). Sums of
exact values are exact, so the ledger and the budgets' counters agree to the last digit.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, NoReturn, TypedDict, cast

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models.functions import Coalesce
from django.utils.translation import gettext, gettext_lazy

from accounts.models import ApiKey, Organization, Project
from core import money


class DecimalDigits(TypedDict):
    """A DecimalField's size, typed so that ``DecimalField(**MONEY)`` is checked."""

    max_digits: int
    decimal_places: int


MONEY: DecimalDigits = {"max_digits": 24, "decimal_places": 12}
PRICE: DecimalDigits = {"max_digits": 14, "decimal_places": 6}
PER_MILLION = Decimal(1_000_000)


class ModelPrice(models.Model):
    """USD per 1M tokens for a model (exact name, or a prefix ending in ``*``), from a date on.

    A ledger row points at the price it was charged, so changing prices never rewrites history:
    add a row with a later ``effective_from`` instead of editing the old one.
    """

    model = models.CharField(
        max_length=200, help_text='An exact model name, or a prefix ending in "*" (gpt-4o*).'
    )
    input_per_million = models.DecimalField(**PRICE, validators=[MinValueValidator(0)])
    cached_input_per_million = models.DecimalField(
        **PRICE, validators=[MinValueValidator(0)], help_text="Prompt tokens served from cache."
    )
    output_per_million = models.DecimalField(**PRICE, validators=[MinValueValidator(0)])
    # The Batch API's prices (OpenAI's are half the normal ones); empty: half of the above.
    batch_input_per_million = models.DecimalField(
        **PRICE, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    batch_output_per_million = models.DecimalField(
        **PRICE, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    # A price with a long-context tier (Gemini 2.5 Pro: prompts over 200k tokens cost more):
    # a call whose prompt is longer than the threshold is charged these rates for all of its
    # tokens (empty: the normal rate); a batch line, half of them.
    long_context_threshold = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Prompt tokens above which the long-context rates apply to the whole call.",
    )
    long_input_per_million = models.DecimalField(
        **PRICE, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    long_cached_input_per_million = models.DecimalField(
        **PRICE, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    long_output_per_million = models.DecimalField(
        **PRICE, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    # Where the figures come from (a price page and the day it was read).
    source = models.CharField(max_length=300, blank=True)
    effective_from = models.DateField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="billing_price_unique")
        ]

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from}"

    @property
    def is_prefix(self) -> bool:
        return self.model.endswith("*")


class UsageRecordQuerySet(models.QuerySet["UsageRecord"]):
    def for_organization(self, organization: Organization) -> UsageRecordQuerySet:
        return self.filter(organization=organization)

    def update(self, **kwargs: Any) -> NoReturn:
        raise TypeError("The usage ledger is append-only.")

    def delete(self) -> NoReturn:
        raise TypeError("The usage ledger is append-only.")


class UsageRecord(models.Model):
    """The ledger: one row per upstream call, written once, never changed."""

    class Status(models.TextChoices):
        OK = "ok", "OK"
        ERROR = "error", "Error"
        STOPPED = "stopped", "Stopped"
        INCOMPLETE = "incomplete", "Incomplete"

    class Source(models.TextChoices):
        CHAT = "chat", "Chat"
        TITLE = "title", "Title"
        API = "api", "API"
        SUMMARY = "summary", "Summary"
        MODERATION = "moderation", "Moderation"
        EMBEDDING = "embedding", "Embedding"
        BATCH = "batch", "Batch"

    request_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey(Project, null=True, on_delete=models.SET_NULL, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    conversation = models.ForeignKey(
        "chat.Conversation", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    message = models.ForeignKey(
        "chat.Message", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    connection = models.ForeignKey(
        "providers.ProviderConnection", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.CHAT)
    model = models.CharField(max_length=200)
    prompt_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=Decimal(0))
    price = models.ForeignKey(ModelPrice, null=True, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices)
    estimated = models.BooleanField(
        default=False, help_text="The upstream reported no usage: tokens were counted here."
    )
    over_hold = models.BooleanField(
        default=False,
        help_text="The upstream reported more than the call held (it ignored the reply cap it "
        "was sent): recorded as reported, and staff were alerted.",
    )
    latency_ms = models.PositiveIntegerField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = UsageRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "created_at"], name="billing_usage_org_idx"),
            models.Index(fields=["project", "created_at"], name="billing_usage_project_idx"),
            models.Index(fields=["project", "user", "created_at"], name="billing_usage_member_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.model} {self.cost} ({self.request_id})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise TypeError("The usage ledger is append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("The usage ledger is append-only.")


class UsageRollupQuerySet(models.QuerySet["UsageRollup"]):
    def for_organization(self, organization: Organization) -> UsageRollupQuerySet:
        return self.filter(organization=organization)


class UsageRollup(models.Model):
    """One UTC day of the ledger for one group (organization, project, user, API key, model),
    summed: what the usage dashboard reads instead of the rows themselves.

    Derived data, kept exactly in step with the ledger: ``billing.rollups.rollup_add`` adds each
    row in the transaction that writes it, and the deletion of a project, user or key merges
    its rollups into the "none" group, as SET_NULL does to the ledger's rows
    (``rollups_merge_away``). ``manage.py rebuild_usage_rollups`` recomputes them all.

    Cost is kept in integer units of 1e-12 USD (the ledger's 12 decimal places), not in a
    DecimalField: SQLite stores those as floating point, and a day's sum would drift.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    day = models.DateField(help_text="The UTC day of the calls.")
    model = models.CharField(max_length=200)
    # SET_NULL as on the ledger; the deletion merges these rows first (see the docstring).
    project = models.ForeignKey(
        Project, null=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    calls = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost_units = models.BigIntegerField(default=0, help_text="The cost in units of 1e-12 USD.")

    objects = UsageRollupQuerySet.as_manager()

    class Meta:
        ordering = ["-day", "id"]
        constraints = [
            # NULLs never conflict in a unique index (SQLite and PostgreSQL alike): the
            # nullable columns take part as COALESCE(…, 0), which ids never are. The upsert's
            # ON CONFLICT names these same expressions (billing/rollups.py).
            models.UniqueConstraint(
                "organization",
                "day",
                "model",
                Coalesce("project", 0, output_field=models.BigIntegerField()),
                Coalesce("user", 0, output_field=models.BigIntegerField()),
                Coalesce("api_key", 0, output_field=models.BigIntegerField()),
                name="billing_rollup_group",
            ),
        ]
        # The organization's range scans use the unique index (organization, day, …).
        indexes = [
            models.Index(fields=["project", "day"], name="billing_rollup_project_idx"),
            models.Index(fields=["user", "day"], name="billing_rollup_user_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.model}: {self.calls} calls, {self.cost} USD"

    @property
    def cost(self) -> Decimal:
        return Decimal(self.cost_units).scaleb(-MONEY["decimal_places"])


class Budget(models.Model):
    """A spending limit for an organization, a project, one member within a project, or one of
    a project's API keys."""

    class Scope(models.TextChoices):
        ORGANIZATION = "organization", gettext_lazy("Organization")
        PROJECT = "project", gettext_lazy("Project")
        MEMBER = "member", gettext_lazy("Member (in a project)")
        API_KEY = "api_key", gettext_lazy("API key (of a project)")

    class Period(models.TextChoices):
        MONTH = "month", gettext_lazy("Calendar month (UTC)")
        DAY = "day", gettext_lazy("Day (UTC)")
        LIFETIME = "lifetime", gettext_lazy("Lifetime")

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="budgets")
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="budgets",
        help_text="For a member budget: whose spending, within the project.",
    )
    api_key = models.ForeignKey(
        ApiKey,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="budgets",
        help_text="For an API key budget: the key whose calls it limits (one of the project's).",
    )
    scope = models.CharField(max_length=12, choices=Scope.choices)
    period = models.CharField(max_length=10, choices=Period.choices, default=Period.MONTH)
    limit_usd = models.DecimalField(
        **PRICE, validators=[MinValueValidator(0)], help_text="Hard limit: calls are refused."
    )
    soft_thresholds = models.CharField(
        max_length=50,
        default="50,80,100",
        help_text="Percentages of the limit that send an alert, comma-separated.",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization", "scope", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(api_key__isnull=True)
                & (
                    models.Q(scope="organization", project__isnull=True, user__isnull=True)
                    | models.Q(scope="project", project__isnull=False, user__isnull=True)
                    | models.Q(scope="member", project__isnull=False, user__isnull=False)
                )
                | models.Q(
                    scope="api_key", project__isnull=False, user__isnull=True, api_key__isnull=False
                ),
                name="billing_budget_scope_fields",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.describe()}: {money.usd(self.limit_usd)} per {self.period}"

    def describe(self) -> str:
        if self.scope == self.Scope.ORGANIZATION:
            return gettext("the %(organization)s budget") % {"organization": self.organization}
        # cast: project and member budgets have a project (the scope check constraint).
        if self.scope == self.Scope.PROJECT:
            return gettext("the budget of project %(project)s") % {
                "project": cast(Project, self.project).name
            }
        if self.scope == self.Scope.API_KEY:
            # The key's name and its non-secret prefix and last four, as its page shows them.
            return gettext("the budget of API key %(key)s") % {"key": self.api_key}
        return gettext("%(person)s's budget in project %(project)s") % {
            "person": self.user,
            "project": cast(Project, self.project).name,
        }

    def thresholds(self) -> list[int]:
        values = []
        for part in self.soft_thresholds.split(","):
            part = part.strip()
            if part.isdigit() and 0 < int(part) <= 1000:
                values.append(int(part))
        return sorted(set(values))


class BudgetPeriod(models.Model):
    """A budget's spend and in-flight holds for one period: the row reservations lock."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="periods")
    start = models.DateTimeField()
    spent = models.DecimalField(**MONEY, default=Decimal(0))
    reserved = models.DecimalField(**MONEY, default=Decimal(0))

    class Meta:
        ordering = ["budget", "-start"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "start"], name="billing_period_unique")
        ]

    def __str__(self) -> str:
        return f"{self.budget} from {self.start:%Y-%m-%d}"


class Hold(models.Model):
    """Money set aside on a budget period for one call in flight."""

    period = models.ForeignKey(BudgetPeriod, on_delete=models.CASCADE, related_name="holds")
    request_id = models.UUIDField(db_index=True)
    amount = models.DecimalField(**MONEY)
    expires_at = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["period", "request_id"], name="billing_hold_unique")
        ]

    def __str__(self) -> str:
        return f"{self.amount} held for {self.request_id}"


class BudgetAlert(models.Model):
    """That a threshold was crossed in a period: sent once, shown as a banner."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    threshold = models.PositiveIntegerField()
    # The languages its e-mail went out in (one e-mail per language the managers read): a task
    # delivered again after a worker died sends none of them twice.
    sent_languages = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["budget", "period_start", "threshold"], name="billing_alert_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.budget}: {self.threshold}% from {self.period_start:%Y-%m-%d}"


class RateLimit(models.Model):
    """Requests and tokens per minute for a project (API keys get theirs with the REST API)."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="rate_limit")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.project}: {self.requests_per_minute} RPM / {self.tokens_per_minute} TPM"


class Statement(models.Model):
    """A closed calendar month (UTC) of an organization's ledger: written once, never changed.

    ``total_cost`` is the exact sum of the lines, which is the exact sum of the month's ledger.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="statements"
    )
    period_start = models.DateTimeField(help_text="First instant of the month (UTC).")
    period_end = models.DateTimeField(help_text="First instant of the next month (UTC).")
    total_cost = models.DecimalField(**MONEY, default=Decimal(0))
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization", "-period_start"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "period_start"], name="billing_statement_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.organization} {self.period_start:%Y-%m}"


class StatementLine(models.Model):
    """One project and model of a statement. The project's name is kept as it was at closing."""

    statement = models.ForeignKey(Statement, on_delete=models.CASCADE, related_name="lines")
    project = models.ForeignKey(Project, null=True, on_delete=models.SET_NULL, related_name="+")
    project_name = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=200)
    calls = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=Decimal(0))

    class Meta:
        ordering = ["statement", "project_name", "model", "id"]

    def __str__(self) -> str:
        return f"{self.statement}: {self.project_name or '(no project)'} / {self.model}"
