"""Zones and their methods: read whole, replaced whole, guarded by the zone's version."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import Any

import orjson
from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.shipping.domain import ShippingMethod, Zone
from ironcart.shipping.repository.tables import (
    encode_bands,
    method_of,
    methods,
    minor_or_none,
    rowcount,
    zone_of,
    zones,
)


class SqlZoneRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, zone: Zone, *, now: datetime) -> None:
        await self._session.execute(
            insert(zones).values(
                id=zone.id,
                name=zone.name,
                countries=orjson.dumps(list(zone.countries)).decode(),
                postal_prefixes=orjson.dumps(list(zone.postal_prefixes)).decode(),
                version=zone.version,
                created_at=now,
                updated_at=now,
            )
        )
        await self._add_methods(zone.id, zone.methods)

    async def replace(self, zone: Zone, *, expected_version: int, now: datetime) -> bool:
        """Overwrite the zone and its methods if it still has `expected_version`."""
        result = await self._session.execute(
            update(zones)
            .where(zones.c.id == zone.id, zones.c.version == expected_version)
            .values(
                name=zone.name,
                countries=orjson.dumps(list(zone.countries)).decode(),
                postal_prefixes=orjson.dumps(list(zone.postal_prefixes)).decode(),
                version=zones.c.version + 1,
                updated_at=now,
            )
        )
        if rowcount(result) != 1:
            return False
        await self._session.execute(delete(methods).where(methods.c.zone_id == zone.id))
        await self._add_methods(zone.id, zone.methods)
        return True

    async def remove(self, zone_id: str, *, expected_version: int) -> bool:
        version = await self._session.scalar(select(zones.c.version).where(zones.c.id == zone_id))
        if version != expected_version:
            return False
        # Methods first: SQLite enforces ON DELETE CASCADE only with foreign keys on.
        await self._session.execute(delete(methods).where(methods.c.zone_id == zone_id))
        result = await self._session.execute(
            delete(zones).where(zones.c.id == zone_id, zones.c.version == expected_version)
        )
        return rowcount(result) == 1

    async def _add_methods(self, zone_id: str, zone_methods: tuple[ShippingMethod, ...]) -> None:
        rows = [
            {
                "zone_id": zone_id,
                "code": method.code,
                "position": position,
                "name": method.name,
                "currency": method.currency,
                "bands": encode_bands(method),
                "free_over_minor": minor_or_none(method.free_over),
            }
            for position, method in enumerate(zone_methods)
        ]
        await self._session.execute(insert(methods), rows)

    async def get(self, zone_id: str) -> Zone | None:
        found = await self._zones(zones.c.id == zone_id)
        return found[0] if found else None

    async def name_taken(self, name: str, *, other_than: str | None = None) -> bool:
        query = select(zones.c.id).where(zones.c.name == name)
        if other_than is not None:
            query = query.where(zones.c.id != other_than)
        return (await self._session.scalar(query.limit(1))) is not None

    async def all(self) -> list[Zone]:
        """Every zone with its methods, by name (zones are tens, not thousands)."""
        return await self._zones(None)

    async def _zones(self, condition: object) -> list[Zone]:
        """Zones with their methods in one statement (one snapshot: a concurrent replace
        never pairs a zone with the methods of another of its versions)."""
        method_columns = [column.label(f"method_{column.name}") for column in methods.c]
        query = (
            select(zones, *method_columns)
            .outerjoin(methods, methods.c.zone_id == zones.c.id)
            .order_by(zones.c.name, zones.c.id, methods.c.position)
        )
        if condition is not None:
            query = query.where(condition)  # type: ignore[arg-type]
        found: dict[str, tuple[Row[Any], list[ShippingMethod]]] = {}
        for row in await self._session.execute(query):
            zone_methods = found.setdefault(row.id, (row, []))[1]
            if row.method_code is not None:  # the outer join's empty side: no method
                zone_methods.append(method_of(_method_row(row)))
        return [zone_of(row, zone_methods) for row, zone_methods in found.values()]


def _method_row(row: Row[Any]) -> SimpleNamespace:
    """The method's columns of a joined row, under their own names (what `method_of` reads)."""
    return SimpleNamespace(
        **{column.name: getattr(row, f"method_{column.name}") for column in methods.c}
    )
