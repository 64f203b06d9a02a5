"""Inventory use cases: warehouses, stock, reservations, reconciliation. One unit of work each.

Every change of a stock level is a conditional UPDATE checked by row count, and writes its
ledger rows in the same transaction. `StockChanged` / `StockLow` are announced only after
the commit returned (`inventory.events`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import structlog
from sqlalchemy.exc import DBAPIError

from ironcart.contracts.inventory import Reservation
from ironcart.inventory.domain import (
    DEFAULT_LOW_STOCK_THRESHOLD,
    Allocation,
    Discrepancy,
    Movement,
    MovementKind,
    Outcome,
    ReservationNotFound,
    ReservationStatus,
    SkuNotFound,
    SkuStock,
    StaleStock,
    StockBelowReserved,
    StockContention,
    UnknownWarehouse,
    Warehouse,
    WarehouseNotFound,
    check_reservation_request,
    check_sku,
    commit_outcome,
    line_movements,
    plan_allocation,
    release_outcome,
)
from ironcart.inventory.events import (
    AvailabilityMove,
    LowStockGauge,
    StockAnnouncer,
    low_stock_gauge,
)
from ironcart.inventory.repository import InventoryUnitOfWork
from ironcart.platform.database import is_transient
from ironcart.platform.errors import InvalidRequest
from ironcart.platform.events import EventBus

_log = structlog.get_logger("ironcart.inventory")
T = TypeVar("T")
MAX_ATTEMPTS = 50
EXPIRY_BATCH = 100
MAX_SKUS_PER_QUERY = 1000
STALE = "The stock changed since it was read; read it again."


class _Lost:
    """A conditional UPDATE found its row changed since it was read: run the use case again."""


LOST = _Lost()


def _now() -> datetime:
    return datetime.now(UTC)


class InventoryService:
    def __init__(
        self,
        *,
        uow_factory: Callable[[], InventoryUnitOfWork],
        bus: EventBus,
        clock: Callable[[], datetime] = _now,
        gauge: LowStockGauge = low_stock_gauge,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self._uow = uow_factory
        self._clock = clock
        self._max_attempts = max_attempts
        self._announcer = StockAnnouncer(bus, self._available, gauge)

    # -- warehouses -------------------------------------------------------------------------

    async def list_warehouses(self) -> list[Warehouse]:
        """Every warehouse, active or not, by priority then code."""
        async with self._uow() as uow:
            return await uow.warehouses.list()

    async def create_warehouse(self, *, code: str, name: str, priority: int) -> Warehouse:
        """Open a warehouse; the stock it receives counts towards availability at once."""
        warehouse = Warehouse(str(uuid.uuid4()), code, name.strip(), priority, active=True)
        async with self._uow() as uow:
            await uow.warehouses.add(warehouse, now=self._clock())
            await uow.commit()
        return warehouse

    async def update_warehouse(
        self,
        *,
        code: str,
        name: str | None = None,
        priority: int | None = None,
        active: bool | None = None,
    ) -> Warehouse:
        """Rename, re-prioritise or (de)activate a warehouse; announces changed availability."""
        moves: list[AvailabilityMove] = []
        async with self._uow() as uow:
            current = await uow.warehouses.get_by_code(code)
            if current is None:
                raise WarehouseNotFound(f"No warehouse with code {code!r}.")
            updated = Warehouse(
                current.id,
                current.code,
                current.name if name is None else name.strip(),
                current.priority if priority is None else priority,
                current.active if active is None else active,
            )
            await uow.warehouses.update(updated, now=self._clock())
            if updated.active != current.active:
                sign = 1 if updated.active else -1
                thresholds = await uow.stock.thresholds_at(current.id)
                moves = [
                    AvailabilityMove(sku, sign * units, limit, limit)
                    for sku, units in (await uow.stock.available_at(current.id)).items()
                    for limit in [thresholds.get(sku, DEFAULT_LOW_STOCK_THRESHOLD)]
                ]
            await uow.commit()
        await self._announcer.announce(moves)
        return updated

    async def deactivate_warehouse(self, *, code: str) -> None:
        """Stop selling from a warehouse; its levels, ledger and existing holds stay."""
        await self.update_warehouse(code=code, active=False)

    # -- reading stock ----------------------------------------------------------------------

    async def get_stock(self, *, sku: str) -> SkuStock:
        """Levels per warehouse, availability and threshold of `sku`, or `SkuNotFound`."""
        check_sku(sku)
        async with self._uow() as uow:
            stock = await uow.stock.get(sku)
        if stock.version == 0:
            raise SkuNotFound(f"Inventory has no record of {sku!r}.")
        return stock

    async def availability(self, *, skus: Sequence[str]) -> dict[str, int]:
        """Units that can be reserved now, per SKU (0 for a SKU inventory does not know)."""
        if len(skus) > MAX_SKUS_PER_QUERY:
            raise InvalidRequest(f"Ask for at most {MAX_SKUS_PER_QUERY} SKUs at a time.")
        wanted = [check_sku(sku) for sku in skus]
        found = await self._available(wanted) if wanted else {}
        return {sku: found.get(sku, 0) for sku in wanted}

    async def reconcile(self) -> list[Discrepancy]:
        """Levels that differ from the sums of their ledger rows (empty when all is well)."""
        async with self._uow() as uow:
            return await uow.movements.reconcile()

    # -- staff changes ----------------------------------------------------------------------

    async def set_stock(
        self,
        *,
        sku: str,
        expected_version: int,
        on_hand: Mapping[str, int],
        low_stock_threshold: int | None,
        reason: str,
        actor: str,
    ) -> SkuStock:
        """Set on_hand per warehouse code and the threshold, if `sku` is still at that version.

        `StaleStock` (412) when the version moved on; version 0 means "not created yet".
        """
        check_sku(sku)
        async with self._uow() as uow:
            current = await uow.stock.get(sku)
            if current.version != expected_version:
                raise StaleStock(STALE)
            entries, delta = await self._set_levels(uow, current, on_hand, reason, actor)
            await self._set_threshold(uow, sku, low_stock_threshold)
            await uow.movements.append(entries, now=self._clock())
            updated = await uow.stock.get(sku)
            await uow.commit()
        await self._announcer.announce(
            [AvailabilityMove(sku, delta, updated.low_stock_threshold, current.low_stock_threshold)]
        )
        return updated

    async def adjust(
        self, *, sku: str, warehouse: str, delta: int, reason: str, actor: str
    ) -> SkuStock:
        """Add `delta` (may be negative) units on hand; refused below what is reserved."""
        if delta == 0:
            raise InvalidRequest("An adjustment changes stock: delta must not be 0.")
        await self._add_on_hand(sku, warehouse, delta, MovementKind.ADJUSTMENT, reason, actor)
        return await self.get_stock(sku=sku)

    async def receive(
        self, *, sku: str, warehouse: str, quantity: int, reference: str | None = None
    ) -> None:
        """Goods in: `quantity` units arrive in `warehouse` (a "receipt" movement)."""
        if quantity <= 0:
            raise InvalidRequest("A receipt brings at least one unit.")
        await self._add_on_hand(sku, warehouse, quantity, MovementKind.RECEIPT, None, reference)

    async def restock_return(
        self, *, sku: str, warehouse: str, quantity: int, reference: str | None = None
    ) -> None:
        """Returned goods go back on the shelf (a "return" movement)."""
        if quantity <= 0:
            raise InvalidRequest("A return brings at least one unit.")
        await self._add_on_hand(sku, warehouse, quantity, MovementKind.RETURN, None, reference)

    async def receive_new(self, *, warehouse: str, quantities: Mapping[str, int]) -> None:
        """Bulk goods-in for SKUs with no level there yet (imports, seeding), one transaction.

        Ledger rows are written as for `receive`; no per-SKU events are announced, so the
        caller re-syncs readers (the catalog's `sync_availability`) once afterwards.
        """
        for sku, quantity in quantities.items():
            check_sku(sku)
            if quantity <= 0:
                raise InvalidRequest("A receipt brings at least one unit.")
        async with self._uow() as uow:
            target = await uow.warehouses.get_by_code(warehouse)
            if target is None:
                raise WarehouseNotFound(f"No warehouse {warehouse!r}.")
            now = self._clock()
            await uow.stock.insert_received(target.id, quantities, now=now)
            await uow.movements.append(
                [
                    Movement(
                        sku=sku,
                        warehouse_id=target.id,
                        kind=MovementKind.RECEIPT,
                        on_hand_delta=quantity,
                        reserved_delta=0,
                        reference="bulk-receipt",
                    )
                    for sku, quantity in quantities.items()
                ],
                now=now,
            )
            await uow.commit()

    # -- reservations -----------------------------------------------------------------------

    async def reserve(
        self, *, sku: str, quantity: int, owner: str, ttl_seconds: int
    ) -> Reservation:
        """Hold `quantity` units of `sku` for `owner` until the TTL ends.

        Spreading rule (`domain.plan_allocation`): active warehouses by priority (lower
        first), then most available stock; a warehouse gives what it has and the rest comes
        from the next, so a reservation may be split into one line per warehouse. Each line
        is one conditional UPDATE (`on_hand - reserved >= q`); if one loses a race, the whole
        transaction rolls back and is planned again on fresh numbers. `InsufficientStock`
        when the active warehouses together have less than `quantity`.
        """
        check_sku(sku)
        check_reservation_request(quantity=quantity, owner=owner, ttl_seconds=ttl_seconds)
        reservation, move = await self._retrying(
            lambda: self._try_reserve(sku, quantity, owner, ttl_seconds)
        )
        await self._announcer.announce([move])
        return reservation

    async def commit(self, *, reservation_id: str) -> None:
        """Sell the held units (they leave on_hand). Twice is a no-op; after expiry, refused."""
        await self._retrying(lambda: self._try_commit(reservation_id))

    async def release(self, *, reservation_id: str) -> None:
        """Give the held units back. Releasing twice, or after expiry, is a no-op."""
        move = await self._retrying(lambda: self._try_release(reservation_id))
        await self._announcer.announce([move] if move else [])

    async def release_expired(self, *, limit: int = 500) -> int:
        """Release active reservations past their expiry (the worker's job); returns how many.

        Several workers may run it at once: each batch locks its rows with SKIP LOCKED, and
        each expiry is the same conditional `active -> expired` transition as a release.
        """
        released = 0
        moves: list[AvailabilityMove] = []
        while released < limit:
            size = min(EXPIRY_BATCH, limit - released)
            claimed, expired, batch_moves = await self._expire_batch(size)
            released += expired
            moves.extend(batch_moves)
            if claimed < size or expired == 0:
                break
        await self._announcer.announce(moves)
        return released

    # -- internals --------------------------------------------------------------------------

    async def _retrying(self, attempt: Callable[[], Awaitable[T | _Lost]]) -> T:
        for _ in range(self._max_attempts):
            try:
                result = await attempt()
            except DBAPIError as error:
                if not is_transient(error):
                    raise
                _log.info("inventory_transaction_retried", error=type(error.orig).__name__)
                continue
            if not isinstance(result, _Lost):
                return result
        raise StockContention("Too many concurrent changes of this stock; retry shortly.")

    async def _try_reserve(
        self, sku: str, quantity: int, owner: str, ttl_seconds: int
    ) -> tuple[Reservation, AvailabilityMove] | _Lost:
        async with self._uow() as uow:
            levels = await uow.stock.levels(sku, active_only=True)
            plan = plan_allocation(sku=sku, quantity=quantity, levels=levels)
            threshold = await self._threshold(uow, sku)
            now = self._clock()
            expires_at = now + timedelta(seconds=ttl_seconds)
            reservation = Reservation(str(uuid.uuid4()), sku, quantity, owner, expires_at)
            # Stock rows first: a lost race costs one statement. (A deadlock with the expiry
            # job's index locks on MariaDB is detected by the server and retried by `_retrying`.)
            for line in plan:
                if not await uow.stock.reserve(sku, line.warehouse_id, line.quantity, now=now):
                    return LOST
            await uow.reservations.add(reservation, now=now)
            await uow.reservations.add_lines(reservation.id, plan)
            entries = line_movements(
                MovementKind.RESERVATION, sku=sku, lines=plan, reservation_id=reservation.id
            )
            await uow.movements.append(entries, now=now)
            await uow.commit()
        return reservation, AvailabilityMove(sku, -quantity, threshold, threshold)

    async def _try_commit(self, reservation_id: str) -> _Lost | None:
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

    async def _try_release(self, reservation_id: str) -> AvailabilityMove | _Lost | None:
        async with self._uow() as uow:
            record = await uow.reservations.get(reservation_id)
            if record is None:
                raise ReservationNotFound(f"No reservation {reservation_id!r}.")
            if release_outcome(record.status) is Outcome.NOTHING:
                return None
            threshold = await self._threshold(uow, record.sku)
            now = self._clock()
            if not await uow.reservations.transition(
                record.id, ReservationStatus.RELEASED, now=now
            ):
                return LOST
            lines = {record.id: record.lines}
            await self._unreserve(uow, {record.id: record.sku}, lines, MovementKind.RELEASE, now)
            await uow.commit()
        return AvailabilityMove(record.sku, record.quantity, threshold, threshold)

    async def _expire_batch(self, size: int) -> tuple[int, int, list[AvailabilityMove]]:
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
            freed = await self._unreserve(uow, skus, lines, MovementKind.EXPIRY, now)
            thresholds = await uow.stock.thresholds(list(freed))
            await uow.commit()
        _log.info("inventory_reservations_expired", count=len(skus))
        moves = [
            AvailabilityMove(sku, units, limit, limit)
            for sku, units in sorted(freed.items())
            for limit in [thresholds.get(sku, DEFAULT_LOW_STOCK_THRESHOLD)]
        ]
        return len(claimed), len(skus), moves

    async def _unreserve(
        self,
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

    async def _add_on_hand(
        self,
        sku: str,
        code: str,
        delta: int,
        kind: MovementKind,
        reason: str | None,
        reference: str | None,
    ) -> None:
        check_sku(sku)
        async with self._uow() as uow:
            warehouse = await uow.warehouses.get_by_code(code)
        if warehouse is None:
            raise UnknownWarehouse(f"No warehouse with code {code!r}.")
        if delta > 0:
            await self._ensure_level(sku, warehouse.id)
        async with self._uow() as uow:
            threshold = await self._threshold(uow, sku)
            now = self._clock()
            if not await uow.stock.add_on_hand(sku, warehouse.id, delta, now=now):
                raise StockBelowReserved(
                    f"{-delta} units cannot leave {code}: they are reserved or not there."
                )
            entry = Movement(sku, warehouse.id, kind, delta, 0, reference, reason)
            await uow.movements.append([entry], now=now)
            await uow.commit()
        moved = delta if warehouse.active else 0
        await self._announcer.announce([AvailabilityMove(sku, moved, threshold, threshold)])

    async def _ensure_level(self, sku: str, warehouse_id: str) -> None:
        """Create the empty level row in its own transaction (losing an insert race is fine)."""
        async with self._uow() as uow:
            if await uow.stock.insert_level(sku, warehouse_id, now=self._clock()):
                await uow.commit()

    async def _set_levels(
        self,
        uow: InventoryUnitOfWork,
        current: SkuStock,
        on_hand: Mapping[str, int],
        reason: str,
        actor: str,
    ) -> tuple[list[Movement], int]:
        """Set each named level if still at the version read; (ledger rows, availability moved)."""
        found = await uow.warehouses.by_codes(on_hand)
        unknown = sorted(set(on_hand) - set(found))
        if unknown:
            raise UnknownWarehouse(f"No warehouse with code {unknown[0]!r}.")
        existing = {level.warehouse.id: level for level in current.levels}
        now = self._clock()
        entries: list[Movement] = []
        moved = 0
        for warehouse in sorted(found.values(), key=lambda item: item.id):
            target = on_hand[warehouse.code]
            level = existing.get(warehouse.id)
            if level is None and not await uow.stock.insert_level(
                current.sku, warehouse.id, now=now
            ):
                raise StaleStock(STALE)
            old, reserved, version = (
                (level.on_hand, level.reserved, level.version) if level else (0, 0, 1)
            )
            if target < reserved:
                raise StockBelowReserved(f"{warehouse.code} has {reserved} units reserved.")
            if target == old:
                continue
            if not await uow.stock.set_on_hand(
                current.sku, warehouse.id, target, version=version, now=now
            ):
                raise StaleStock(STALE)
            change = target - old
            entries.append(
                Movement(
                    current.sku, warehouse.id, MovementKind.ADJUSTMENT, change, 0, actor, reason
                )
            )
            moved += change if warehouse.active else 0
        return entries, moved

    async def _set_threshold(
        self, uow: InventoryUnitOfWork, sku: str, threshold: int | None
    ) -> None:
        if threshold is None:
            return
        stored = await uow.stock.threshold(sku)
        if stored is not None and stored[0] == threshold:
            return
        version = None if stored is None else stored[1]
        if not await uow.stock.set_threshold(sku, threshold, version=version, now=self._clock()):
            raise StaleStock(STALE)

    async def _threshold(self, uow: InventoryUnitOfWork, sku: str) -> int:
        return (await uow.stock.thresholds([sku])).get(sku, DEFAULT_LOW_STOCK_THRESHOLD)

    async def _available(self, skus: Sequence[str]) -> dict[str, int]:
        async with self._uow() as uow:
            found = await uow.stock.available(skus)
        return {sku: max(units, 0) for sku, units in found.items()}
