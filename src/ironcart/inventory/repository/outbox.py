"""Inventory's outbox: events recorded in the transaction of the stock change they describe."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.inventory.repository.tables import inventory_outbox
from ironcart.platform.outbox import record

SUBJECT_PREFIX = "inventory"


class SqlOutbox:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def record(self, event: object) -> str:
        """Into the outbox, on subject `inventory.<EventType>` (under the bus prefix)."""
        subject = f"{SUBJECT_PREFIX}.{type(event).__name__}"
        return await record(self._session, inventory_outbox, event, subject=subject)
