"""Staff changes of stock levels: set, adjust, receive, returns, transfers, bulk goods-in.

A mixin of `InventoryService` (which provides the unit of work, the clock and the
announcer): each change is one transaction that locks the SKU's level rows when it can lower
availability, writes its ledger rows, records `StockLow` in the outbox, and announces
`StockChanged` after the commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

from ironcart.inventory.domain import (
    Movement,
    MovementKind,
    SkuNotFound,
    SkuStock,
    StaleStock,
    StockBelowReserved,
    UnknownWarehouse,
    WarehouseNotFound,
    check_sku,
)
from ironcart.inventory.events import AvailabilityMove, StockAnnouncer, record_low_stock
from ironcart.inventory.repository import InventoryUnitOfWork
from ironcart.inventory.service.reservations import threshold_of
from ironcart.platform.errors import InvalidRequest

TRANSFER = MovementKind.TRANSFER
STALE = "The stock changed since it was read; read it again."


class StockKeeping:
    """The staff's stock changes (see the module docstring)."""

    _uow: Callable[[], InventoryUnitOfWork]
    _clock: Callable[[], datetime]
    _announcer: StockAnnouncer
    get_stock: Callable[..., Awaitable[SkuStock]]  # InventoryService's read of one SKU

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
            await uow.read_committed()
            await uow.stock.lock_levels([sku])  # see `events.record_low_stock`
            current = await uow.stock.get(sku)
            if current.version != expected_version:
                raise StaleStock(STALE)
            entries, delta = await self._set_levels(uow, current, on_hand, reason, actor)
            await self._set_threshold(uow, sku, low_stock_threshold)
            await uow.movements.append(entries, now=self._clock())
            updated = await uow.stock.get(sku)
            move = AvailabilityMove(
                sku, delta, updated.low_stock_threshold, current.low_stock_threshold
            )
            moves = await record_low_stock(uow, [move])
            await uow.commit()
        await self._announcer.announce(moves)
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
        self,
        *,
        sku: str,
        warehouse: str,
        quantity: int,
        reference: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Returned goods go back on the shelf (a "return" movement)."""
        if quantity <= 0:
            raise InvalidRequest("A return brings at least one unit.")
        await self._add_on_hand(sku, warehouse, quantity, MovementKind.RETURN, reason, reference)

    async def transfer(
        self, *, sku: str, source: str, target: str, quantity: int, reason: str, actor: str
    ) -> SkuStock:
        """Move `quantity` units on hand from one warehouse to another: both levels and both
        ledger rows in one transaction (every warehouse's stock lives in inventory's own
        database, so no distributed transaction is needed). Reserved units stay put."""
        check_sku(sku)
        if quantity <= 0:
            raise InvalidRequest("A transfer moves at least one unit.")
        if source == target:
            raise InvalidRequest("A transfer goes to another warehouse.")
        async with self._uow().reading() as uow:
            origin = await uow.warehouses.get_by_code(source)
            destination = await uow.warehouses.get_by_code(target)
            known = (await uow.stock.get(sku)).version > 0
        if origin is None or destination is None:
            missing = source if origin is None else target
            raise UnknownWarehouse(f"No warehouse with code {missing!r}.")
        if not known:  # nothing to move, and no empty level left behind for it
            raise SkuNotFound(f"Inventory has no record of {sku!r}.")
        await self._ensure_level(sku, destination.id)
        async with self._uow() as uow:
            await uow.read_committed()
            # Every level of the SKU, locked in one order; the warehouses as of the lock.
            locked = {
                level.warehouse.id: level.warehouse for level in await uow.stock.lock_levels([sku])
            }
            origin = locked.get(origin.id, origin)
            destination = locked.get(destination.id, destination)
            threshold = await threshold_of(uow, sku)
            now = self._clock()
            if not await uow.stock.add_on_hand(sku, origin.id, -quantity, now=now):
                raise StockBelowReserved(
                    f"{quantity} units cannot leave {source}: they are reserved or not there."
                )
            await uow.stock.add_on_hand(sku, destination.id, quantity, now=now)
            reference = f"transfer:{uuid.uuid4()}"
            note = f"{reason} (by {actor})"[:500]
            await uow.movements.append(
                [
                    Movement(sku, origin.id, MovementKind.TRANSFER, -quantity, 0, reference, note),
                    Movement(
                        sku, destination.id, MovementKind.TRANSFER, quantity, 0, reference, note
                    ),
                ],
                now=now,
            )
            # Availability counts active warehouses only: it moves when one side is inactive.
            moved = (quantity if destination.active else 0) - (quantity if origin.active else 0)
            moves = await record_low_stock(
                uow, [AvailabilityMove(sku, moved, threshold, threshold)]
            )
            await uow.commit()
        await self._announcer.announce(moves)
        return await self.get_stock(sku=sku)

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
            await uow.read_committed()
            if delta < 0:  # locked, see `events.record_low_stock`; active as of the lock
                locked = await uow.stock.lock_levels([sku])
                warehouse = next(
                    (level.warehouse for level in locked if level.warehouse.id == warehouse.id),
                    warehouse,
                )
            threshold = await threshold_of(uow, sku)
            now = self._clock()
            if not await uow.stock.add_on_hand(sku, warehouse.id, delta, now=now):
                raise StockBelowReserved(
                    f"{-delta} units cannot leave {code}: they are reserved or not there."
                )
            entry = Movement(sku, warehouse.id, kind, delta, 0, reference, reason)
            await uow.movements.append([entry], now=now)
            moved = delta if warehouse.active else 0
            moves = await record_low_stock(
                uow, [AvailabilityMove(sku, moved, threshold, threshold)]
            )
            await uow.commit()
        await self._announcer.announce(moves)

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
