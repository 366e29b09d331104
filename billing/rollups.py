"""Daily rollups of the usage ledger (``UsageRollup``): what the usage dashboard reads.

A rollup row is the exact sum of the ledger rows of its group and UTC day, and stays so because
every change to the ledger's groups changes the rollups in the same transaction:

- ``rollup_add``: the quota service adds each ledger row as it writes it, with one upsert;
- ``rollups_merge_away``: deleting a project, user or API key sets the ledger's references to
  it to NULL (SET_NULL), so its rollups join the "none" group of their day (billing/apps.py);
- ``rollups_rebuild``: everything recomputed from the ledger (``manage.py
  rebuild_usage_rollups``), e.g. after restoring a backup, or for ledger rows written by code
  that did not add them.

The upserts are raw SQL because the ORM cannot add to a row on conflict (``bulk_create``'s
``update_conflicts`` overwrites). The statements are the same on SQLite and PostgreSQL (but
for a ledger row's UTC day); the conflict target is the unique index of ``UsageRollup``
(``billing_rollup_group``), whose nullable columns take part as ``COALESCE(column, 0)``.
"""

from __future__ import annotations

from datetime import UTC
from decimal import ROUND_HALF_UP, Decimal

from django.db import connection, transaction

from .models import MONEY, UsageRecord, UsageRollup

COST_SCALE = Decimal(10) ** MONEY["decimal_places"]

# Identifiers are fixed here, values always parameters. The conflict target names the
# expressions of UsageRollup's unique index ``billing_rollup_group``, as both databases require.
_INSERT = """INSERT INTO billing_usagerollup
    (organization_id, day, model, project_id, user_id, api_key_id,
     calls, prompt_tokens, cached_tokens, completion_tokens, cost_units)"""
_ON_CONFLICT_ADD = """ON CONFLICT (organization_id, day, model,
    (COALESCE(project_id, 0)), (COALESCE(user_id, 0)), (COALESCE(api_key_id, 0)))
DO UPDATE SET
    calls = billing_usagerollup.calls + excluded.calls,
    prompt_tokens = billing_usagerollup.prompt_tokens + excluded.prompt_tokens,
    cached_tokens = billing_usagerollup.cached_tokens + excluded.cached_tokens,
    completion_tokens = billing_usagerollup.completion_tokens + excluded.completion_tokens,
    cost_units = billing_usagerollup.cost_units + excluded.cost_units"""

ADD_ONE = f"{_INSERT} VALUES (%s, %s, %s, %s, %s, %s, 1, %s, %s, %s, %s) {_ON_CONFLICT_ADD}"

# Per column a deleted object's id leaves: its rollups copied into the "none" group, then gone.
_COLUMNS = (
    "organization_id", "day", "model", "project_id", "user_id", "api_key_id",
    "calls", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_units",
)  # fmt: skip
MERGE_AWAY = {
    column: (
        f"{_INSERT} SELECT {', '.join('NULL' if c == column else c for c in _COLUMNS)} "  # noqa: S608
        f"FROM billing_usagerollup WHERE {column} = %s {_ON_CONFLICT_ADD}",
        f"DELETE FROM billing_usagerollup WHERE {column} = %s",  # noqa: S608
    )
    for column in ("project_id", "user_id", "api_key_id")
}

# The UTC day of a ledger row, as TruncDate(tzinfo=UTC) has it. On SQLite the built-in date()
# of the stored UTC text, not Django's function, which SQLite calls once per row (1.35 s
# instead of 0.23 s for 344,000 rows).
_LEDGER_DAY = {
    "sqlite": "date(created_at)",
    "postgresql": "(created_at AT TIME ZONE 'UTC')::date",
}
# The ledger rows with ids in [%s, %s], grouped in SQL; the cost summed in 1e-12 USD units
# exactly as pricing.cost_units_sum sums it.
ADD_FROM_LEDGER = {
    vendor: f"""{_INSERT}
SELECT organization_id, {day}, model, project_id, user_id, api_key_id,
    COUNT(*), SUM(prompt_tokens), SUM(cached_tokens), SUM(completion_tokens),
    SUM(CAST(ROUND(cost * {10 ** MONEY["decimal_places"]}) AS bigint))
FROM billing_usagerecord WHERE id BETWEEN %s AND %s
GROUP BY organization_id, {day}, model, project_id, user_id, api_key_id
{_ON_CONFLICT_ADD}"""  # noqa: S608
    for vendor, day in _LEDGER_DAY.items()
}

# Ledger rows per statement of a rebuild.
REBUILD_BATCH = 100_000


def cost_units(cost: Decimal) -> int:
    """A cost in integer units of 1e-12 USD, rounded as the ledger's column rounds it."""
    return int((Decimal(cost) * COST_SCALE).to_integral_value(rounding=ROUND_HALF_UP))


def rollup_add(record: UsageRecord) -> None:
    """Add one ledger row, just written, to its group's rollup for its UTC day.

    One statement, in the caller's transaction (the one that wrote the row): concurrent calls
    of the same group each add theirs, whichever inserts the row first."""
    day = record.created_at.astimezone(UTC).date()
    params = [
        record.organization_id,
        connection.ops.adapt_datefield_value(day),
        record.model,
        record.project_id,
        record.user_id,
        record.api_key_id,
        record.prompt_tokens,
        record.cached_tokens,
        record.completion_tokens,
        cost_units(record.cost),
    ]
    with connection.cursor() as cursor:
        cursor.execute(ADD_ONE, params)


def rollups_merge_away(*, field: str, pk: int) -> None:
    """Before a project, user or API key is deleted: its rollups join the "none" group of their
    day, model and other columns, as its ledger rows are about to (SET_NULL).

    Without this, SET_NULL on the rollups would break their unique group wherever that group
    already has a row, and the deletion would fail."""
    copy, delete = MERGE_AWAY[f"{field}_id"]
    with connection.cursor() as cursor:
        cursor.execute(copy, [pk])
        cursor.execute(delete, [pk])


@transaction.atomic
def rollups_rebuild(*, batch_size: int = REBUILD_BATCH) -> int:
    """Recompute every rollup from the ledger; the number of rollup rows written.

    Settles wait meanwhile (on PostgreSQL the table is locked against writes; SQLite serializes
    writers anyway): a call settling during the rebuild is counted once, by the rebuild if it
    committed first, by its own ``rollup_add`` after the rebuild otherwise."""
    add_from_ledger = ADD_FROM_LEDGER[connection.vendor]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("LOCK TABLE billing_usagerollup IN EXCLUSIVE MODE")
        cursor.execute("DELETE FROM billing_usagerollup")
        ids = UsageRecord.objects.order_by().values_list("id", flat=True)
        first, last = ids.order_by("id").first(), ids.order_by("-id").first()
        if first is not None and last is not None:
            for start in range(first, last + 1, batch_size):
                cursor.execute(add_from_ledger, [start, min(start + batch_size - 1, last)])
    return UsageRollup.objects.count()
