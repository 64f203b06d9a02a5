"""The in-process bus: a failing handler is logged and never reaches the publisher."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ironcart.platform.events import EventBus

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Happened:
    name: str


async def test_a_failing_handler_does_not_fail_the_publisher_or_the_others() -> None:
    bus = EventBus()
    seen: list[str] = []

    async def broken(event: Happened) -> None:
        raise RuntimeError("database is locked")

    async def working(event: Happened) -> None:
        seen.append(event.name)

    bus.subscribe(Happened, broken)
    bus.subscribe(Happened, working)

    await bus.publish([Happened("first"), Happened("second")])

    assert seen == ["first", "second"]


async def test_a_retried_handler_fails_the_publisher_after_the_others_ran() -> None:
    # The relay publishes outbox events this way: the error keeps the row, to go out again.
    bus = EventBus()
    seen: list[str] = []

    async def broken(event: Happened) -> None:
        raise RuntimeError("database is down")

    async def working(event: Happened) -> None:
        seen.append(event.name)

    bus.subscribe(Happened, broken, retried=True)
    bus.subscribe(Happened, working)

    with pytest.raises(RuntimeError, match="database is down"):
        await bus.publish([Happened("first")])

    assert seen == ["first"]
