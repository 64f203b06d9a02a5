"""What inventory announces after a commit, and the bounded low-stock gauge. No I/O."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry, Gauge

from ironcart.contracts.inventory import StockChanged, StockLow
from ironcart.inventory.events import AvailabilityMove, LowStockGauge, StockAnnouncer
from ironcart.platform.events import EventBus

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


async def _announced(available: dict[str, int], moves: Sequence[AvailabilityMove]) -> list[object]:
    bus = EventBus()
    seen: list[object] = []

    async def record(event: object) -> None:
        seen.append(event)

    async def read(skus: Sequence[str]) -> dict[str, int]:
        return {sku: available[sku] for sku in skus if sku in available}

    bus.subscribe(StockChanged, record)
    bus.subscribe(StockLow, record)
    gauge, _registry = _gauge()
    await StockAnnouncer(bus, read, LowStockGauge(gauge)).announce(moves)
    return seen


async def test_announces_changed_availability_read_after_commit() -> None:
    seen = await _announced({"A": 7}, [AvailabilityMove("A", -1, 2, 2)])
    assert seen == [StockChanged("A", 7)]


async def test_announces_low_stock_when_crossing() -> None:
    seen = await _announced({"A": 2}, [AvailabilityMove("A", -3, 2, 2)])
    assert seen == [StockChanged("A", 2), StockLow("A", 2, 2)]


async def test_no_event_without_a_move() -> None:
    assert await _announced({"A": 5}, [AvailabilityMove("A", 0, 2, 2)]) == []
    assert await _announced({}, []) == []


async def test_raising_the_threshold_above_stock_is_low_stock() -> None:
    seen = await _announced({"A": 5}, [AvailabilityMove("A", 0, 10, 2)])
    assert seen == [StockLow("A", 5, 10)]
