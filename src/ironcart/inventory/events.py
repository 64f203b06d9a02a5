"""What inventory announces after a commit: `StockChanged`, `StockLow`, and the stock metrics.

Availability is read again after the commit, so the last announcement for a SKU carries
its latest committed value. `StockLow` is at-least-once: when concurrent changes take a
SKU over its threshold together, each of them may announce it; consumers deduplicate.

Per-SKU gauge series exist only for SKUs at or below their threshold, and at most
`MAX_LOW_STOCK_SERIES` of them, so label cardinality stays bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from ironcart.contracts.inventory import StockChanged, StockLow
from ironcart.inventory.domain import became_low
from ironcart.platform.events import EventBus

MAX_LOW_STOCK_SERIES = 500

STOCK_LOW = Counter(
    "ironcart_inventory_stock_low_total",
    "Times a SKU's available stock fell to or below its low-stock threshold.",
)
AVAILABLE = Gauge(
    "ironcart_inventory_available",
    "Available units of the SKUs that are at or below their low-stock threshold.",
    ["sku"],
)


@dataclass(frozen=True, slots=True)
class AvailabilityMove:
    """A committed use case changed the availability of `sku` by `delta` units."""

    sku: str
    delta: int
    threshold: int
    previous_threshold: int


class LowStockGauge:
    """`ironcart_inventory_available{sku}` for low SKUs only; a SKU that recovers loses it."""

    def __init__(self, gauge: Gauge = AVAILABLE, *, max_series: int = MAX_LOW_STOCK_SERIES) -> None:
        self._gauge = gauge
        self._max_series = max_series
        self._tracked: set[str] = set()
        self._lock = threading.Lock()

    def observe(self, sku: str, *, available: int, threshold: int) -> None:
        with self._lock:
            if available <= threshold:
                if sku in self._tracked or len(self._tracked) < self._max_series:
                    self._tracked.add(sku)
                    self._gauge.labels(sku=sku).set(available)
            elif sku in self._tracked:
                self._tracked.discard(sku)
                self._gauge.remove(sku)


low_stock_gauge = LowStockGauge()
ReadAvailability = Callable[[Sequence[str]], Awaitable[dict[str, int]]]


class StockAnnouncer:
    def __init__(
        self, bus: EventBus, read_availability: ReadAvailability, gauge: LowStockGauge
    ) -> None:
        self._bus = bus
        self._read = read_availability
        self._gauge = gauge

    async def announce(self, moves: Sequence[AvailabilityMove]) -> None:
        """Publish the events of committed moves (call only after the commit returned)."""
        if not moves:
            return
        available = await self._read(sorted({move.sku for move in moves}))
        events: list[object] = []
        for move in moves:
            after = available.get(move.sku, 0)
            if move.delta != 0:
                events.append(StockChanged(move.sku, after))
            low = became_low(
                before=after - move.delta,
                after=after,
                threshold=move.threshold,
                previous_threshold=move.previous_threshold,
            )
            if low:
                STOCK_LOW.inc()
                events.append(StockLow(move.sku, after, move.threshold))
            self._gauge.observe(move.sku, available=after, threshold=move.threshold)
        if events:
            await self._bus.publish(events)
