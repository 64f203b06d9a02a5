"""Warehouses and the append-only movement ledger."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import exists, func, insert, literal, select, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.inventory.domain import Discrepancy, Movement, Warehouse, WarehouseCodeTaken
from ironcart.inventory.repository.tables import movements, stock_levels, warehouses


def _warehouse(row: object) -> Warehouse:
    return Warehouse(
        id=row.id,  # type: ignore[attr-defined]
        code=row.code,  # type: ignore[attr-defined]
        name=row.name,  # type: ignore[attr-defined]
        priority=row.priority,  # type: ignore[attr-defined]
        active=bool(row.active),  # type: ignore[attr-defined]
    )


class SqlWarehouseRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, warehouse: Warehouse, *, now: datetime) -> None:
        """Insert a warehouse; `WarehouseCodeTaken` if the unique code index refuses it."""
        try:
            await self._session.execute(
                insert(warehouses).values(
                    id=warehouse.id,
                    code=warehouse.code,
                    name=warehouse.name,
                    priority=warehouse.priority,
                    active=warehouse.active,
                    created_at=now,
                    updated_at=now,
                )
            )
        except IntegrityError:
            raise WarehouseCodeTaken(f"A warehouse with code {warehouse.code!r} exists.") from None

    async def list(self) -> list[Warehouse]:
        query = select(warehouses).order_by(warehouses.c.priority, warehouses.c.code)
        return [_warehouse(row) for row in await self._session.execute(query)]

    async def get_by_code(self, code: str) -> Warehouse | None:
        query = select(warehouses).where(warehouses.c.code == code)
        row = (await self._session.execute(query)).first()
        return None if row is None else _warehouse(row)

    async def by_codes(self, codes: Iterable[str]) -> dict[str, Warehouse]:
        query = select(warehouses).where(warehouses.c.code.in_(list(codes)))
        return {row.code: _warehouse(row) for row in await self._session.execute(query)}

    async def update(self, warehouse: Warehouse, *, now: datetime) -> None:
        await self._session.execute(
            update(warehouses)
            .where(warehouses.c.id == warehouse.id)
            .values(
                name=warehouse.name,
                priority=warehouse.priority,
                active=warehouse.active,
                updated_at=now,
            )
        )


class SqlMovementRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def append(self, entries: Sequence[Movement], *, now: datetime) -> None:
        """Append ledger rows. The ledger is never updated or deleted."""
        if not entries:
            return
        await self._session.execute(
            insert(movements),
            [
                {
                    "sku": entry.sku,
                    "warehouse_id": entry.warehouse_id,
                    "kind": entry.kind.value,
                    "on_hand_delta": entry.on_hand_delta,
                    "reserved_delta": entry.reserved_delta,
                    "reason": entry.reason,
                    "reference": entry.reference,
                    "created_at": now,
                }
                for entry in entries
            ],
        )

    async def reconcile(self) -> list[Discrepancy]:
        """Levels whose values differ from the sums of their ledger rows, in one statement.

        One statement reads one snapshot on every backend, so concurrent changes (level and
        ledger rows are written in the same transaction) never show as false discrepancies.
        """
        ledger = (
            select(
                movements.c.sku,
                movements.c.warehouse_id,
                func.sum(movements.c.on_hand_delta).label("on_hand"),
                func.sum(movements.c.reserved_delta).label("reserved"),
            )
            .group_by(movements.c.sku, movements.c.warehouse_id)
            .subquery()
        )
        on_level = (ledger.c.sku == stock_levels.c.sku) & (
            ledger.c.warehouse_id == stock_levels.c.warehouse_id
        )
        with_levels = select(
            stock_levels.c.sku,
            stock_levels.c.warehouse_id,
            stock_levels.c.on_hand,
            stock_levels.c.reserved,
            func.coalesce(ledger.c.on_hand, 0),
            func.coalesce(ledger.c.reserved, 0),
        ).select_from(stock_levels.outerjoin(ledger, on_level))
        orphans = select(
            ledger.c.sku,
            ledger.c.warehouse_id,
            literal(0),
            literal(0),
            ledger.c.on_hand,
            ledger.c.reserved,
        ).where(~exists().where(on_level))
        rows = await self._session.execute(union_all(with_levels, orphans))
        found = [Discrepancy(row[0], row[1], *(int(value) for value in row[2:])) for row in rows]
        wrong = [
            item
            for item in found
            if (item.on_hand, item.reserved) != (item.ledger_on_hand, item.ledger_reserved)
        ]
        return sorted(wrong, key=lambda item: (item.sku, item.warehouse_id))
