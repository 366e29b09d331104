"""The writes of reserve and settle as single SQL statements, for the hot path.

Every upstream call writes its holds, releases them, charges its budgets and writes its ledger
row. Through the ORM each of those statements is compiled from scratch on every call, which
was most of a call's CPU. Here each is one parameterized statement, valid on SQLite (3.35+, for
RETURNING) and PostgreSQL; values are prepared by the model fields themselves
(``get_db_prep_save``), so they are stored exactly as the ORM would store them. Reads that
need locking and the Decimal conversions stay on the ORM (``billing.services``).

The statements are built from our own table and column names only (hence the ``noqa: S608``);
every value is a parameter.
"""

from __future__ import annotations

import decimal
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Model

from .models import MONEY, BudgetPeriod, Hold, UsageRecord

_PLACES = Decimal(1).scaleb(-MONEY["decimal_places"])
# What Django does with a decimal SQLite hands back as a float (its sqlite3 converter).
_FROM_FLOAT = decimal.Context(prec=15).create_decimal_from_float


def money_from_db(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return _FROM_FLOAT(value).quantize(_PLACES)
    return Decimal(value).quantize(_PLACES)


def _prep(model: type[Model], field_name: str, value: Any) -> Any:
    return model._meta.get_field(field_name).get_db_prep_save(value, connection)  # type: ignore[union-attr]


def _table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _in(ids: Sequence[int]) -> str:
    return ", ".join(["%s"] * len(ids))


def periods_add(
    ids: Sequence[int], *, reserved: Decimal = Decimal(0), spent: Decimal = Decimal(0)
) -> None:
    """Add to the counters of the periods ``ids`` (already locked by the caller)."""
    if not ids or (not reserved and not spent):
        return
    # CAST as the ORM writes F() arithmetic on decimals: SQLite otherwise keeps a text operand.
    sql = (
        f"UPDATE {_table(BudgetPeriod)} SET "  # noqa: S608
        "reserved = CAST((reserved + CAST(%s AS NUMERIC)) AS NUMERIC), "
        "spent = CAST((spent + CAST(%s AS NUMERIC)) AS NUMERIC) "
        f"WHERE id IN ({_in(ids)})"
    )
    params = [_prep(BudgetPeriod, "reserved", reserved), _prep(BudgetPeriod, "spent", spent), *ids]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def holds_insert(
    period_ids: Iterable[int],
    *,
    request_id: uuid.UUID,
    amount: Decimal,
    expires_at: datetime,
    now: datetime,
) -> None:
    rows = [
        [
            period_id,
            _prep(Hold, "request_id", request_id),
            _prep(Hold, "amount", amount),
            _prep(Hold, "expires_at", expires_at),
            _prep(Hold, "created_at", now),
        ]
        for period_id in period_ids
    ]
    if not rows:
        return
    values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(rows))
    sql = (
        f"INSERT INTO {_table(Hold)} (period_id, request_id, amount, expires_at, created_at) "  # noqa: S608
        f"VALUES {values}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for row in rows for value in row])


def holds_take(request_id: uuid.UUID) -> list[tuple[int, Decimal]]:
    """Delete the call's holds that are still there; (period id, amount) of each."""
    sql = f"DELETE FROM {_table(Hold)} WHERE request_id = %s RETURNING period_id, amount"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [_prep(Hold, "request_id", request_id)])
        return [(period_id, money_from_db(amount)) for period_id, amount in cursor.fetchall()]


_RECORD_FIELDS = [f for f in UsageRecord._meta.concrete_fields if not f.primary_key]


def record_insert(record: UsageRecord) -> bool:
    """Write the ledger row (its ``created_at`` set by the caller) unless the call already has
    one (its ``request_id`` is unique); True if written, with ``record.pk`` set."""
    columns = ", ".join(connection.ops.quote_name(f.column or f.name) for f in _RECORD_FIELDS)
    values = ", ".join(["%s"] * len(_RECORD_FIELDS))
    sql = (
        f"INSERT INTO {_table(UsageRecord)} ({columns}) VALUES ({values}) "  # noqa: S608
        "ON CONFLICT (request_id) DO NOTHING RETURNING id"
    )
    params = [f.get_db_prep_save(getattr(record, f.attname), connection) for f in _RECORD_FIELDS]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return False
    record.pk = row[0]
    record._state.adding = False
    record._state.db = connection.alias
    return True
