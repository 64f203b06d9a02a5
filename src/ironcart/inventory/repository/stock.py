"""Stock levels and per-SKU settings.

Stock is changed only by conditional UPDATEs checked by row count (the database decides,
never a value read earlier); callers lock rows in (sku, warehouse_id) order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from ironcart.inventory.domain import (
    DEFAULT_LOW_STOCK_THRESHOLD,
    SkuStock,
    StockLevel,
    Warehouse,
)
from ironcart.inventory.repository.tables import rowcount, sku_settings, stock_levels, warehouses


class SqlStockRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, sku: str) -> SkuStock:
        """The SKU's stock; its version (the ETag) is the sum of its rows' versions, 0 if none."""
        levels = await self.levels(sku)
        stored = await self.threshold(sku)
        threshold, settings_version = stored if stored else (DEFAULT_LOW_STOCK_THRESHOLD, 0)
        version = sum(level.version for level in levels) + settings_version
        return SkuStock(sku, tuple(levels), threshold, version)

    async def levels(self, sku: str, *, active_only: bool = False) -> list[StockLevel]:
        """The SKU's levels with their warehouses, in warehouse-id order."""
        query = (
            select(
                stock_levels.c.sku,
                stock_levels.c.warehouse_id,
                stock_levels.c.on_hand,
                stock_levels.c.reserved,
                stock_levels.c.version,
                warehouses.c.code,
                warehouses.c.name,
                warehouses.c.priority,
                warehouses.c.active,
            )
            .join(warehouses, warehouses.c.id == stock_levels.c.warehouse_id)
            .where(stock_levels.c.sku == sku)
            .order_by(stock_levels.c.warehouse_id)
        )
        if active_only:
            query = query.where(warehouses.c.active.is_(True))
        return [
            StockLevel(
                sku=row.sku,
                warehouse=Warehouse(
                    row.warehouse_id, row.code, row.name, row.priority, bool(row.active)
                ),
                on_hand=row.on_hand,
                reserved=row.reserved,
                version=row.version,
            )
            for row in await self._session.execute(query)
        ]

    async def lock_levels(self, skus: Sequence[str], *, lock: bool = True) -> list[StockLevel]:
        """The levels of several SKUs, locked (FOR UPDATE) in (sku, warehouse_id) order.

        Every multi-SKU change takes its row locks in that one order, so two of them never
        wait for each other in a cycle. Only level rows are locked: warehouses are read
        without a lock. SQLite has no FOR UPDATE (it has a single writer). `lock=False`
        reads the committed levels without waiting (a pre-check that may fail fast).
        """
        locked = (
            select(stock_levels)
            .where(stock_levels.c.sku.in_(list(skus)))
            .order_by(stock_levels.c.sku, stock_levels.c.warehouse_id)
        )
        if lock:
            locked = locked.with_for_update()
        rows = (await self._session.execute(locked)).all()
        if not rows:
            return []
        ids = sorted({row.warehouse_id for row in rows})
        found = await self._session.execute(select(warehouses).where(warehouses.c.id.in_(ids)))
        by_id = {
            row.id: Warehouse(row.id, row.code, row.name, row.priority, bool(row.active))
            for row in found
        }
        return [
            StockLevel(row.sku, by_id[row.warehouse_id], row.on_hand, row.reserved, row.version)
            for row in rows
        ]

    async def available(self, skus: Sequence[str]) -> dict[str, int]:
        """Sum of on_hand - reserved over active warehouses, for each SKU that has stock rows."""
        return await self._available(stock_levels.c.sku.in_(list(skus)))

    async def available_at(self, warehouse_id: str, *, lock: bool = False) -> dict[str, int]:
        """on_hand - reserved of every SKU with a level in `warehouse_id`.

        `lock`: FOR UPDATE, in SKU order (the (sku, warehouse_id) order of every lock taker).
        """
        query = (
            select(stock_levels.c.sku, stock_levels.c.on_hand - stock_levels.c.reserved)
            .where(stock_levels.c.warehouse_id == warehouse_id)
            .order_by(stock_levels.c.sku)
        )
        if lock:
            query = query.with_for_update()
        return {sku: int(units) for sku, units in await self._session.execute(query)}

    async def available_of_skus_at(self, warehouse_id: str) -> dict[str, int]:
        """`available` of every SKU with a level in `warehouse_id` (one query, no SKU list)."""
        skus = select(stock_levels.c.sku).where(stock_levels.c.warehouse_id == warehouse_id)
        return await self._available(stock_levels.c.sku.in_(skus))

    async def thresholds(self, skus: Sequence[str]) -> dict[str, int]:
        """Low-stock thresholds of the SKUs that have a settings row."""
        return await self._thresholds(sku_settings.c.sku.in_(list(skus)))

    async def thresholds_at(self, warehouse_id: str) -> dict[str, int]:
        """Thresholds of the SKUs with a level in `warehouse_id` (those with a settings row)."""
        skus = select(stock_levels.c.sku).where(stock_levels.c.warehouse_id == warehouse_id)
        return await self._thresholds(sku_settings.c.sku.in_(skus))

    async def _available(self, condition: ColumnElement[bool]) -> dict[str, int]:
        query = (
            select(stock_levels.c.sku, func.sum(stock_levels.c.on_hand - stock_levels.c.reserved))
            .join(warehouses, warehouses.c.id == stock_levels.c.warehouse_id)
            .where(condition, warehouses.c.active.is_(True))
            .group_by(stock_levels.c.sku)
        )
        return {sku: int(total or 0) for sku, total in await self._session.execute(query)}

    async def _thresholds(self, condition: ColumnElement[bool]) -> dict[str, int]:
        query = select(sku_settings.c.sku, sku_settings.c.low_stock_threshold).where(condition)
        return {sku: int(value) for sku, value in await self._session.execute(query)}

    async def insert_level(self, sku: str, warehouse_id: str, *, now: datetime) -> bool:
        """Create an empty level (0 on hand, nothing reserved); False if it already exists."""
        try:
            await self._session.execute(
                insert(stock_levels).values(
                    sku=sku,
                    warehouse_id=warehouse_id,
                    on_hand=0,
                    reserved=0,
                    version=1,
                    updated_at=now,
                )
            )
        except IntegrityError:
            return False
        return True

    async def insert_received(
        self, warehouse_id: str, quantities: Mapping[str, int], *, now: datetime
    ) -> None:
        """Create levels for new SKUs with their first receipt (bulk; for imports and seeding)."""
        await self._session.execute(
            insert(stock_levels),
            [
                {
                    "sku": sku,
                    "warehouse_id": warehouse_id,
                    "on_hand": quantity,
                    "reserved": 0,
                    "version": 1,
                    "updated_at": now,
                }
                for sku, quantity in quantities.items()
            ],
        )

    async def reserve(self, sku: str, warehouse_id: str, quantity: int, *, now: datetime) -> bool:
        """Hold `quantity` units if (and only if) they are free right now."""
        return await self._change(
            sku,
            warehouse_id,
            now=now,
            condition=stock_levels.c.on_hand - stock_levels.c.reserved >= quantity,
            reserved=stock_levels.c.reserved + quantity,
        )

    async def unreserve(self, sku: str, warehouse_id: str, quantity: int, *, now: datetime) -> bool:
        """Give back held units (release or expiry)."""
        return await self._change(
            sku,
            warehouse_id,
            now=now,
            condition=stock_levels.c.reserved >= quantity,
            reserved=stock_levels.c.reserved - quantity,
        )

    async def ship(self, sku: str, warehouse_id: str, quantity: int, *, now: datetime) -> bool:
        """Held units leave the warehouse (a sale): on_hand and reserved both drop."""
        return await self._change(
            sku,
            warehouse_id,
            now=now,
            condition=stock_levels.c.reserved >= quantity,
            on_hand=stock_levels.c.on_hand - quantity,
            reserved=stock_levels.c.reserved - quantity,
        )

    async def add_on_hand(self, sku: str, warehouse_id: str, delta: int, *, now: datetime) -> bool:
        """Add `delta` (may be negative) unless on_hand would fall below what is reserved."""
        return await self._change(
            sku,
            warehouse_id,
            now=now,
            condition=stock_levels.c.on_hand + delta >= stock_levels.c.reserved,
            on_hand=stock_levels.c.on_hand + delta,
        )

    async def set_on_hand(
        self, sku: str, warehouse_id: str, on_hand: int, *, version: int, now: datetime
    ) -> bool:
        """Set on_hand if the row is still at `version` and covers what is reserved."""
        return await self._change(
            sku,
            warehouse_id,
            now=now,
            condition=(stock_levels.c.version == version) & (stock_levels.c.reserved <= on_hand),
            on_hand=on_hand,
        )

    async def _change(
        self, sku: str, warehouse_id: str, *, now: datetime, condition: object, **values: object
    ) -> bool:
        result = await self._session.execute(
            update(stock_levels)
            .where(
                stock_levels.c.sku == sku,
                stock_levels.c.warehouse_id == warehouse_id,
                condition,  # type: ignore[arg-type]
            )
            .values(version=stock_levels.c.version + 1, updated_at=now, **values)
        )
        return rowcount(result) == 1

    async def threshold(self, sku: str) -> tuple[int, int] | None:
        """(low-stock threshold, version) of the SKU's settings row, if it has one."""
        query = select(sku_settings.c.low_stock_threshold, sku_settings.c.version).where(
            sku_settings.c.sku == sku
        )
        row = (await self._session.execute(query)).first()
        return None if row is None else (int(row[0]), int(row[1]))

    async def set_threshold(
        self, sku: str, threshold: int, *, version: int | None, now: datetime
    ) -> bool:
        """Insert the settings row (version None) or update it if still at `version`."""
        if version is None:
            try:
                await self._session.execute(
                    insert(sku_settings).values(
                        sku=sku, low_stock_threshold=threshold, version=1, updated_at=now
                    )
                )
            except IntegrityError:
                return False
            return True
        result = await self._session.execute(
            update(sku_settings)
            .where(sku_settings.c.sku == sku, sku_settings.c.version == version)
            .values(low_stock_threshold=threshold, version=version + 1, updated_at=now)
        )
        return rowcount(result) == 1
