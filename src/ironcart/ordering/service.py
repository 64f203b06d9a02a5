"""Ordering use cases: read orders, cancel, refund, and the order's own TCC branch.

Every status change is a conditional UPDATE (`status = :from`) plus a history row and an
outbox event in one transaction. Money and stock effects of a cancel or refund go through
the payments and inventory ports with idempotency keys derived from the order, so a
retry (by the customer, or by `finish_cancellations`) never refunds or restocks twice.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import structlog

from ironcart.contracts.ordering import (
    OrderCancelled,
    OrderPaid,
    OrderRefunded,
    OrderStatusChanged,
)
from ironcart.contracts.shipping import ShipmentCreated, ShipmentDelivered
from ironcart.inventory.client import InventoryClient
from ironcart.ordering.checkout import Checkout, CheckoutAnswer, CheckoutRequest
from ironcart.ordering.domain import (
    CANCELLABLE,
    REFUNDABLE,
    SHIPPABLE,
    TRANSITIONS,
    IllegalTransition,
    KnownOrder,
    Order,
    OrderNotFound,
    OrderStatus,
    RefundExceedsCaptured,
    check_transition,
)
from ironcart.ordering.repository import OrderingUnitOfWork, outbox
from ironcart.payments.client import PaymentsClient
from ironcart.platform.errors import InvalidRequest
from ironcart.platform.money import Money, MoneyError
from ironcart.platform.outbox import record
from ironcart.platform.security.crypto import SecretBox

SYSTEM = "system:checkout"
SHIPPING = "system:shipping"
_log = structlog.get_logger("ironcart.ordering")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class OrderPage:
    items: list[Order]
    next_cursor: tuple[datetime, str] | None


class OrderingService:
    def __init__(
        self,
        *,
        uow_factory: Callable[[], OrderingUnitOfWork],
        checkout: Checkout,
        payments: PaymentsClient,
        inventory: InventoryClient,
        address_box: SecretBox,
        outbox_written: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._uow = uow_factory
        self._checkout = checkout
        self._payments = payments
        self._inventory = inventory
        self._box = address_box
        self._outbox_written = outbox_written
        self._clock = clock

    # -- customers -----------------------------------------------------------------------------

    async def place_order(
        self, request: CheckoutRequest, *, render: Callable[[Order], bytes]
    ) -> CheckoutAnswer:
        """Checkout (or its replay for the same Idempotency-Key)."""

        async def load(order_id: str) -> tuple[str, bytes]:
            order = await self._get(order_id)
            return order.status.value, render(order)

        return await self._checkout.place(request, load=load)

    async def get_order(self, *, order_id: str, customer_id: str | None) -> Order:
        """One order; another customer's order is reported as not found."""
        order = await self._get(order_id)
        if customer_id is not None and order.customer_id != customer_id:
            raise OrderNotFound(f"No order {order_id!r}.")
        return order

    async def list_orders(
        self,
        *,
        customer_id: str | None,
        statuses: Sequence[str] = (),
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int = 20,
    ) -> OrderPage:
        """Newest first, keyset-paginated; `customer_id=None` is the staff view of all orders."""
        async with self._uow().reading() as uow:
            rows = await uow.orders.page(
                customer_id=customer_id,
                statuses=statuses,
                created_from=created_from,
                created_to=created_to,
                after=after,
                limit=limit + 1,
            )
        items = rows[:limit]
        cursor = (items[-1].created_at, items[-1].id) if len(rows) > limit and items else None
        return OrderPage(items, cursor)

    async def cancel_order(
        self, *, order_id: str, customer_id: str | None, actor: str, reason: str
    ) -> Order:
        """Cancel a paid order that has not shipped: refund everything, put the stock back."""
        order = await self.get_order(order_id=order_id, customer_id=customer_id)
        if order.status not in CANCELLABLE:
            if order.status is OrderStatus.CANCELLED:
                return order
            raise IllegalTransition(
                f"An order that is {order.status.value} cannot be cancelled.",
                current=order.status.value,
            )
        if order.fulfilment_started:
            raise IllegalTransition(
                "The order is being shipped and can no longer be cancelled.",
                current=order.status.value,
            )
        moved = await self._transition(
            order,
            OrderStatus.CANCELLED,
            actor=actor,
            reason=reason,
            events=[OrderCancelled(order.id, order.customer_id, reason)],
            compensation_pending=True,
            unless_fulfilling=True,
        )
        if not moved:
            return await self.cancel_order(
                order_id=order_id, customer_id=customer_id, actor=actor, reason=reason
            )
        # Decided and recorded; the money and stock follow. Should this fail or the process
        # die here, `finish_cancellations` (the worker) completes it with the same keys.
        try:
            await self._undo_sale(order)
        except Exception:  # noqa: BLE001 - the cancel stands; the worker finishes the refund
            _log.warning("ordering_cancellation_deferred", order_id=order.id, exc_info=True)
        return await self._get(order_id)

    async def finish_cancellations(self, *, limit: int = 100) -> int:
        """Refund and restock cancelled paid orders whose compensation did not finish."""
        async with self._uow().reading() as uow:
            order_ids = await uow.orders.pending_compensations(limit=limit)
        finished = 0
        for order_id in order_ids:
            try:
                await self._undo_sale(await self._get(order_id))
            except Exception:  # noqa: BLE001 - one stuck order must not hold up the others
                _log.exception("ordering_cancellation_not_finished", order_id=order_id)
            else:
                finished += 1
        return finished

    async def purge_idempotency_keys(self) -> int:
        """Forget Idempotency-Keys past their retention (24 h at least)."""
        async with self._uow() as uow:
            purged = await uow.idempotency.purge_expired(self._clock())
            await uow.commit()
        return purged

    # -- staff ---------------------------------------------------------------------------------

    async def refund(
        self, *, order_id: str, amount: Decimal, idempotency_key: str, actor: str, reason: str
    ) -> Order:
        """Give back part or all of what was captured; never more than is left."""
        order = await self._get(order_id)
        # REFUNDED too: a replay of the refund that completed it answers as the first did.
        if order.status not in REFUNDABLE | {OrderStatus.REFUNDED}:
            raise IllegalTransition(
                f"An order that is {order.status.value} cannot be refunded.",
                current=order.status.value,
            )
        try:
            refund = Money.of(amount, order.currency)
        except MoneyError as error:
            raise InvalidRequest(str(error)) from None
        if refund.amount <= 0:
            raise RefundExceedsCaptured("A refund gives back a positive amount.")
        # Payments holds the authority on what is left (and replays a known key).
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
        await self._payments.refund(
            order_id=order.id, amount=refund.amount, idempotency_key=f"{order.id}:staff:{digest}"
        )
        await self._record_refunds(order_id, actor=actor, reason=reason)
        return await self._get(order_id)

    async def _record_refunds(self, order_id: str, *, actor: str, reason: str) -> None:
        """Bring the order's refunded amount and status up to what payments has refunded.

        Payments is the authority (its conditional UPDATE admits no refund beyond the
        capture); concurrent refunds each move the order from the state they find.
        """
        for _ in range(10):
            order = await self._get(order_id)
            payment = await self._payments.payment_for_order(order_id)
            if payment is None:
                return
            refunded = Money.of(payment.amount_refunded, order.currency)
            if refunded.amount <= order.refunded.amount or order.status not in REFUNDABLE:
                return
            fully = refunded.amount >= order.total.amount
            target = OrderStatus.REFUNDED if fully else OrderStatus.PARTIALLY_REFUNDED
            event = OrderRefunded(
                order.id,
                order.customer_id,
                (refunded - order.refunded).amount,
                order.currency,
                fully,
            )
            if await self._transition(
                order, target, actor=actor, reason=reason, refunded=refunded, events=[event]
            ):
                return
        raise IllegalTransition("The order kept changing while it was refunded; reload it.")

    # -- fulfilment (shipping's events) ----------------------------------------------------

    async def begin_fulfilment(self, order_id: str) -> bool:
        """Staff start shipping the order (shipping asks before it calls the carrier): from
        now on the customer cannot cancel it. False if the order is not shippable (any more:
        a cancellation that came first wins)."""
        async with self._uow() as uow:
            started = await uow.orders.start_fulfilment(
                order_id, shippable=sorted(SHIPPABLE), now=self._clock()
            )
            await uow.commit()
        return started

    async def on_shipment_created(self, event: ShipmentCreated) -> None:
        """Some units shipped: partially fulfilled; every unit shipped: fulfilled."""
        target = (
            OrderStatus.FULFILLED if event.order_fully_shipped else OrderStatus.PARTIALLY_FULFILLED
        )
        await self._follow_shipping(
            event.order_id,
            target,
            sources={OrderStatus.PAID, OrderStatus.PARTIALLY_FULFILLED},
            reason=f"shipment {event.shipment_id} ({event.carrier} {event.tracking_number})",
        )

    async def on_shipment_delivered(self, event: ShipmentDelivered) -> None:
        """The last shipment of a fully shipped order delivered: the order is delivered."""
        if not event.all_delivered:
            return
        # Everything was shipped, even if that news is still on its way (a redelivered or
        # reordered ShipmentCreated): fulfilled first, then delivered.
        await self._follow_shipping(
            event.order_id,
            OrderStatus.FULFILLED,
            sources={OrderStatus.PAID, OrderStatus.PARTIALLY_FULFILLED},
            reason=f"every unit shipped (reported with the delivery of {event.shipment_id})",
        )
        await self._follow_shipping(
            event.order_id,
            OrderStatus.DELIVERED,
            sources={OrderStatus.FULFILLED},
            reason=f"shipment {event.shipment_id} delivered, every shipment delivered",
        )

    async def _follow_shipping(
        self, order_id: str, target: OrderStatus, *, sources: set[OrderStatus], reason: str
    ) -> None:
        """Move the order as shipping reports; a repeat or a late event changes nothing (the
        move is conditional on the state it was read in, so the bus may redeliver)."""
        for _ in range(5):
            order = await self._get_or_none(order_id)
            if order is None or order.status is target or order.status not in sources:
                if order is not None and order.status not in sources | {target}:
                    _log.info(
                        "ordering_shipping_event_ignored",
                        order_id=order_id,
                        status=order.status.value,
                        target=target.value,
                    )
                return
            if target not in TRANSITIONS[order.status]:
                return
            if await self._transition(order, target, actor=SHIPPING, reason=reason):
                return
        raise IllegalTransition("The order kept changing while shipping moved it; retried later.")

    # -- the order's TCC branch -------------------------------------------------------------

    async def branch_try(self, order_id: str, known: KnownOrder | None = None) -> None:
        """Stock and payment are held: the order awaits its capture.

        `known`: what checkout stored with the transaction, so the move needs no read first.
        """
        reason = "stock held, payment authorized"
        if known is not None and await self._move_known(
            known, OrderStatus.PENDING, OrderStatus.AWAITING_PAYMENT, reason
        ):
            return
        await self._branch_move(order_id, OrderStatus.PENDING, OrderStatus.AWAITING_PAYMENT, reason)

    async def branch_confirm(self, order_id: str, known: KnownOrder | None = None) -> None:
        """Captured and sold: the order is paid."""
        if known is not None and await self._move_known(
            known,
            OrderStatus.AWAITING_PAYMENT,
            OrderStatus.PAID,
            "payment captured",
            events=[OrderPaid(known.order_id, known.customer_id, known.total, known.currency)],
        ):
            return
        order = await self._get(order_id)
        if order.status is OrderStatus.PENDING:  # recovery confirming a try it never saw finish
            await self.branch_try(order_id)
            order = await self._get(order_id)
        if order.status is not OrderStatus.AWAITING_PAYMENT:
            if order.status is OrderStatus.CANCELLED:
                raise IllegalTransition("A cancelled order cannot be paid.")
            return
        await self._transition(
            order,
            OrderStatus.PAID,
            actor=SYSTEM,
            reason="payment captured",
            events=[OrderPaid(order.id, order.customer_id, order.total.amount, order.currency)],
        )

    async def mark_paid(self, known: KnownOrder) -> None:
        """XA checkout: the order committed with its stock and its payment was captured."""
        await self.branch_confirm(known.order_id, known)

    async def branch_cancel(self, order_id: str, reason: str = "checkout cancelled") -> None:
        """Stock released and payment voided (or never taken): the order is cancelled."""
        order = await self._get_or_none(order_id)
        if order is None or order.status not in {OrderStatus.PENDING, OrderStatus.AWAITING_PAYMENT}:
            return
        await self._transition(
            order,
            OrderStatus.CANCELLED,
            actor=SYSTEM,
            reason=reason,
            events=[OrderCancelled(order.id, order.customer_id, reason)],
        )

    # -- internals -----------------------------------------------------------------------------

    async def _undo_sale(self, order: Order) -> None:
        """Refund what is left of the capture and put the stock back; each step keyed, so a
        repeat (the worker's, after a crash) does nothing twice."""
        payment = await self._payments.payment_for_order(order.id)
        if payment is not None:
            left = payment.amount_captured - payment.amount_refunded
            if left > 0:
                # A key staff refunds cannot take (theirs are `<order>:staff:<digest>`).
                await self._payments.refund(
                    order_id=order.id, amount=left, idempotency_key=f"{order.id}:sys:cancel"
                )
            payment = await self._payments.payment_for_order(order.id)
        await self._inventory.return_sale(xid=order.xid)
        refunded = (
            order.total if payment is None else Money.of(payment.amount_refunded, order.currency)
        )
        async with self._uow() as uow:
            await uow.orders.compensated(order.id, refunded.to_minor(), now=self._clock())
            await uow.commit()

    async def _branch_move(
        self, order_id: str, source: OrderStatus, target: OrderStatus, reason: str
    ) -> None:
        order = await self._get(order_id)
        if order.status is source:
            await self._transition(order, target, actor=SYSTEM, reason=reason)
        elif order.status is OrderStatus.CANCELLED:
            raise IllegalTransition("The order was cancelled while its checkout ran.")

    async def _transition(
        self,
        order: Order,
        target: OrderStatus,
        *,
        actor: str,
        reason: str,
        refunded: Money | None = None,
        events: Sequence[object] = (),
        compensation_pending: bool | None = None,
        unless_fulfilling: bool = False,
    ) -> bool:
        check_transition(order.status, target)
        now = self._clock()
        async with self._uow() as uow:
            moved = await uow.orders.move(
                order.id,
                source=order.status,
                target=target,
                actor=actor,
                reason=reason,
                now=now,
                refunded_minor=None if refunded is None else refunded.to_minor(),
                compensation_pending=compensation_pending,
                unless_fulfilling=unless_fulfilling,
            )
            if not moved:
                return False
            changed = OrderStatusChanged(
                order.id, order.customer_id, order.status.value, target.value, actor, reason
            )
            for event in (*events, changed):
                await record(uow.session, outbox, event, subject=f"ordering.{type(event).__name__}")
            await uow.commit()
        order.status = target
        self._outbox_written()
        return True

    async def _move_known(
        self,
        known: KnownOrder,
        source: OrderStatus,
        target: OrderStatus,
        reason: str,
        *,
        events: Sequence[object] = (),
    ) -> bool:
        """The conditional move of an order known by its TCC payload; False if not in `source`."""
        check_transition(source, target)
        async with self._uow() as uow:
            moved = await uow.orders.move(
                known.order_id,
                source=source,
                target=target,
                actor=SYSTEM,
                reason=reason,
                now=self._clock(),
                refunded_minor=None,
                compensation_pending=None,
            )
            if not moved:
                return False
            changed = OrderStatusChanged(
                known.order_id, known.customer_id, source.value, target.value, SYSTEM, reason
            )
            for event in (*events, changed):
                await record(uow.session, outbox, event, subject=f"ordering.{type(event).__name__}")
            await uow.commit()
        self._outbox_written()
        return True

    async def _get_or_none(self, order_id: str) -> Order | None:
        async with self._uow().reading() as uow:
            found = await uow.orders.get(order_id)
        if found is None:
            return None
        order, sealed = found
        order.shipping_address = _address(self._box.open(sealed))
        return order

    async def _get(self, order_id: str) -> Order:
        order = await self._get_or_none(order_id)
        if order is None:
            raise OrderNotFound(f"No order {order_id!r}.")
        return order


def _address(raw: bytes) -> dict[str, str]:
    value: Mapping[str, Any] = orjson.loads(raw)
    return {str(k): str(v) for k, v in value.items()}


def new_idempotency_key() -> str:
    return str(uuid.uuid4())
