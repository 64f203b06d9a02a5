"""One attempt, in one transaction, of each reservation change; the service retries and announces.

An attempt returns `LOST` when a conditional UPDATE found its row changed since it was
read: `InventoryService._retrying` runs it again on fresh numbers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

import structlog

from ironcart.contracts.inventory import Reservation
from ironcart.inventory.domain import (
    DEFAULT_LOW_STOCK_THRESHOLD,
    Allocation,
    Movement,
    MovementKind,
    Outcome,
    ReservationNotFound,
    ReservationStatus,
    commit_outcome,
    line_movements,
    plan_allocation,
    release_outcome,
)
from ironcart.inventory.events import AvailabilityMove, record_low_stock
from ironcart.inventory.repository import InventoryUnitOfWork

_log = structlog.get_logger("ironcart.inventory")


class Lost:
    """A conditional UPDATE found its row changed since it was read: run the use case again."""


LOST = Lost()


class ReservationAttempts:
    def __init__(
        self, uow_factory: Callable[[], InventoryUnitOfWork], clock: Callable[[], datetime]
    ) -> None:
        self._uow = uow_factory
        self._clock = clock

    async def reserve(
        self, sku: str, quantity: int, owner: str, ttl_seconds: int
    ) -> tuple[Reservation, AvailabilityMove] | Lost:
        async with self._uow() as uow:
            await uow.read_committed()
            # Visibly short (a sold-out SKU under a crowd): refuse without queueing for locks.
            plan_allocation(
                sku=sku, quantity=quantity, levels=await uow.stock.levels(sku, active_only=True)
            )
            # The SKU's level rows locked: the plan holds, and the availability read after the
            # change (`record_low_stock`) is exact, so the crossing records `StockLow` once.
            levels = await uow.stock.lock_levels([sku])
            plan = plan_allocation(sku=sku, quantity=quantity, levels=levels)
            threshold = await threshold_of(uow, sku)
            now = self._clock()
            expires_at = now + timedelta(seconds=ttl_seconds)
            reservation = Reservation(str(uuid.uuid4()), sku, quantity, owner, expires_at)
            for line in plan:
                if not await uow.stock.reserve(sku, line.warehouse_id, line.quantity, now=now):
                    return LOST
            await uow.reservations.add(reservation, now=now)
            await uow.reservations.add_lines(reservation.id, plan)
            entries = line_movements(
                MovementKind.RESERVATION, sku=sku, lines=plan, reservation_id=reservation.id
            )
            await uow.movements.append(entries, now=now)
            moves = await record_low_stock(
                uow, [AvailabilityMove(sku, -quantity, threshold, threshold)]
            )
            await uow.commit()
        return reservation, moves[0]

    async def commit(self, reservation_id: str) -> Lost | None:
        async with self._uow() as uow:
            record = await uow.reservations.get(reservation_id)
            if record is None:
                raise ReservationNotFound(f"No reservation {reservation_id!r}.")
            now = self._clock()
            if (
                commit_outcome(record.status, expires_at=record.expires_at, now=now)
                is Outcome.NOTHING
            ):
                return None
            if not await uow.reservations.transition(
                record.id, ReservationStatus.COMMITTED, now=now, unexpired_at=now
            ):
                return LOST
            for line in record.lines:
                if not await uow.stock.ship(record.sku, line.warehouse_id, line.quantity, now=now):
                    raise RuntimeError(f"reservation {record.id} holds units its level lacks")
            entries = line_movements(
                MovementKind.SALE, sku=record.sku, lines=record.lines, reservation_id=record.id
            )
            await uow.movements.append(entries, now=now)
            await uow.commit()
        return None

    async def release(self, reservation_id: str) -> AvailabilityMove | Lost | None:
        async with self._uow() as uow:
            record = await uow.reservations.get(reservation_id)
            if record is None:
                raise ReservationNotFound(f"No reservation {reservation_id!r}.")
            if release_outcome(record.status) is Outcome.NOTHING:
                return None
            threshold = await threshold_of(uow, record.sku)
            now = self._clock()
            if not await uow.reservations.transition(
                record.id, ReservationStatus.RELEASED, now=now
            ):
                return LOST
            lines = {record.id: record.lines}
            await unreserve(uow, {record.id: record.sku}, lines, MovementKind.RELEASE, now)
            await uow.commit()
        return AvailabilityMove(record.sku, record.quantity, threshold, threshold)

    async def expire_batch(self, size: int) -> tuple[int, int, list[AvailabilityMove]]:
        """Claim up to `size` overdue reservations and expire them; (claimed, expired, moves)."""
        async with self._uow() as uow:
            now = self._clock()
            claimed = await uow.reservations.claim_expired(now=now, limit=size)
            skus: dict[str, str] = {}
            for reservation_id, sku in claimed:
                if await uow.reservations.transition(
                    reservation_id, ReservationStatus.EXPIRED, now=now
                ):
                    skus[reservation_id] = sku
            if not skus:
                return len(claimed), 0, []
            lines = await uow.reservations.lines(list(skus))
            freed = await unreserve(uow, skus, lines, MovementKind.EXPIRY, now)
            thresholds = await uow.stock.thresholds(list(freed))
            await uow.commit()
        _log.info("inventory_reservations_expired", count=len(skus))
        return len(claimed), len(skus), availability_moves(freed, thresholds)


async def unreserve(
    uow: InventoryUnitOfWork,
    skus: Mapping[str, str],
    lines: Mapping[str, Sequence[Allocation]],
    kind: MovementKind,
    now: datetime,
) -> dict[str, int]:
    """Give back the held units of reservations whose status just left `active`.

    Level rows are updated once per (sku, warehouse), in that order, so that two
    workers never lock the same rows in opposite orders. Returns units freed per SKU.
    """
    totals: dict[tuple[str, str], int] = {}
    entries: list[Movement] = []
    for reservation_id, sku in skus.items():
        held = lines.get(reservation_id, ())
        entries += line_movements(kind, sku=sku, lines=held, reservation_id=reservation_id)
        for line in held:
            key = (sku, line.warehouse_id)
            totals[key] = totals.get(key, 0) + line.quantity
    freed: dict[str, int] = {}
    for (sku, warehouse_id), quantity in sorted(totals.items()):
        if not await uow.stock.unreserve(sku, warehouse_id, quantity, now=now):
            raise RuntimeError(f"level {sku}@{warehouse_id} holds fewer units than its lines")
        freed[sku] = freed.get(sku, 0) + quantity
    await uow.movements.append(entries, now=now)
    return freed


def availability_moves(
    changes: Mapping[str, int], thresholds: Mapping[str, int]
) -> list[AvailabilityMove]:
    """The announcements of availability changed by `changes` units per SKU, in SKU order."""
    return [
        AvailabilityMove(sku, units, limit, limit)
        for sku, units in sorted(changes.items())
        for limit in [thresholds.get(sku, DEFAULT_LOW_STOCK_THRESHOLD)]
    ]


async def threshold_of(uow: InventoryUnitOfWork, sku: str) -> int:
    return (await uow.stock.thresholds([sku])).get(sku, DEFAULT_LOW_STOCK_THRESHOLD)
