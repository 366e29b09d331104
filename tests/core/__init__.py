"""Tests of core: idempotency, migrations of the layout."""
