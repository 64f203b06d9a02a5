"""The inbox: a consumer remembers the event ids it has applied, so a redelivery is a no-op.

The bus delivers at least once (a relay republishes after a crash, JetStream redelivers an
unacknowledged message). A consumer context declares `inbox_table(metadata, "<context>")`
and applies each event inside one transaction:

    async with uow:
        if await first_delivery(uow.session, inbox, consumer="ordering", event_id=event_id):
            ...  # the effect
        await uow.commit()

The inbox row and the effect commit or roll back together, so the effect happens exactly
once per (consumer, event id). The insert is an insert-if-absent on the primary key: two
concurrent deliveries of one event serialise on that key and only one of them sees `True`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, MetaData, String, Table, delete
from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.platform.database import Timestamp, insert_if_absent


def inbox_table(metadata: MetaData, prefix: str) -> Table:
    """The inbox of one consumer context, named `<prefix>_inbox`."""
    return Table(
        f"{prefix}_inbox",
        metadata,
        Column("consumer", String(100), primary_key=True),
        Column("event_id", String(36), primary_key=True),
        Column("processed_at", Timestamp, nullable=False),
    )


async def first_delivery(
    session: AsyncSession, table: Table, *, consumer: str, event_id: str
) -> bool:
    """Record the event as seen by `consumer`: `True` the first time, `False` on a repeat."""
    result = await session.execute(
        insert_if_absent(session, table).values(
            consumer=consumer, event_id=event_id, processed_at=datetime.now(UTC)
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def forget_before(session: AsyncSession, table: Table, *, before: datetime) -> int:
    """Retention: drop inbox rows processed before `before` (keep them longer than any
    redelivery or relay replay can arrive, i.e. beyond the stream's duplicate window and
    the consumer's redelivery horizon)."""
    result = await session.execute(delete(table).where(table.c.processed_at < before))
    return int(result.rowcount)  # type: ignore[attr-defined]
