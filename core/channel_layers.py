"""The embedded profile's channel layer: channels' in-memory layer, its expiry sweep throttled.

Channels' ``InMemoryChannelLayer`` sweeps every channel and every group for expired messages
and memberships on every ``send``, ``receive`` and ``group_send``: with a few hundred sockets
that sweep alone was a quarter of the server's CPU (each streamed reply sends dozens of
messages). Here it runs at most once per ``SWEEP_SECONDS``; messages still expire after
``expiry`` (60 s) and memberships after ``group_expiry``, at most that much later.
"""

from __future__ import annotations

import time
from typing import Any

from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer

SWEEP_SECONDS = 1.0


class InMemoryChannelLayer(ChannelsInMemoryChannelLayer):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._swept_at = float("-inf")

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._swept_at < SWEEP_SECONDS:
            return
        self._swept_at = now
        super()._clean_expired()
