"""Shipping's use cases: shipments (staff create, customers track) and carrier webhooks; zones
(staff) and quotes (anyone, and checkout through the client port) in `zoning.py`.

Nothing leaves inside an open transaction: a shipment is stored `requested` with its
quantities held (transaction 1), the carrier is asked, then the label is recorded with the
`ShipmentCreated` event (transaction 2) — or, if the carrier refused, the shipment is
`failed` and its quantities are given back. If the carrier could not be reached (or we
crashed before its answer was recorded) the outcome is unknown: the shipment stays
`requested`, holding its quantities, and `resume_requested` asks the carrier again with the
same idempotency key until it labels or refuses it. Only labelled shipments count towards
`order_fully_shipped`. A transaction that lost to a
deadlock, a serialization failure or SQLite's busy timeout, or to a concurrent move of the
same shipment, is run again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

import structlog
from sqlalchemy.exc import DBAPIError

import ironcart.shipping.events  # noqa: F401 - registers the events the outbox carries
from ironcart.contracts.ordering import OrderForFulfilment
from ironcart.contracts.shipping import ShipmentCreated, ShipmentDelivered
from ironcart.platform.database import is_transient
from ironcart.shipping.carrier import (
    CarrierDown,
    CarrierGateway,
    CarrierLabel,
    CarrierRefused,
    TrackingReport,
    TrackingVerifier,
)
from ironcart.shipping.domain import (
    RANK,
    TRACKED,
    CarrierRejected,
    CarrierUnavailable,
    ExceedsOrdered,
    InvalidShippingData,
    InvalidWebhookPayload,
    OrderNotFound,
    OrderNotShippable,
    Shipment,
    ShipmentNotFound,
    ShipmentStatus,
    ShippingContention,
    UnknownCarrier,
    check_shippable,
    shipment_lines,
    tracked_move,
)
from ironcart.shipping.repository import ShippingUnitOfWork
from ironcart.shipping.zoning import ZoneAdmin

_log = structlog.get_logger("ironcart.shipping")
T = TypeVar("T")
MAX_ATTEMPTS = 50
SHIPPABLE_STATUSES = frozenset({"paid", "partially_fulfilled"})


class _Lost:
    """A conditional write found the row changed by a concurrent writer: run it again."""


LOST = _Lost()


def _now() -> datetime:
    return datetime.now(UTC)


class OrdersPort(Protocol):
    """What shipping needs of ordering (ordering's client port fits it): the order to ship."""

    async def order_for_fulfilment(self, order_id: str) -> OrderForFulfilment | None: ...

    async def begin_fulfilment(self, order_id: str) -> bool: ...


class ShippingService(ZoneAdmin):
    def __init__(
        self,
        *,
        uow_factory: Callable[[], ShippingUnitOfWork],
        ordering: OrdersPort,
        carriers: Mapping[str, CarrierGateway],
        verifiers: Mapping[str, TrackingVerifier],
        clock: Callable[[], datetime] = _now,
        outbox_written: Callable[[], None] = lambda: None,
    ) -> None:
        self._uow = uow_factory
        self._ordering = ordering
        self._carriers = dict(carriers)
        self._verifiers = dict(verifiers)
        self._clock = clock
        self._outbox_written = outbox_written

    async def aclose(self) -> None:
        for carrier in self._carriers.values():
            await carrier.aclose()

    async def _retrying(self, attempt: Callable[[], Awaitable[T | _Lost]]) -> T:
        for _ in range(MAX_ATTEMPTS):
            try:
                result = await attempt()
            except DBAPIError as error:
                if not is_transient(error):
                    raise
                _log.info("shipping_transaction_retried", error=type(error.orig).__name__)
                continue
            if not isinstance(result, _Lost):
                return result
        raise ShippingContention

    # -- shipments -----------------------------------------------------------------------------

    async def create_shipment(
        self, *, order_id: str, lines: Sequence[tuple[str, int]], carrier: str
    ) -> Shipment:
        """Ship some or all of a paid order's lines with `carrier` (staff).

        `ExceedsOrdered` (409) when more of a SKU would be shipped than was ordered, counting
        every earlier shipment; `OrderNotShippable` (409) unless the order is paid;
        `CarrierRejected` (422) when the carrier refused it; `CarrierUnavailable` (503) when
        the carrier could not be reached: the shipment stays `requested` and is resumed.
        """
        wanted = shipment_lines(lines)
        gateway = self._carriers.get(carrier)
        if gateway is None:
            raise InvalidShippingData(
                f"Unknown carrier {carrier!r}; known: {sorted(self._carriers)}."
            )
        order = await self._order(order_id)
        if order.status not in SHIPPABLE_STATUSES:
            raise OrderNotShippable(order.status)
        shipment = await self._retrying(lambda: self._hold(order, wanted, carrier))
        # From here the customer can no longer cancel; a cancellation that came first wins.
        if not await self._ordering.begin_fulfilment(order_id):
            await self._retrying(lambda: self._give_back(shipment, "order_not_shippable"))
            raise OrderNotShippable("cancelled")
        label = await self._ask_carrier(gateway, shipment, order)
        await self._retrying(lambda: self._labelled(shipment, label))
        self._outbox_written()
        return await self.get_shipment(shipment_id=shipment.id, customer_id=None)

    async def resume_requested(self, *, older_than_seconds: float, limit: int = 100) -> int:
        """Ask the carrier again, with the same idempotency key, for shipments created this
        long ago and still without a label; label or fail them. The number settled."""
        before = self._clock() - timedelta(seconds=older_than_seconds)
        async with self._uow() as uow:
            waiting = await uow.shipments.unlabelled(created_before=before, limit=limit)
        settled = 0
        for shipment in waiting:
            settled += await self._resume(shipment)
        return settled

    async def _resume(self, shipment: Shipment) -> bool:
        gateway = self._carriers.get(shipment.carrier)
        order = await self._ordering.order_for_fulfilment(shipment.order_id)
        if gateway is None or order is None:
            _log.warning("shipment_not_resumable", shipment_id=shipment.id)
            return False
        # A crash may have come before the order was marked as being fulfilled.
        if not await self._ordering.begin_fulfilment(shipment.order_id):
            await self._retrying(lambda: self._give_back(shipment, "order_not_shippable"))
            return True
        try:
            label = await self._ask_carrier(gateway, shipment, order)
        except CarrierRejected:
            return True
        except CarrierUnavailable:
            return False  # the next round
        await self._retrying(lambda: self._labelled(shipment, label))
        self._outbox_written()
        return True

    async def _ask_carrier(
        self, gateway: CarrierGateway, shipment: Shipment, order: OrderForFulfilment
    ) -> CarrierLabel:
        """The label; on a refusal the shipment fails and gives its quantities back. When the
        carrier cannot be reached the outcome is unknown (it may have made the label): the
        shipment stays `requested`, holding them, for `resume_requested`."""
        try:
            return await gateway.create_shipment(
                reference=shipment.id,
                country=order.country,
                postal_code=order.postal_code,
                lines=shipment.lines,
                idempotency_key=shipment.id,
            )
        except CarrierRefused as error:
            code = error.code
            await self._retrying(lambda: self._give_back(shipment, code))
            raise CarrierRejected(code) from None
        except CarrierDown as error:
            _log.warning("carrier_unavailable", shipment_id=shipment.id, reason=error.reason)
            raise CarrierUnavailable from None

    async def _order(self, order_id: str) -> OrderForFulfilment:
        order = await self._ordering.order_for_fulfilment(order_id)
        if order is None:
            raise OrderNotFound(f"No order {order_id!r}.")
        return order

    async def _hold(
        self, order: OrderForFulfilment, lines: tuple[tuple[str, int], ...], carrier: str
    ) -> Shipment:
        now = self._clock()
        shipment = Shipment(
            id=str(uuid.uuid4()),
            order_id=order.order_id,
            customer_id=order.customer_id,
            carrier=carrier,
            status=ShipmentStatus.REQUESTED,
            status_rank=RANK[ShipmentStatus.REQUESTED],
            version=1,
            created_at=now,
            updated_at=now,
            lines=lines,
        )
        async with self._uow() as uow:
            await uow.fulfilment.ensure_order(
                order_id=order.order_id, customer_id=order.customer_id, lines=order.lines, now=now
            )
            ordered, shipped = await uow.fulfilment.quantities(order.order_id)
            check_shippable(ordered, shipped, lines)
            for sku, quantity in lines:  # SKU order: two shipments never lock in a cycle
                if not await uow.fulfilment.hold(order.order_id, sku, quantity):
                    _ordered, now_shipped = await uow.fulfilment.quantities(order.order_id)
                    left = ordered.get(sku, 0) - now_shipped.get(sku, 0)
                    raise ExceedsOrdered(sku=sku, requested=quantity, left=max(left, 0))
            await uow.shipments.add(shipment)
            await uow.commit()
        return shipment

    async def _give_back(self, shipment: Shipment, code: str) -> None:
        async with self._uow() as uow:
            if await uow.shipments.fail(shipment.id, failure_code=code, now=self._clock()):
                for sku, quantity in shipment.lines:
                    await uow.fulfilment.release(shipment.order_id, sku, quantity)
            await uow.commit()

    async def _labelled(self, shipment: Shipment, label: CarrierLabel) -> None:
        async with self._uow() as uow:
            # Labels of one order's shipments take turns: the last sees every other's count.
            await uow.fulfilment.take_turn(shipment.order_id)
            attached = await uow.shipments.attach_label(
                shipment.id,
                carrier_shipment_id=label.id,
                tracking_number=label.tracking_number,
                label_url=label.label_url,
                now=self._clock(),
            )
            if attached:  # the first answer only: a resumed call may bring the same label
                for sku, quantity in shipment.lines:
                    await uow.fulfilment.label(shipment.order_id, sku, quantity)
                fully = await uow.fulfilment.fully_shipped(shipment.order_id)
                await uow.outbox.record(
                    ShipmentCreated(
                        shipment_id=shipment.id,
                        order_id=shipment.order_id,
                        customer_id=shipment.customer_id,
                        carrier=shipment.carrier,
                        tracking_number=label.tracking_number,
                        lines=shipment.lines,
                        order_fully_shipped=fully,
                    )
                )
                await self._delivered_before_labelled(uow, shipment, fully=fully)
            await uow.commit()

    async def _delivered_before_labelled(
        self, uow: ShippingUnitOfWork, shipment: Shipment, *, fully: bool
    ) -> None:
        """Carrier events may have delivered a shipment whose label we only now record (its
        answer was lost): its `ShipmentDelivered` could not count it as shipped then."""
        current = await uow.shipments.get(shipment.id)
        if current is None or current.status is not ShipmentStatus.DELIVERED:
            return
        await uow.outbox.record(
            ShipmentDelivered(
                shipment_id=shipment.id,
                order_id=shipment.order_id,
                customer_id=shipment.customer_id,
                all_delivered=fully and await uow.shipments.all_delivered(shipment.order_id),
            )
        )

    async def get_shipment(self, *, shipment_id: str, customer_id: str | None) -> Shipment:
        """One shipment with its tracking history; another customer's is not found."""
        async with self._uow() as uow:
            shipment = await uow.shipments.get(shipment_id, with_history=True)
        if shipment is None or (customer_id is not None and shipment.customer_id != customer_id):
            raise ShipmentNotFound(f"No shipment {shipment_id!r}.")
        return shipment

    async def shipments_for_order(
        self, *, order_id: str, customer_id: str | None
    ) -> list[Shipment]:
        """Every shipment of an order, oldest first; another customer's order is not found."""
        order = await self._order(order_id)
        if customer_id is not None and order.customer_id != customer_id:
            raise OrderNotFound(f"No order {order_id!r}.")
        async with self._uow() as uow:
            return await uow.shipments.list_for_order(order_id)

    # -- carrier webhooks ----------------------------------------------------------------------

    async def handle_webhook(
        self, *, carrier: str, body: bytes, signature_header: str | None
    ) -> bool:
        """Apply a signed carrier event; False when it was seen before (nothing changes)."""
        verifier = self._verifiers.get(carrier)
        if verifier is None:
            raise UnknownCarrier(f"No carrier {carrier!r}.")
        report = verifier.verify(body, signature_header, now=time.time())
        try:
            status = ShipmentStatus(report.status)
        except ValueError:
            status = None
        if status not in TRACKED:
            raise InvalidWebhookPayload(f"Unknown tracking status {report.status!r}.")
        assert status is not None  # noqa: S101 - narrowed by TRACKED above
        applied = await self._retrying(lambda: self._track(carrier, report, status))
        if applied:
            self._outbox_written()
        return applied

    async def _track(
        self, carrier: str, report: TrackingReport, status: ShipmentStatus
    ) -> bool | _Lost:
        now = self._clock()
        async with self._uow() as uow:
            shipment = await uow.shipments.find_for_carrier(
                carrier, carrier_shipment_id=report.carrier_shipment_id, reference=report.reference
            )
            new = await uow.tracking.add_if_absent(
                carrier=carrier,
                event_id=report.event_id,
                shipment_id=None if shipment is None else shipment.id,
                status=status,
                occurred_at=report.occurred_at,
                location=report.location,
                now=now,
            )
            if not new:
                return False
            if shipment is None:
                _log.warning(
                    "tracking_for_unknown_shipment", carrier=carrier, event=report.event_id
                )
            elif not await self._move(uow, shipment, status, report):
                return LOST
            await uow.commit()
        return True

    async def _move(
        self,
        uow: ShippingUnitOfWork,
        shipment: Shipment,
        status: ShipmentStatus,
        report: TrackingReport,
    ) -> bool:
        """Move the shipment if the event takes it forward; False if it changed meanwhile."""
        move = tracked_move(shipment, status, occurred_at=report.occurred_at)
        if move is None:
            return True  # kept in the history only
        target, rank = move
        delivered = target is ShipmentStatus.DELIVERED
        if delivered:
            await uow.fulfilment.take_turn(shipment.order_id)
        now = self._clock()
        if not await uow.shipments.move(
            shipment, target, rank, status_at=report.occurred_at, now=now
        ):
            return False
        await uow.tracking.mark_applied(carrier=shipment.carrier, event_id=report.event_id)
        if delivered:
            everything = await uow.fulfilment.fully_shipped(
                shipment.order_id
            ) and await uow.shipments.all_delivered(shipment.order_id)
            await uow.outbox.record(
                ShipmentDelivered(
                    shipment_id=shipment.id,
                    order_id=shipment.order_id,
                    customer_id=shipment.customer_id,
                    all_delivered=everything,
                )
            )
        return True
