"""What inventory's outbox (`inventory_outbox`) holds, decoded: for the inventory tests."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from ironcart.inventory.repository import inventory_outbox
from ironcart.platform.outbox import decode_event


@dataclass(frozen=True, slots=True)
class OutboxRow:
    event_type: str
    subject: str
    event: object
    published: bool


async def outbox_rows(engine: AsyncEngine, *, sku: str | None = None) -> list[OutboxRow]:
    """The committed rows in `seq` order (only those whose event is about `sku`, if given)."""
    table = inventory_outbox
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(
                table.c.event_type, table.c.subject, table.c.payload, table.c.published_at
            ).order_by(table.c.seq)
        )
        found = [
            OutboxRow(
                row.event_type,
                row.subject,
                decode_event(row.event_type, row.payload),
                row.published_at is not None,
            )
            for row in rows
        ]
    return [row for row in found if sku is None or getattr(row.event, "sku", None) == sku]


async def recorded(engine: AsyncEngine, *, sku: str | None = None) -> list[tuple[str, str, object]]:
    """(event_type, subject, event) of each row, as the tests compare them."""
    return [(row.event_type, row.subject, row.event) for row in await outbox_rows(engine, sku=sku)]
