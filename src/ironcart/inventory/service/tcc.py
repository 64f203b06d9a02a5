"""Inventory as a TCC participant of checkout: try = reserve, confirm = sell, cancel = release.

Each attempt is one transaction that starts with the fence (`platform.txn.fence`), so the
fence row and the stock it guards commit or roll back together; a retried attempt moves
the fence again. The reservations of global transaction `xid` belong to `tcc:<xid>`, one
per SKU.

Lock order, the same in every stock change: fence row, then reservation rows, then level
rows in (sku, warehouse_id) order (`SELECT ... FOR UPDATE` where a plan depends on them).
Every step runs at READ COMMITTED (`InventoryUnitOfWork.read_committed`), so its reads see
what racing steps committed and MariaDB takes no gap locks on missing fence keys. A try,
and a confirm that takes expired units again, record `StockLow` in the outbox before their
commit, under those level locks (`events.record_low_stock`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from ironcart.contracts.inventory import Reservation
from ironcart.inventory.domain import (
    Allocation,
    ConfirmStep,
    InsufficientStock,
    Movement,
    MovementKind,
    ReservationExpired,
    ReservationRecord,
    ReservationStatus,
    confirm_step,
    line_movements,
    plan_lines,
    tcc_owner,
)
from ironcart.inventory.events import AvailabilityMove, record_low_stock
from ironcart.inventory.repository import InventoryUnitOfWork
from ironcart.inventory.service.reservations import LOST, Lost, availability_moves, unreserve

BRANCH = "inventory"
# A cancelled paid order puts its sold units back once: its own fence branch.
RETURN_BRANCH = "return"

Sold = list[tuple[ReservationRecord, Sequence[Allocation]]]


def _contract(record: ReservationRecord) -> Reservation:
    return Reservation(record.id, record.sku, record.quantity, record.owner, record.expires_at)


class TccAttempts:
    def __init__(
        self, uow_factory: Callable[[], InventoryUnitOfWork], clock: Callable[[], datetime]
    ) -> None:
        self._uow = uow_factory
        self._clock = clock

    async def try_reserve(
        self, xid: str, lines: Sequence[tuple[str, int]], ttl_seconds: int
    ) -> tuple[list[Reservation], list[AvailabilityMove]] | Lost:
        """`lines` are merged and in SKU order (`domain.merge_lines`)."""
        owner = tcc_owner(xid)
        async with self._uow() as uow:
            await uow.read_committed()
            if not await uow.fences.begin_try(xid, branch=BRANCH):
                return [_contract(record) for record in await uow.reservations.by_owner(owner)], []
            skus = [sku for sku, _ in lines]
            # Visibly short (a sold-out SKU under a crowd): refuse without queueing for the
            # row locks. Enough: lock and plan again on the locked rows, which decide.
            plan_lines(lines, await uow.stock.lock_levels(skus, lock=False))
            # Locked, so the plan holds until the commit: concurrent checkouts queue here
            # instead of losing conditional UPDATEs and running again.
            levels = await uow.stock.lock_levels(skus)
            plans = plan_lines(lines, levels)
            now = self._clock()
            expires_at = now + timedelta(seconds=ttl_seconds)
            held = [
                Reservation(str(uuid.uuid4()), sku, quantity, owner, expires_at)
                for sku, quantity in lines
            ]
            if not await _hold(uow, held, plans, now):
                return LOST
            thresholds = await uow.stock.thresholds([sku for sku, _ in lines])
            moves = await record_low_stock(
                uow, availability_moves({sku: -quantity for sku, quantity in lines}, thresholds)
            )
            await uow.commit()
        return held, moves

    async def confirm(self, xid: str) -> list[AvailabilityMove] | Lost:
        """Sell every reservation of the try (see `domain.confirm_step` for expired ones)."""
        async with self._uow() as uow:
            await uow.read_committed()
            if not await uow.fences.begin_confirm(xid, branch=BRANCH):
                return []
            records = await uow.reservations.by_owner(tcc_owner(xid))
            steps = {record.id: confirm_step(record.status) for record in records}
            now = self._clock()
            sold: Sold = []
            for record in records:
                if steps[record.id] is not ConfirmStep.SELL:
                    continue
                if not await uow.reservations.transition(
                    record.id, ReservationStatus.COMMITTED, now=now
                ):
                    return LOST  # the expiry job got there first: the next attempt retakes
                sold.append((record, record.lines))
            retaken = [record for record in records if steps[record.id] is ConfirmStep.RETAKE]
            moves: list[AvailabilityMove] = []
            if retaken:
                result = await self._retake(uow, retaken, sold, now)
                if isinstance(result, Lost):
                    return result
                moves = result
            await _ship(uow, sold, now)
            await uow.commit()
        return moves

    async def cancel(self, xid: str) -> list[AvailabilityMove] | Lost:
        """Release every active reservation of the try (expired ones gave their units back)."""
        async with self._uow() as uow:
            await uow.read_committed()
            if not await uow.fences.begin_cancel(xid, branch=BRANCH):
                await uow.commit()  # an empty rollback is recorded: a late try is suspended
                return []
            records = await uow.reservations.by_owner(tcc_owner(xid))
            active = [record for record in records if record.status is ReservationStatus.ACTIVE]
            now = self._clock()
            for record in active:
                if not await uow.reservations.transition(
                    record.id, ReservationStatus.RELEASED, now=now
                ):
                    return LOST  # the expiry job got there first
            freed = await unreserve(
                uow,
                {record.id: record.sku for record in active},
                {record.id: record.lines for record in active},
                MovementKind.RELEASE,
                now,
            )
            thresholds = await uow.stock.thresholds(list(freed))
            await uow.commit()
        return availability_moves(freed, thresholds)

    async def return_sale(self, xid: str) -> list[AvailabilityMove] | Lost:
        """Put the units checkout `xid` sold back into the warehouses they left, once."""
        async with self._uow() as uow:
            await uow.read_committed()
            if not await uow.fences.begin_try(xid, branch=RETURN_BRANCH):
                return []  # returned before
            records = await uow.reservations.by_owner(tcc_owner(xid))
            sold = [record for record in records if record.status is ReservationStatus.COMMITTED]
            now = self._clock()
            entries: list[Movement] = []
            returned: dict[str, int] = {}
            for record in sorted(sold, key=lambda r: r.sku):
                for line in sorted(record.lines, key=lambda a: a.warehouse_id):
                    if not await uow.stock.add_on_hand(
                        record.sku, line.warehouse_id, line.quantity, now=now
                    ):
                        return LOST
                    entries.append(
                        Movement(
                            record.sku,
                            line.warehouse_id,
                            MovementKind.RETURN,
                            line.quantity,
                            0,
                            record.id,
                            "order cancelled",
                        )
                    )
                returned[record.sku] = returned.get(record.sku, 0) + record.quantity
            await uow.movements.append(entries, now=now)
            thresholds = await uow.stock.thresholds(list(returned))
            await uow.commit()
        return availability_moves(returned, thresholds)

    async def _retake(
        self,
        uow: InventoryUnitOfWork,
        retaken: Sequence[ReservationRecord],
        sold: Sold,
        now: datetime,
    ) -> list[AvailabilityMove] | Lost:
        """Hold again the units of expired reservations, if free; add them to `sold`.

        `ReservationExpired` (naming the SKUs) when they are not: the confirm rolls back
        and its fence stays `tried`, so the coordinator may retry it or cancel.
        """
        for record in retaken:
            if not await uow.reservations.transition(
                record.id, ReservationStatus.COMMITTED, now=now, source=ReservationStatus.EXPIRED
            ):
                return LOST
        skus = sorted({record.sku for record in retaken} | {record.sku for record, _ in sold})
        levels = await uow.stock.lock_levels(skus)
        try:
            plans = plan_lines([(record.sku, record.quantity) for record in retaken], levels)
        except InsufficientStock as short:
            raise ReservationExpired(
                "Reservations of this transaction expired and their stock has been taken since.",
                skus=[item.sku for item in short.items],
            ) from None
        entries: list[Movement] = []
        for record in retaken:
            plan = plans[record.sku]
            for line in plan:
                if not await uow.stock.reserve(
                    record.sku, line.warehouse_id, line.quantity, now=now
                ):
                    return LOST
            await uow.reservations.replace_lines(record.id, plan)
            entries += line_movements(
                MovementKind.RESERVATION, sku=record.sku, lines=plan, reservation_id=record.id
            )
            sold.append((record, plan))
        await uow.movements.append(entries, now=now)
        thresholds = await uow.stock.thresholds([record.sku for record in retaken])
        return await record_low_stock(
            uow,
            availability_moves({record.sku: -record.quantity for record in retaken}, thresholds),
        )


async def _hold(
    uow: InventoryUnitOfWork,
    held: Sequence[Reservation],
    plans: Mapping[str, Sequence[Allocation]],
    now: datetime,
) -> bool:
    """Reserve each planned line, in (sku, warehouse_id) order, and record the reservations
    with their ledger rows; False if a conditional UPDATE found its units gone."""
    entries: list[Movement] = []
    for reservation in held:
        plan = plans[reservation.sku]
        for line in plan:
            if not await uow.stock.reserve(
                reservation.sku, line.warehouse_id, line.quantity, now=now
            ):
                return False
        entries += line_movements(
            MovementKind.RESERVATION, sku=reservation.sku, lines=plan, reservation_id=reservation.id
        )
    for reservation in held:
        await uow.reservations.add(reservation, now=now)
        await uow.reservations.add_lines(reservation.id, plans[reservation.sku])
    await uow.movements.append(entries, now=now)
    return True


async def _ship(uow: InventoryUnitOfWork, sold: Sold, now: datetime) -> None:
    """The sold units leave their levels, once per (sku, warehouse), in that order."""
    totals: dict[tuple[str, str], int] = {}
    entries: list[Movement] = []
    for record, lines in sold:
        entries += line_movements(
            MovementKind.SALE, sku=record.sku, lines=lines, reservation_id=record.id
        )
        for line in lines:
            key = (record.sku, line.warehouse_id)
            totals[key] = totals.get(key, 0) + line.quantity
    for (sku, warehouse_id), quantity in sorted(totals.items()):
        if not await uow.stock.ship(sku, warehouse_id, quantity, now=now):
            raise RuntimeError(f"level {sku}@{warehouse_id} holds fewer units than its lines")
    await uow.movements.append(entries, now=now)
