"""Inventory use cases: warehouses, stock, reservations, checkout, reconciliation.

Every change of a stock level is a conditional UPDATE checked by row count, and writes its
ledger rows in the same transaction. A change that can lower availability locks the SKU's
level rows first and records `StockLow` in the outbox before its commit; `StockChanged` is
announced on the in-process bus after the commit returned (`inventory.events`). One unit
of work each:

__init__.py      InventoryService: the use cases, their retries and announcements
stock.py         the staff's stock changes (set, adjust, receive, return, transfer)
reservations.py  one attempt of each reservation change (reserve, commit, release, expire)
tcc.py           one attempt of each TCC step of checkout (try, confirm, cancel)

Errors: `inventory.domain`'s hierarchy, plus `platform.txn.fence`'s `Suspended` (a try
after its cancel) and `FenceConflict` (confirm after cancel, cancel after confirm).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from ironcart.contracts.inventory import Reservation
from ironcart.inventory.domain import (
    DEFAULT_LOW_STOCK_THRESHOLD,
    Discrepancy,
    InsufficientStock,
    MovementKind,
    Shortage,
    SkuNotFound,
    SkuStock,
    StockContention,
    Warehouse,
    WarehouseNotFound,
    check_reservation_request,
    check_sku,
    check_xid,
    merge_lines,
    tcc_owner,
)
from ironcart.inventory.events import (
    AvailabilityMove,
    LowStockGauge,
    StockAnnouncer,
    low_stock_gauge,
    record_low_stock,
)
from ironcart.inventory.repository import InventoryUnitOfWork
from ironcart.inventory.service.reservations import Lost, ReservationAttempts
from ironcart.inventory.service.stock import StockKeeping
from ironcart.inventory.service.tcc import TccAttempts
from ironcart.inventory.service.xa import sell_in_branch
from ironcart.platform.database import is_transient
from ironcart.platform.errors import InvalidRequest
from ironcart.platform.events import EventBus

_log = structlog.get_logger("ironcart.inventory")
T = TypeVar("T")
TRANSFER = MovementKind.TRANSFER
MAX_ATTEMPTS = 50
EXPIRY_BATCH = 100
MAX_SKUS_PER_QUERY = 1000


def _now() -> datetime:
    return datetime.now(UTC)


class InventoryService(StockKeeping):
    def __init__(
        self,
        *,
        uow_factory: Callable[[], InventoryUnitOfWork],
        bus: EventBus,
        clock: Callable[[], datetime] = _now,
        gauge: LowStockGauge = low_stock_gauge,
        max_attempts: int = MAX_ATTEMPTS,
        outbox_written: Callable[[], None] = lambda: None,
    ) -> None:
        self._uow = uow_factory
        self._clock = clock
        self._max_attempts = max_attempts
        self._reservations = ReservationAttempts(uow_factory, clock)
        self._tcc = TccAttempts(uow_factory, clock)
        self._announcer = StockAnnouncer(bus, self._available, gauge, outbox_written=outbox_written)

    # -- warehouses -------------------------------------------------------------------------

    async def list_warehouses(self) -> list[Warehouse]:
        """Every warehouse, active or not, by priority then code."""
        async with self._uow().reading() as uow:
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
            await uow.read_committed()
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
            switched = updated.active != current.active
            # (De)activating moves the availability of every SKU stocked here: their levels
            # here are locked first, like every stock change (see `events.record_low_stock`).
            units = await uow.stock.available_at(current.id, lock=True) if switched else {}
            await uow.warehouses.update(updated, now=self._clock())
            if switched:
                moves = await self._warehouse_moves(uow, current.id, units, updated.active)
            await uow.commit()
        await self._announcer.announce(moves)
        return updated

    async def _warehouse_moves(
        self, uow: InventoryUnitOfWork, warehouse_id: str, units: Mapping[str, int], active: bool
    ) -> list[AvailabilityMove]:
        """The SKUs of a warehouse that was (de)activated: their units come or go at once."""
        sign = 1 if active else -1
        thresholds = await uow.stock.thresholds_at(warehouse_id)
        moves = [
            AvailabilityMove(sku, sign * count, limit, limit)
            for sku, count in units.items()
            for limit in [thresholds.get(sku, DEFAULT_LOW_STOCK_THRESHOLD)]
        ]
        return await record_low_stock(
            uow, moves, read=lambda _skus: uow.stock.available_of_skus_at(warehouse_id)
        )

    async def deactivate_warehouse(self, *, code: str) -> None:
        """Stop selling from a warehouse; its levels, ledger and existing holds stay."""
        await self.update_warehouse(code=code, active=False)

    # -- reading stock ----------------------------------------------------------------------

    async def get_stock(self, *, sku: str) -> SkuStock:
        """Levels per warehouse, availability and threshold of `sku`, or `SkuNotFound`."""
        check_sku(sku)
        async with self._uow().reading() as uow:
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
        async with self._uow().reading() as uow:
            return await uow.movements.reconcile()

    # -- staff changes: stock.py ------------------------------------------------------------

    # -- reservations -----------------------------------------------------------------------

    async def reserve(
        self, *, sku: str, quantity: int, owner: str, ttl_seconds: int
    ) -> Reservation:
        """Hold `quantity` units of `sku` for `owner` until the TTL ends.

        Spreading rule (`domain.plan_allocation`): active warehouses by priority (lower
        first), then most available stock; a warehouse gives what it has and the rest comes
        from the next, so a reservation may be split into one line per warehouse. Each line
        is one conditional UPDATE (`on_hand - reserved >= q`) on the SKU's level rows, locked
        in warehouse-id order after a lock-free check for a visibly short SKU; should one
        still lose, the whole transaction rolls back and is planned again on fresh numbers.
        `InsufficientStock` when the active warehouses together have less than `quantity`.
        """
        check_sku(sku)
        check_reservation_request(quantity=quantity, owner=owner, ttl_seconds=ttl_seconds)
        reservation, move = await self._retrying(
            lambda: self._reservations.reserve(sku, quantity, owner, ttl_seconds)
        )
        await self._announcer.announce([move])
        return reservation

    async def commit(self, *, reservation_id: str) -> None:
        """Sell the held units (they leave on_hand). Twice is a no-op; after expiry, refused."""
        await self._retrying(lambda: self._reservations.commit(reservation_id))

    async def release(self, *, reservation_id: str) -> None:
        """Give the held units back. Releasing twice, or after expiry, is a no-op."""
        move = await self._retrying(lambda: self._reservations.release(reservation_id))
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
            claimed, expired, batch_moves = await self._reservations.expire_batch(size)
            released += expired
            moves.extend(batch_moves)
            if claimed < size or expired == 0:
                break
        await self._announcer.announce(moves)
        return released

    # -- checkout: inventory as a TCC participant -------------------------------------------

    async def try_reserve(
        self, *, xid: str, lines: Sequence[tuple[str, int]], ttl_seconds: int
    ) -> list[Reservation]:
        """TCC try: hold every (sku, quantity) line for owner `tcc:<xid>`, all or nothing.

        A SKU named twice has its quantities added; one reservation per SKU, in SKU order,
        each spread over warehouses as `reserve` does. `InsufficientStock` lists every short
        SKU and holds nothing. Trying again returns the reservations of the first try and
        holds nothing more; a try after its cancel raises `Suspended` and holds nothing. The
        TTL is a safety net for a coordinator that died: confirm does not depend on it.
        """
        check_xid(xid)
        wanted = merge_lines(lines)
        for _, quantity in wanted:
            check_reservation_request(
                quantity=quantity, owner=tcc_owner(xid), ttl_seconds=ttl_seconds
            )
        held, moves = await self._retrying(lambda: self._tcc.try_reserve(xid, wanted, ttl_seconds))
        await self._announcer.announce(moves)
        return held

    async def confirm_reservations(self, *, xid: str) -> None:
        """TCC confirm: sell what the try holds; again is a no-op; after cancel `FenceConflict`.

        Expired reservations are taken again if their units are still free, else
        `ReservationExpired` (naming the SKUs) and nothing is sold.
        """
        check_xid(xid)
        await self._announcer.announce(await self._retrying(lambda: self._tcc.confirm(xid)))

    async def cancel_reservations(self, *, xid: str) -> None:
        """TCC cancel: release what the try holds; idempotent; after confirm `FenceConflict`.

        A cancel that finds no try records it, so that a late try is `Suspended`.
        """
        check_xid(xid)
        await self._announcer.announce(await self._retrying(lambda: self._tcc.cancel(xid)))

    async def check_available(self, *, lines: Sequence[tuple[str, int]]) -> None:
        """`InsufficientStock` (every short SKU) when the lines cannot be held right now.

        A plain read, no lock: it refuses a sold-out item at once, before a checkout writes
        anything; the reservation (`try_reserve`) still decides.
        """
        wanted = merge_lines(lines)
        available = await self._available([sku for sku, _ in wanted])
        short = [
            Shortage(sku, quantity, available.get(sku, 0))
            for sku, quantity in wanted
            if available.get(sku, 0) < quantity
        ]
        if short:
            raise InsufficientStock.of(short)

    async def return_sale(self, *, xid: str) -> None:
        """Put back what checkout `xid` sold (its paid order was cancelled); once, idempotent."""
        check_xid(xid)
        await self._announcer.announce(await self._retrying(lambda: self._tcc.return_sale(xid)))

    # -- checkout: inventory as a branch of an XA transaction -------------------------------

    async def sell_in_branch(
        self, connection: AsyncConnection, *, reference: str, lines: Sequence[tuple[str, int]]
    ) -> Callable[[], Awaitable[None]]:
        """XA branch: sell the lines in the branch open on `connection` (`service.xa`).

        All or nothing, `InsufficientStock` naming every short SKU; never commits. Returns
        the announcement of the changed availability: call it after the XA commit.
        """
        check_xid(reference)
        wanted = merge_lines(lines)
        moves = await sell_in_branch(
            connection, reference=reference, lines=wanted, now=self._clock()
        )
        return lambda: self._announcer.announce(moves)

    # -- internals --------------------------------------------------------------------------

    async def _retrying(self, attempt: Callable[[], Awaitable[T | Lost]]) -> T:
        for _ in range(self._max_attempts):
            try:
                result = await attempt()
            except DBAPIError as error:
                if not is_transient(error):
                    raise
                _log.info("inventory_transaction_retried", error=type(error.orig).__name__)
                continue
            if not isinstance(result, Lost):
                return result
        raise StockContention("Too many concurrent changes of this stock; retry shortly.")

    async def _available(self, skus: Sequence[str]) -> dict[str, int]:
        async with self._uow().reading() as uow:
            found = await uow.stock.available(skus)
        return {sku: max(units, 0) for sku, units in found.items()}
