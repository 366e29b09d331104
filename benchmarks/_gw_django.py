"""The Django side of `benchmarks/gateway.py`: seed the throwaway database, and check it after.

Run by gateway.py in a subprocess with the same environment as the server it benchmarks
(DJANGO_SETTINGS_MODULE and SQLITE_PATH or DATABASE_URL/REDIS_URL), never by hand:

    python benchmarks/_gw_django.py seed  '<json>'    # prints RESULT <json>
    python benchmarks/_gw_django.py check '<json>'    # prints RESULT <json>

``seed`` goes through the app's own services where there are some (sign-up, connection, its
models, the project's allow-list, the API key, conversations) and creates the rows that only
the admin writes (prices, budgets, the project's rate limit) directly.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULT = "RESULT "
# Large enough never to refuse, small enough for the fields (PRICE: 14 digits, 6 places).
BUDGET_USD = Decimal(1_000_000)
RPM = 1_000_000
TPM = 1_000_000_000


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.embedded")
    import django

    django.setup()


def seed(spec: dict[str, Any]) -> dict[str, Any]:
    from django.conf import settings
    from django.test import Client

    from accounts.api_keys import api_key_create
    from accounts.models import Membership
    from accounts.services import user_sign_up
    from billing.models import Budget, ModelPrice, RateLimit
    from chat.actors import Actor
    from chat.services import conversation_start
    from providers.llm.fake_upstream import Faults, reply_tokens
    from providers.models import ProviderConnection
    from providers.services import connection_create, connection_model_add, project_models_set

    user = user_sign_up(
        email=spec["email"], password=spec["password"], name="Benchmark", verified=True
    )
    membership = Membership.objects.select_related("organization").get(user=user)
    organization = membership.organization
    project = organization.projects.get()

    connection = connection_create(
        actor=membership,
        project=project,
        kind=ProviderConnection.Kind.COMPATIBLE,
        name="Fake upstream",
        base_url=spec["upstream"],
        api_key="sk-fake-benchmark",
    )
    models = [
        connection_model_add(actor=membership, connection=connection, name=name)
        for name in spec["models"]
    ]
    project_models_set(
        actor=membership,
        project=project,
        model_ids=[m.pk for m in models],
        default_id=models[0].pk,
    )
    # Prices are looked up by the base name (markers after "@" are dropped): one row per base.
    for base in sorted({name.split("@", 1)[0] for name in spec["models"]}):
        ModelPrice.objects.get_or_create(
            model=base,
            effective_from=date(2000, 1, 1),
            defaults={
                "input_per_million": Decimal("0.15"),
                "cached_input_per_million": Decimal("0.075"),
                "output_per_million": Decimal("0.60"),
            },
        )

    created = api_key_create(
        actor=membership,
        project=project,
        name="gateway benchmark",
        scopes=["chat", "read"],
        requests_per_minute=RPM,
        tokens_per_minute=TPM,
    )
    RateLimit.objects.create(project=project, requests_per_minute=RPM, tokens_per_minute=TPM)
    budgets = [
        Budget(organization=organization, scope=Budget.Scope.ORGANIZATION),
        Budget(organization=organization, scope=Budget.Scope.PROJECT, project=project),
        Budget(
            organization=organization,
            scope=Budget.Scope.API_KEY,
            project=project,
            api_key=created.key,
        ),
        Budget(organization=organization, scope=Budget.Scope.MEMBER, project=project, user=user),
    ]
    for budget in budgets:
        budget.limit_usd = BUDGET_USD
        budget.full_clean()
        budget.save()

    # A title up front: the titling task would otherwise run (and bill) beside the benchmark.
    key_actor, user_actor = Actor(api_key=created.key), Actor(user=user)
    changes = {"model": spec["stream_model"], "title": "Benchmark"}
    rest = [
        conversation_start(actor=key_actor, project=project, changes=changes).pk
        for _ in range(spec["rest_conversations"])
    ]
    ws = [
        conversation_start(actor=user_actor, project=project, changes=changes).pk
        for _ in range(spec["ws_conversations"])
    ]

    # A session made the way a login makes one: for profiles whose login page cannot be used
    # over plain HTTP (production: Secure cookies, static files from a manifest).
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    session = client.cookies[settings.SESSION_COOKIE_NAME].value

    return {
        "organization_id": organization.pk,
        "project_id": project.pk,
        "api_key": created.plaintext,
        "rest_conversations": rest,
        "ws_conversations": ws,
        "session_cookie": f"{settings.SESSION_COOKIE_NAME}={session}",
        "budgets": [f"{b.scope} #{b.pk}: ${b.limit_usd:,.0f}/{b.period}" for b in budgets],
        "rate_limits": f"project and key: {RPM:,} requests/min, {TPM:,} tokens/min",
        "expected_stream": "".join(reply_tokens([], Faults(words=spec["words"]))),
    }


def check(spec: dict[str, Any]) -> dict[str, Any]:
    """The ledger against what the load generator counted; holds left; counters vs ledger."""
    from django.db.models import Count
    from django.utils import timezone

    from billing.models import Budget, BudgetPeriod, Hold, UsageRecord
    from billing.services import ledger_spend, period_bounds

    rows = UsageRecord.objects.filter(organization_id=spec["organization_id"])
    by_status = {
        r["status"]: r["n"] for r in rows.values("status").annotate(n=Count("id")).order_by()
    }
    by_caller = {
        "api_key": rows.filter(api_key__isnull=False).count(),
        "user": rows.filter(api_key__isnull=True, user__isnull=False).count(),
    }
    now = timezone.now()
    budgets = []
    for budget in Budget.objects.filter(organization_id=spec["organization_id"]).order_by("id"):
        start, end = period_bounds(budget.period, now)
        period = BudgetPeriod.objects.filter(budget=budget, start=start).first()
        budgets.append(
            {
                "budget": f"{budget.scope} #{budget.pk}",
                "spent": str(period.spent) if period else None,
                "reserved": str(period.reserved) if period else None,
                "ledger": str(ledger_spend(budget, start, end)),
            }
        )
    return {
        "rows": rows.count(),
        "by_status": by_status,
        "by_caller": by_caller,
        "holds": Hold.objects.count(),
        "budgets": budgets,
    }


def main() -> None:
    command, raw = sys.argv[1], sys.argv[2]
    _setup()
    result = {"seed": seed, "check": check}[command](json.loads(raw))
    print(RESULT + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
