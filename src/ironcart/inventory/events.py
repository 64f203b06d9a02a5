"""What inventory announces: `StockLow` through its outbox, `StockChanged` and metrics after commit.

`StockLow` is recorded in `inventory_outbox` in the transaction of the stock change that
took the SKU to or below its threshold (`record_low_stock`, called before the commit), and
the relay publishes it on `inventory.StockLow`: a crash after the commit does not lose it.
The availability it carries is read inside that transaction, after the change. Every
change that can lower availability first locks the SKU's level rows (in (sku, warehouse_id)
order, at READ COMMITTED), so the read is exact: of concurrent changes that take the SKU
over its threshold together, the one that crossed it records the event, once per crossing.
(Only a receipt into a level created after those locks, a new warehouse for the SKU, is
not held back by them: in that race the decision may be off by the units received.)
The relay delivers it at least once; consumers deduplicate by event id.

`StockChanged` stays on the in-process bus after the commit (`StockAnnouncer`), with the
availability read again then, so the last announcement for a SKU carries its latest
committed value. It feeds the catalog's availability read model and cache invalidation,
which tolerate a lost announcement: the worker re-syncs availability every hour. The
`ironcart_inventory_stock_low_total` counter and the low-stock gauge are per process and
also updated after the commit.

Per-SKU gauge series exist only for SKUs at or below their threshold, and at most
`MAX_LOW_STOCK_SERIES` of them, so label cardinality stays bounded.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from ironcart.contracts.inventory import StockChanged, StockLow
from ironcart.inventory.domain import became_low
from ironcart.inventory.repository import InventoryUnitOfWork
from ironcart.platform.events import EventBus
from ironcart.platform.outbox import register_event

register_event(StockLow)

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
    """A use case changed the availability of `sku` by `delta` units.

    `low`: its transaction recorded `StockLow` for the SKU (`record_low_stock`).
    """

    sku: str
    delta: int
    threshold: int
    previous_threshold: int
    low: bool = False

    @property
    def may_become_low(self) -> bool:
        """Only less stock, or a higher threshold, can take a SKU to or below it."""
        return self.delta < 0 or self.threshold > self.previous_threshold


ReadAvailability = Callable[[Sequence[str]], Awaitable[dict[str, int]]]


async def record_low_stock(
    uow: InventoryUnitOfWork,
    moves: Sequence[AvailabilityMove],
    *,
    read: ReadAvailability | None = None,
) -> list[AvailabilityMove]:
    """Record `StockLow` for each move that took its SKU to or below its threshold.

    Call inside the transaction of `moves` (one per SKU), after the change and before the
    commit, holding the SKU's level locks. One read of availability, and none when no
    move can make a SKU low. `read` replaces `uow.stock.available` (a warehouse's SKUs).
    Returns the moves, `low` set on those recorded.
    """
    candidates = sorted({move.sku for move in moves if move.may_become_low})
    if not candidates:
        return list(moves)
    available = await (read or uow.stock.available)(candidates)
    marked: list[AvailabilityMove] = []
    for move in moves:
        after = max(available.get(move.sku, 0), 0)
        if move.may_become_low and became_low(
            before=after - move.delta,
            after=after,
            threshold=move.threshold,
            previous_threshold=move.previous_threshold,
        ):
            await uow.outbox.record(StockLow(move.sku, after, move.threshold))
            move = dataclasses.replace(move, low=True)
        marked.append(move)
    return marked


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


class StockAnnouncer:
    def __init__(
        self,
        bus: EventBus,
        read_availability: ReadAvailability,
        gauge: LowStockGauge,
        *,
        outbox_written: Callable[[], None] = lambda: None,
    ) -> None:
        self._bus = bus
        self._read = read_availability
        self._gauge = gauge
        self._outbox_written = outbox_written

    async def announce(self, moves: Sequence[AvailabilityMove]) -> None:
        """Publish `StockChanged` of committed moves (call only after the commit returned).

        Their `StockLow` is in the outbox already: it is counted here, and the relay is woken.
        """
        if not moves:
            return
        lows = sum(1 for move in moves if move.low)
        if lows:
            STOCK_LOW.inc(lows)
            self._outbox_written()
        available = await self._read(sorted({move.sku for move in moves}))
        events: list[object] = []
        for move in moves:
            after = available.get(move.sku, 0)
            if move.delta != 0:
                events.append(StockChanged(move.sku, after))
            self._gauge.observe(move.sku, available=after, threshold=move.threshold)
        if events:
            await self._bus.publish(events)
