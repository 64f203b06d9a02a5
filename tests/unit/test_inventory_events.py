"""What inventory records before its commit (`StockLow`, into the outbox) and announces after
it (`StockChanged`, the metrics), and the bounded low-stock gauge. In-memory fakes, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from ironcart.contracts.inventory import StockChanged, StockLow
from ironcart.inventory.events import (
    AvailabilityMove,
    LowStockGauge,
    StockAnnouncer,
    record_low_stock,
)
from ironcart.platform.events import EventBus
from ironcart.platform.outbox import decode_event, encode_event

pytestmark = pytest.mark.anyio


def _gauge() -> tuple[Gauge, CollectorRegistry]:
    registry = CollectorRegistry()
    gauge = Gauge("test_available", "test", ["sku"], registry=registry)
    return gauge, registry


def test_gauge_keeps_series_only_for_low_skus() -> None:
    gauge, registry = _gauge()
    low = LowStockGauge(gauge, max_series=10)

    low.observe("A", available=2, threshold=5)
    low.observe("B", available=9, threshold=5)

    assert registry.get_sample_value("test_available", {"sku": "A"}) == 2.0
    assert registry.get_sample_value("test_available", {"sku": "B"}) is None

    low.observe("A", available=6, threshold=5)
    assert registry.get_sample_value("test_available", {"sku": "A"}) is None


def test_gauge_series_are_capped() -> None:
    gauge, registry = _gauge()
    low = LowStockGauge(gauge, max_series=2)

    for sku in ("A", "B", "C"):
        low.observe(sku, available=0, threshold=1)
    low.observe("A", available=1, threshold=1)

    assert registry.get_sample_value("test_available", {"sku": "A"}) == 1.0
    assert registry.get_sample_value("test_available", {"sku": "B"}) == 0.0
    assert registry.get_sample_value("test_available", {"sku": "C"}) is None


@dataclass
class FakeStock:
    """Availability after the change, as the transaction would read it; counts the reads."""

    available_units: dict[str, int]
    reads: list[list[str]] = field(default_factory=list)

    async def available(self, skus: Sequence[str]) -> dict[str, int]:
        self.reads.append(list(skus))
        return {sku: self.available_units[sku] for sku in skus if sku in self.available_units}


@dataclass
class FakeOutbox:
    events: list[object] = field(default_factory=list)

    async def record(self, event: object) -> str:
        self.events.append(event)
        return f"event-{len(self.events)}"


@dataclass
class FakeUnitOfWork:
    stock: FakeStock
    outbox: FakeOutbox = field(default_factory=FakeOutbox)


async def _recorded(
    available: dict[str, int], moves: Sequence[AvailabilityMove]
) -> tuple[list[AvailabilityMove], FakeUnitOfWork]:
    uow = FakeUnitOfWork(FakeStock(available))
    fake: Any = uow  # stands in for InventoryUnitOfWork: only .stock and .outbox are used
    return await record_low_stock(fake, moves), uow


async def test_crossing_the_threshold_records_stock_low_in_the_outbox() -> None:
    marked, uow = await _recorded({"A": 2}, [AvailabilityMove("A", -3, 2, 2)])

    assert uow.outbox.events == [StockLow("A", 2, 2)]
    assert marked == [AvailabilityMove("A", -3, 2, 2, low=True)]


@pytest.mark.parametrize(
    ("available", "move"),
    [
        pytest.param(7, AvailabilityMove("A", -1, 2, 2), id="still-above"),
        pytest.param(1, AvailabilityMove("A", -1, 2, 2), id="already-low"),
    ],
)
async def test_no_stock_low_without_crossing(available: int, move: AvailabilityMove) -> None:
    marked, uow = await _recorded({"A": available}, [move])

    assert uow.outbox.events == []
    assert marked == [move]
    assert uow.stock.reads == [["A"]]


async def test_raising_the_threshold_above_stock_records_stock_low() -> None:
    marked, uow = await _recorded({"A": 5}, [AvailabilityMove("A", 0, 10, 2)])

    assert uow.outbox.events == [StockLow("A", 5, 10)]
    assert [move.low for move in marked] == [True]


async def test_more_stock_or_a_lower_threshold_reads_nothing_and_records_nothing() -> None:
    moves = [
        AvailabilityMove("A", 4, 2, 2),
        AvailabilityMove("B", 0, 2, 2),
        AvailabilityMove("C", 0, 2, 10),
    ]

    marked, uow = await _recorded({"A": 1, "B": 0, "C": 1}, moves)

    assert marked == moves
    assert uow.stock.reads == []
    assert uow.outbox.events == []


async def test_several_skus_are_read_in_one_query() -> None:
    moves = [
        AvailabilityMove("B", -2, 5, 5),
        AvailabilityMove("A", -1, 0, 0),
        AvailabilityMove("C", 3, 0, 0),
    ]

    marked, uow = await _recorded({"A": 0, "B": 9}, moves)

    assert uow.stock.reads == [["A", "B"]]
    assert uow.outbox.events == [StockLow("A", 0, 0)]
    assert [move.low for move in marked] == [False, True, False]


def test_stock_low_survives_the_outbox_codec() -> None:
    event = StockLow("SKU-1", 3, 5)

    assert decode_event("StockLow", encode_event(event)) == event


async def _announced(
    available: dict[str, int], moves: Sequence[AvailabilityMove]
) -> tuple[list[object], int]:
    """What reached the bus, and how many times the relay was woken."""
    bus = EventBus()
    seen: list[object] = []
    wakeups: list[None] = []

    async def record(event: object) -> None:
        seen.append(event)

    async def read(skus: Sequence[str]) -> dict[str, int]:
        return {sku: available[sku] for sku in skus if sku in available}

    bus.subscribe(StockChanged, record)
    bus.subscribe(StockLow, record)
    gauge, _registry = _gauge()
    announcer = StockAnnouncer(
        bus, read, LowStockGauge(gauge), outbox_written=lambda: wakeups.append(None)
    )
    await announcer.announce(moves)
    return seen, len(wakeups)


async def test_announces_changed_availability_read_after_commit() -> None:
    assert await _announced({"A": 7}, [AvailabilityMove("A", -1, 2, 2)]) == (
        [StockChanged("A", 7)],
        0,
    )


async def test_a_recorded_stock_low_is_counted_not_published_again() -> None:
    before = REGISTRY.get_sample_value("ironcart_inventory_stock_low_total") or 0.0

    seen, wakeups = await _announced({"A": 2}, [AvailabilityMove("A", -3, 2, 2, low=True)])

    assert seen == [StockChanged("A", 2)]
    assert wakeups == 1
    assert REGISTRY.get_sample_value("ironcart_inventory_stock_low_total") == before + 1


async def test_no_event_without_a_move() -> None:
    assert await _announced({"A": 5}, [AvailabilityMove("A", 0, 2, 2)]) == ([], 0)
    assert await _announced({}, []) == ([], 0)
