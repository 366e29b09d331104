"""The `postgres` tests really run on PostgreSQL, where row locks are real.

`make test` runs this module on config.settings.test_postgres (see scripts/postgres.sh); on
SQLite, select_for_update() is a no-op, which is why these tests are not run there.
"""

import threading

import pytest
from django.db import DatabaseError, connection, transaction

from accounts.models import Organization
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.postgres

LOCK_WAIT = 60  # seconds; generous (a loaded machine), the lock is normally taken in ms


@pytest.mark.django_db
def test_runs_on_postgresql():
    assert connection.vendor == "postgresql"
    assert connection.settings_dict["NAME"] == "test_gateway"


@pytest.mark.django_db(transaction=True)
def test_select_for_update_blocks_another_connection():
    org = OrganizationFactory()
    locked = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def hold_lock() -> None:
        # A thread has its own database connection: a second session on the server.
        try:
            with transaction.atomic():
                Organization.objects.select_for_update().get(pk=org.pk)
                locked.set()
                release.wait(LOCK_WAIT)
        except BaseException as exc:
            errors.append(exc)
        finally:
            locked.set()
            connection.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(LOCK_WAIT)
        assert not errors
        with pytest.raises(DatabaseError, match="could not obtain lock"), transaction.atomic():
            Organization.objects.select_for_update(nowait=True).get(pk=org.pk)
    finally:
        release.set()
        holder.join(LOCK_WAIT)
    assert not holder.is_alive()
    assert not errors

    # Once the holder's transaction ends, the same row can be locked at once.
    with transaction.atomic():
        assert Organization.objects.select_for_update(nowait=True).get(pk=org.pk) == org
