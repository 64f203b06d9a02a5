"""Shipping's tables, their queries and the unit of work. Only this context touches `shipping_*`.

tables.py     the tables (declared on the shared metadata) and row mappers
zones.py      zones and their methods, versioned
shipments.py  what was shipped per order, shipments and their moves, tracking events, outbox
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.platform.database import UnitOfWork
from ironcart.shipping.repository.shipments import (
    SqlFulfilmentRepository,
    SqlOutbox,
    SqlShipmentRepository,
    SqlTrackingRepository,
)
from ironcart.shipping.repository.tables import shipping_outbox
from ironcart.shipping.repository.zones import SqlZoneRepository


class ShippingUnitOfWork(UnitOfWork):
    zones: SqlZoneRepository
    fulfilment: SqlFulfilmentRepository
    shipments: SqlShipmentRepository
    tracking: SqlTrackingRepository
    outbox: SqlOutbox

    def _open_repositories(self, session: AsyncSession) -> None:
        self.zones = SqlZoneRepository(session)
        self.fulfilment = SqlFulfilmentRepository(session)
        self.shipments = SqlShipmentRepository(session)
        self.tracking = SqlTrackingRepository(session)
        self.outbox = SqlOutbox(session)


__all__ = ["ShippingUnitOfWork", "shipping_outbox"]
