"""The metered path's Prometheus metrics (``/metrics``: ``core.metrics``).

Counted where every upstream call passes (``billing.metering``), from figures the call has in
hand: no query of its own. Labels stay few and bounded: the model (as the project names it:
one of the models staff allowed), the source (``UsageRecord.Source``), the outcome (a ledger
status, or for a failed call the provider's error kind), a budget's scope. Never an id, never
anything a person typed.

``OutstandingHolds`` is read at scrape time, from the database: one aggregate over the holds
table, which only ever holds the calls in flight.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from django.db.models import Count, Max, Q, Sum
from django.utils import timezone
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

UPSTREAM_CALLS = Counter(
    "gateway_upstream_calls_total",
    "Upstream calls settled (one per ledger row), by model, source and outcome: a ledger "
    "status (ok, stopped, incomplete) or, for a failed call, the provider's error kind.",
    ["model", "source", "outcome"],
)
TOKENS = Counter(
    "gateway_tokens_total",
    "Tokens charged, by model and kind (prompt, cached, completion); cached are also prompt.",
    ["model", "kind"],
)
COST = Counter(
    "gateway_cost_usd_total",
    "Cost charged in USD, by model (the ledger's Decimal, as a float for export only).",
    ["model"],
)
ACTIVE_STREAMS = Gauge(
    "gateway_active_streams",
    "Upstream streams in flight, by source.",
    ["source"],
    multiprocess_mode="livesum",
)
BUDGET_REFUSALS = Counter(
    "gateway_budget_refusals_total",
    "Calls refused before anything was sent because a budget would be exceeded, by the "
    "scope of the budget that refused.",
    ["scope"],
)
RATE_LIMIT_REFUSALS = Counter(
    "gateway_rate_limit_refusals_total",
    "Calls refused before anything was sent by a per-minute limit (project or key), by source.",
    ["source"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gateway_time_to_first_token_seconds",
    "From opening an upstream stream to its first generated token, by model.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0),
)
UPSTREAM_LATENCY = Histogram(
    "gateway_upstream_latency_seconds",
    "An upstream call from start to end (the ledger's latency), by model.",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)


def observe_settled(
    *,
    model: str,
    source: str,
    outcome: str,
    prompt_tokens: int,
    cached_tokens: int,
    completion_tokens: int,
    cost: Decimal,
    latency_ms: int | None,
) -> None:
    """One settled call: its ledger row's figures."""
    UPSTREAM_CALLS.labels(model, source, outcome).inc()
    for kind, tokens in (
        ("prompt", prompt_tokens),
        ("cached", cached_tokens),
        ("completion", completion_tokens),
    ):
        if tokens:
            TOKENS.labels(model, kind).inc(tokens)
    if cost:
        COST.labels(model).inc(float(cost))
    if latency_ms is not None:
        UPSTREAM_LATENCY.labels(model).observe(latency_ms / 1000)


def observe_refusal(refusal: Exception, *, source: str) -> None:
    """A call refused at reserve: by a budget (and which scope's), or by a rate limit."""
    code = getattr(refusal, "code", None)
    if code == "budget_exceeded":
        # The scope of the budget that refused, where the refusal names it.
        BUDGET_REFUSALS.labels(getattr(refusal, "scope", None) or "unknown").inc()
    elif code == "rate_limit_exceeded":
        RATE_LIMIT_REFUSALS.labels(source).inc()


class OutstandingHolds(Collector):
    """Calls holding money right now, what they hold, and those whose hold expired without
    being released (their process died; the beat sweep frees them): read at scrape time."""

    def collect(self) -> Iterable[Metric]:
        from .models import Hold  # at scrape time: importable before the apps are ready

        # One row per call: a call holds the same amount on each budget that applies.
        per_call = (
            Hold.objects.order_by()
            .values("request_id")
            .annotate(amount=Max("amount"), expires_at=Max("expires_at"))
        )
        figures = per_call.aggregate(
            calls=Count("request_id"),
            usd=Sum("amount"),
            expired=Count("request_id", filter=Q(expires_at__lt=timezone.now())),
        )
        yield GaugeMetricFamily(
            "gateway_outstanding_holds", "Calls holding money on budgets now.", figures["calls"]
        )
        yield GaugeMetricFamily(
            "gateway_outstanding_holds_usd",
            "USD held on budgets by the calls in flight (each call counted once).",
            float(figures["usd"] or 0),
        )
        yield GaugeMetricFamily(
            "gateway_outstanding_holds_expired",
            "Calls whose hold has expired but is not released yet.",
            figures["expired"],
        )
