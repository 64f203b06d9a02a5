"""Inventory as a branch of an XA checkout: sell the lines inside the coordinator's branch.

`platform.txn.xa` starts the branch's transaction on inventory's database and hands the
connection to `sell_in_branch`, which runs the sale in it and neither commits nor rolls
back: the coordinator prepares and commits the branch with the order's.

A sale here is what a TCC try and confirm do together, in one transaction: the SKUs'
level rows are locked in (sku, warehouse_id) order, the lines are planned over the
warehouses by the same rule (`domain.plan_lines`: `InsufficientStock` naming every short
SKU), each planned line is held by the conditional UPDATE of a reservation
(`on_hand - reserved >= q`, checked by row count: stock never goes negative) and leaves
at once as a sale, and the ledger gets the same reservation and sale rows, referenced by
the transaction. The sale is recorded as a confirm leaves it: one reservation per SKU,
`committed`, owned by `tcc_owner(<the transaction's xid>)`, with its lines per warehouse,
so that `return_sale(xid)` (a cancelled paid order) finds what left which warehouse.
`StockLow` goes to the outbox in the branch, so it commits or rolls back with the sale.

A deadlock or lost UPDATE cannot be retried inside the branch (its transaction is the
coordinator's): the branch fails, the XA transaction rolls back, the caller may run it
again. Branches run at READ COMMITTED (the resource's default), as the TCC steps do.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection, async_sessionmaker

from ironcart.contracts.inventory import Reservation
from ironcart.inventory.domain import (
    Allocation,
    Movement,
    MovementKind,
    ReservationStatus,
    line_movements,
    plan_lines,
    tcc_owner,
)
from ironcart.inventory.events import AvailabilityMove, record_low_stock
from ironcart.inventory.repository import InventoryUnitOfWork
from ironcart.inventory.service.reservations import availability_moves


class StockChangedUnderLock(RuntimeError):
    """A conditional UPDATE lost on a locked row: only a bug (or manual SQL) does that."""


async def sell_in_branch(
    connection: AsyncConnection,
    *,
    reference: str,
    lines: Sequence[tuple[str, int]],
    now: datetime,
) -> list[AvailabilityMove]:
    """Sell merged, SKU-ordered `lines` in the open branch on `connection` for the XA
    transaction `reference` (its xid, which the order keeps); the moves to announce once
    the XA transaction committed."""
    # The session joins the branch's transaction and never ends it: closing it (the unit
    # of work's exit) leaves the transaction to the coordinator.
    sessions = async_sessionmaker(bind=connection, expire_on_commit=False, autoflush=False)
    async with InventoryUnitOfWork(sessions) as uow:
        skus = [sku for sku, _ in lines]
        plans = plan_lines(lines, await uow.stock.lock_levels(skus))
        entries: list[Movement] = []
        for sku, _ in lines:
            for line in plans[sku]:
                held = await uow.stock.reserve(sku, line.warehouse_id, line.quantity, now=now)
                if not held or not await uow.stock.ship(
                    sku, line.warehouse_id, line.quantity, now=now
                ):
                    raise StockChangedUnderLock(f"level {sku}@{line.warehouse_id} changed")
            for kind in (MovementKind.RESERVATION, MovementKind.SALE):
                entries += line_movements(kind, sku=sku, lines=plans[sku], reservation_id=reference)
        await uow.movements.append(entries, now=now)
        await _record_sale(uow, xid=reference, lines=lines, plans=plans, now=now)
        thresholds = await uow.stock.thresholds(skus)
        return await record_low_stock(
            uow, availability_moves({sku: -quantity for sku, quantity in lines}, thresholds)
        )


async def _record_sale(
    uow: InventoryUnitOfWork,
    *,
    xid: str,
    lines: Sequence[tuple[str, int]],
    plans: Mapping[str, Sequence[Allocation]],
    now: datetime,
) -> None:
    """The reservations a TCC try and confirm of `xid` would leave: one per SKU, committed
    (the expiry job never takes it), with where its units came from."""
    owner = tcc_owner(xid)
    for sku, quantity in lines:
        sold = Reservation(str(uuid.uuid4()), sku, quantity, owner, now)
        await uow.reservations.add(sold, now=now, status=ReservationStatus.COMMITTED)
        await uow.reservations.add_lines(sold.id, plans[sku])
