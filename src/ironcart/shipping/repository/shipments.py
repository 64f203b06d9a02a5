"""Shipments, the quantities shipped per order and SKU, tracking events, the outbox.

Over-shipping is impossible by construction: a shipment holds its quantities with one
conditional UPDATE per SKU (`shipped + q <= ordered`, in SKU order so two shipments of one
order never deadlock), checked by row count. Status moves are conditional on the version read.
What counts as shipped for the order (`fully_shipped`) is what labelled shipments hold: a
shipment still waiting for the carrier may yet fail and give its quantities back.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, case, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.platform.database import insert_if_absent
from ironcart.platform.outbox import record
from ironcart.shipping.domain import Shipment, ShipmentStatus, TrackingEvent
from ironcart.shipping.repository.tables import (
    order_lines,
    orders,
    rowcount,
    shipment_lines,
    shipment_of,
    shipments,
    shipping_outbox,
    tracking_event_of,
    tracking_events,
)

S = ShipmentStatus


class SqlFulfilmentRepository:
    """What was ordered and what is on shipments, per order and SKU."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def ensure_order(
        self, *, order_id: str, customer_id: str, lines: Sequence[tuple[str, int]], now: datetime
    ) -> None:
        """Record the order's lines the first time one of its shipments is made."""
        inserted = await self._session.execute(
            insert_if_absent(self._session, orders).values(
                order_id=order_id, customer_id=customer_id, version=1, created_at=now
            )
        )
        if rowcount(inserted) == 1:
            await self._session.execute(
                insert(order_lines),
                [
                    {
                        "order_id": order_id,
                        "sku": sku,
                        "ordered": quantity,
                        "shipped": 0,
                        "labelled": 0,
                    }
                    for sku, quantity in lines
                ],
            )

    async def quantities(self, order_id: str) -> tuple[dict[str, int], dict[str, int]]:
        """(ordered, shipped) per SKU."""
        rows = await self._session.execute(
            select(order_lines.c.sku, order_lines.c.ordered, order_lines.c.shipped).where(
                order_lines.c.order_id == order_id
            )
        )
        ordered: dict[str, int] = {}
        shipped: dict[str, int] = {}
        for sku, ordered_quantity, shipped_quantity in rows:
            ordered[sku] = int(ordered_quantity)
            shipped[sku] = int(shipped_quantity)
        return ordered, shipped

    async def hold(self, order_id: str, sku: str, quantity: int) -> bool:
        """Put `quantity` more of `sku` on a shipment; False if that much is not left."""
        table = order_lines
        result = await self._session.execute(
            update(table)
            .where(
                table.c.order_id == order_id,
                table.c.sku == sku,
                table.c.shipped + quantity <= table.c.ordered,
            )
            .values(shipped=table.c.shipped + quantity)
        )
        return rowcount(result) == 1

    async def release(self, order_id: str, sku: str, quantity: int) -> None:
        """Give back what a shipment that never left held."""
        table = order_lines
        await self._session.execute(
            update(table)
            .where(table.c.order_id == order_id, table.c.sku == sku, table.c.shipped >= quantity)
            .values(shipped=table.c.shipped - quantity)
        )

    async def label(self, order_id: str, sku: str, quantity: int) -> None:
        """Count `quantity` of `sku`, held by a shipment the carrier just labelled, as shipped."""
        table = order_lines
        await self._session.execute(
            update(table)
            .where(
                table.c.order_id == order_id,
                table.c.sku == sku,
                table.c.labelled + quantity <= table.c.shipped,
            )
            .values(labelled=table.c.labelled + quantity)
        )

    async def fully_shipped(self, order_id: str) -> bool:
        """Every ordered unit is on a labelled shipment (one still waiting for the carrier may
        fail). A locking read: under MariaDB's repeatable read a plain one would see the
        transaction's snapshot, not what others committed."""
        rows = await self._session.execute(
            select(order_lines.c.ordered, order_lines.c.labelled)
            .where(order_lines.c.order_id == order_id)
            .with_for_update()
        )
        return all(int(labelled) >= int(ordered) for ordered, labelled in rows)

    async def take_turn(self, order_id: str) -> None:
        """Lock the order's row until commit: labels and deliveries of its shipments go one at
        a time, so the last one sees every other (and exactly one says fully shipped, one
        `all_delivered`)."""
        await self._session.execute(
            update(orders).where(orders.c.order_id == order_id).values(version=orders.c.version + 1)
        )


class SqlShipmentRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, shipment: Shipment) -> None:
        await self._session.execute(
            insert(shipments).values(
                id=shipment.id,
                order_id=shipment.order_id,
                customer_id=shipment.customer_id,
                carrier=shipment.carrier,
                carrier_shipment_id=None,
                tracking_number=None,
                label_url=None,
                status=shipment.status.value,
                status_rank=shipment.status_rank,
                status_at=None,
                failure_code=None,
                version=shipment.version,
                created_at=shipment.created_at,
                updated_at=shipment.updated_at,
            )
        )
        await self._session.execute(
            insert(shipment_lines),
            [
                {"shipment_id": shipment.id, "sku": sku, "quantity": quantity}
                for sku, quantity in shipment.lines
            ],
        )

    async def attach_label(
        self,
        shipment_id: str,
        *,
        carrier_shipment_id: str,
        tracking_number: str,
        label_url: str | None,
        now: datetime,
    ) -> bool:
        """Record the carrier's label; `requested` becomes `created` (a carrier event may have
        moved it on already). False if the shipment failed, or was labelled, meanwhile."""
        table = shipments
        requested = table.c.status == S.REQUESTED.value
        result = await self._session.execute(
            update(table)
            .where(
                table.c.id == shipment_id,
                table.c.status != S.FAILED.value,
                table.c.carrier_shipment_id.is_(None),
            )
            # MariaDB assigns left to right, each assignment seeing the ones before it: the
            # rank must be computed while `status` is still the old one.
            .ordered_values(
                (table.c.status_rank, case((requested, 0), else_=table.c.status_rank)),
                (table.c.status, case((requested, S.CREATED.value), else_=table.c.status)),
                (table.c.carrier_shipment_id, carrier_shipment_id),
                (table.c.tracking_number, tracking_number),
                (table.c.label_url, label_url),
                (table.c.version, table.c.version + 1),
                (table.c.updated_at, now),
            )
        )
        return rowcount(result) == 1

    async def fail(self, shipment_id: str, *, failure_code: str, now: datetime) -> bool:
        """`requested` -> `failed`; False if the carrier's answer or an event came first."""
        table = shipments
        result = await self._session.execute(
            update(table)
            .where(table.c.id == shipment_id, table.c.status == S.REQUESTED.value)
            .values(
                status=S.FAILED.value,
                failure_code=failure_code[:64],
                version=table.c.version + 1,
                updated_at=now,
            )
        )
        return rowcount(result) == 1

    async def move(
        self,
        shipment: Shipment,
        status: ShipmentStatus,
        rank: int,
        *,
        status_at: datetime,
        now: datetime,
    ) -> bool:
        """Apply a carrier event's move if nothing changed the shipment since it was read."""
        table = shipments
        result = await self._session.execute(
            update(table)
            .where(table.c.id == shipment.id, table.c.version == shipment.version)
            .values(
                status=status.value,
                status_rank=rank,
                status_at=status_at,
                version=table.c.version + 1,
                updated_at=now,
            )
        )
        return rowcount(result) == 1

    async def get(self, shipment_id: str, *, with_history: bool = False) -> Shipment | None:
        found = await self._shipments(shipments.c.id == shipment_id, with_history=with_history)
        return found[0] if found else None

    async def find_for_carrier(
        self, carrier: str, *, carrier_shipment_id: str, reference: str
    ) -> Shipment | None:
        """By the carrier's id, else by the reference we gave it (our id) before its answer."""
        by_carrier_id = and_(
            shipments.c.carrier == carrier,
            shipments.c.carrier_shipment_id == carrier_shipment_id,
        )
        found = await self._shipments(by_carrier_id, with_history=False)
        if not found and reference:
            found = await self._shipments(
                and_(shipments.c.id == reference, shipments.c.carrier == carrier),
                with_history=False,
            )
        return found[0] if found else None

    async def list_for_order(self, order_id: str) -> list[Shipment]:
        return await self._shipments(shipments.c.order_id == order_id, with_history=True)

    async def unlabelled(self, *, created_before: datetime, limit: int) -> list[Shipment]:
        """Shipments still without the carrier's label (not failed), oldest first."""
        ids = (
            select(shipments.c.id)
            .where(
                shipments.c.carrier_shipment_id.is_(None),
                shipments.c.status != S.FAILED.value,
                shipments.c.created_at < created_before,
            )
            .order_by(shipments.c.created_at, shipments.c.id)
            .limit(limit)
        )
        chosen = list(await self._session.scalars(ids))
        if not chosen:
            return []
        return await self._shipments(shipments.c.id.in_(chosen), with_history=False)

    async def all_delivered(self, order_id: str) -> bool:
        """Every shipment of the order that did not fail is delivered: with `fully_shipped`
        (everything labelled) no shipment is left waiting for the carrier, so these are the
        labelled ones. A locking read, for the reason `fully_shipped` gives."""
        statuses = await self._session.scalars(
            select(shipments.c.status).where(shipments.c.order_id == order_id).with_for_update()
        )
        return all(status in {S.DELIVERED.value, S.FAILED.value} for status in statuses)

    async def _shipments(self, condition: object, *, with_history: bool) -> list[Shipment]:
        query = select(shipments).where(condition).order_by(shipments.c.created_at, shipments.c.id)  # type: ignore[arg-type]
        rows = list(await self._session.execute(query))
        if not rows:
            return []
        ids = [row.id for row in rows]
        lines: dict[str, list[tuple[str, int]]] = {}
        line_query = (
            select(shipment_lines)
            .where(shipment_lines.c.shipment_id.in_(ids))
            .order_by(shipment_lines.c.shipment_id, shipment_lines.c.sku)
        )
        for line in await self._session.execute(line_query):
            lines.setdefault(line.shipment_id, []).append((line.sku, int(line.quantity)))
        history: dict[str, list[TrackingEvent]] = {}
        if with_history:
            event_query = (
                select(tracking_events)
                .where(tracking_events.c.shipment_id.in_(ids))
                .order_by(tracking_events.c.occurred_at, tracking_events.c.event_id)
            )
            for event in await self._session.execute(event_query):
                history.setdefault(event.shipment_id, []).append(tracking_event_of(event))
        return [
            shipment_of(row, tuple(lines.get(row.id, [])), tuple(history.get(row.id, [])))
            for row in rows
        ]


class SqlTrackingRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add_if_absent(
        self,
        *,
        carrier: str,
        event_id: str,
        shipment_id: str | None,
        status: ShipmentStatus,
        occurred_at: datetime,
        location: str | None,
        now: datetime,
    ) -> bool:
        """Remember a carrier event; False when it was seen before (a duplicate delivery)."""
        result = await self._session.execute(
            insert_if_absent(self._session, tracking_events).values(
                carrier=carrier,
                event_id=event_id,
                shipment_id=shipment_id,
                status=status.value,
                occurred_at=occurred_at,
                location=location,
                applied=False,
                received_at=now,
            )
        )
        return rowcount(result) == 1

    async def mark_applied(self, *, carrier: str, event_id: str) -> None:
        await self._session.execute(
            update(tracking_events)
            .where(tracking_events.c.carrier == carrier, tracking_events.c.event_id == event_id)
            .values(applied=True)
        )


class SqlOutbox:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def record(self, event: object) -> str:
        """Into the outbox, on subject `shipping.<EventType>` (under the bus prefix)."""
        subject = f"shipping.{type(event).__name__}"
        return await record(self._session, shipping_outbox, event, subject=subject)
