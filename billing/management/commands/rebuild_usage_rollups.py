"""Recompute the daily usage rollups from the ledger.

For an operator: after restoring a backup, after ledger rows were written by hand or by a
process of an older release (one that did not add them), or whenever the dashboards and the
ledger are in doubt. Settles wait while it runs; the figures it writes are exact.
"""

from typing import Any

from django.core.management.base import BaseCommand

from billing.models import UsageRecord
from billing.rollups import rollups_rebuild


class Command(BaseCommand):
    help = "Recompute the daily usage rollups the dashboards read from the usage ledger."

    def handle(self, *args: Any, **options: Any) -> None:
        rows = rollups_rebuild()
        calls = UsageRecord.objects.count()
        self.stdout.write(
            self.style.SUCCESS(f"Rebuilt {rows} usage rollup(s) from {calls} ledger row(s).")
        )
