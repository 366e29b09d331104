"""Re-encrypt every stored provider key with the newest FIELD_ENCRYPTION_KEYS entry.

Rotation: put the new key first in FIELD_ENCRYPTION_KEYS (keep the old ones after it), deploy,
run this command, then drop the old keys.
"""

from typing import Any

from django.core.management.base import BaseCommand

from providers.services import connections_rotate_keys


class Command(BaseCommand):
    help = "Re-encrypt every provider key with the newest FIELD_ENCRYPTION_KEYS entry."

    def handle(self, *args: Any, **options: Any) -> None:
        count = connections_rotate_keys()
        self.stdout.write(self.style.SUCCESS(f"Re-encrypted {count} provider key(s)."))
