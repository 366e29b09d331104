"""The embedded profile's in-memory channel layer sweeps expired messages at most once a second
(core.channel_layers), instead of on every send and receive."""

from __future__ import annotations

import pytest

from core import channel_layers
from core.channel_layers import SWEEP_SECONDS, InMemoryChannelLayer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(channel_layers.time, "monotonic", clock)
    return clock


async def test_expired_messages_are_swept_at_most_once_per_interval(clock):
    layer = InMemoryChannelLayer(expiry=-1)  # every message has expired as soon as it is sent

    async def sweep_if_due() -> None:  # channels sweeps before every receive and group send
        await layer.group_send("nobody", {"type": "x"})

    await sweep_if_due()  # the first sweep, with nothing to sweep
    await layer.send("first", {"type": "x"})
    await sweep_if_due()  # the same instant: no sweep
    assert "first" in layer.channels

    clock.now += SWEEP_SECONDS / 2
    await sweep_if_due()  # still within the interval
    assert "first" in layer.channels

    clock.now += SWEEP_SECONDS
    await sweep_if_due()  # due: the expired message is gone
    assert "first" not in layer.channels


async def test_messages_still_arrive_between_sweeps(clock):
    layer = InMemoryChannelLayer()
    await layer.group_add("room", "a")
    await layer.group_add("room", "b")

    for n in range(3):
        await layer.group_send("room", {"type": "x", "n": n})

    for channel in ("a", "b"):
        assert [(await layer.receive(channel))["n"] for _ in range(3)] == [0, 1, 2]
