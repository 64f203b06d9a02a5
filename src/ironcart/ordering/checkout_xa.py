"""Checkout in XA mode (`IRONCART_CHECKOUT_TXN=xa`): the order and its stock commit at once
across ordering's and inventory's databases; the payment is held before, captured after.

1. As in TCC mode, `Checkout` claims the Idempotency-Key and prices the order.
2. The XA transaction is begun: its log row (kind `checkout`, payload: the order and the
   payment's xid, which is the gid) commits first, so recovery covers every later step;
   then the key names the order, so a replay waits for this transaction's outcome
   instead of taking the key over.
3. The payment is authorized (xid = gid). Declined: 402; provider down: 503; the
   transaction is given up (`XaCoordinator.abort`) and its follow-up voids.
4. `XaCoordinator.execute` runs two branches: ordering's database gets the order
   (awaiting payment), its lines, its history and `OrderPlaced` in ordering's outbox;
   inventory's sells the lines (`InventoryClient.sell_in_branch`, 409 when short).
5. The follow-up of the outcome (`CheckoutFollowUp`, registered with the coordinator):
   committed -> capture and the order is paid (`OrderPaid`); aborted -> void. `execute`
   runs it; recovery runs it for a transaction whose process died or whose follow-up
   failed (the worker's XA job).

A replay of a key whose request died answers once recovery decided: the order, or 409
`checkout_aborted` when the transaction was rolled back (its order never existed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import orjson
import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, async_sessionmaker

from ironcart.contracts.ordering import OrderLineSummary, OrderPlaced, OrderStatusChanged
from ironcart.ordering.checkout import Checkout, CheckoutAnswer, CheckoutRequest, Loader
from ironcart.ordering.domain import (
    CheckoutAborted,
    CheckoutBusy,
    CheckoutInProgress,
    KnownOrder,
    Order,
    OrderNotFound,
    OrderStatus,
)
from ironcart.ordering.repository import OrderingUnitOfWork, outbox
from ironcart.payments.client import PaymentsClient
from ironcart.platform.database import is_transient
from ironcart.platform.errors import IronCartError
from ironcart.platform.outbox import record
from ironcart.platform.txn.fence import FenceError
from ironcart.platform.txn.xa import (
    XaAborted,
    XaBranch,
    XaCoordinator,
    XaInDoubt,
    XaResource,
    XaState,
)

KIND = "checkout"
ACTOR = "system:checkout"
_log = structlog.get_logger("ironcart.ordering")
Announcement = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class XaCheckoutParts:
    """What XA mode adds to checkout: the coordinator, its two resources, the payments port."""

    coordinator: XaCoordinator
    ordering: XaResource
    inventory: XaResource
    payments: PaymentsClient


class XaCheckout(Checkout):
    """`Checkout` whose transaction is XA (see the module docstring); the rest is shared."""

    def __init__(self, *, xa: XaCheckoutParts, **checkout: Any) -> None:
        super().__init__(**checkout)
        self._xa_parts = xa

    async def place(self, request: CheckoutRequest, *, load: Loader) -> CheckoutAnswer:
        """Run (or replay) the checkout for this Idempotency-Key."""
        return await super().place(request, load=self._xa_or_outcome(load))

    async def _run(
        self,
        request: CheckoutRequest,
        order: Order,
        cart_version: int | None,
        *,
        load: Loader,
    ) -> CheckoutAnswer:
        order.xid = self._xa_parts.coordinator.new_gid()
        payload = _payload(order)
        await self._xa_begin(request, order, payload)
        await self._xa_authorize(request, order)
        announcements: list[Announcement] = []
        outcome = await self._xa_commit(request, order, payload, announcements)
        self._outbox_written()
        for announce in announcements:
            await announce()
        if outcome is not XaState.COMMITTED:
            _log.info("checkout_commit_deferred", order_id=order.id, xid=order.xid)
        if request.cart_id is not None and cart_version is not None:
            await self._close_cart(request, cart_version)
        _, body = await load(order.id)
        await self._complete(request, body, token=request.claim_token)
        return CheckoutAnswer(201, body, False, order.id)

    async def _xa_begin(
        self, request: CheckoutRequest, order: Order, payload: dict[str, Any]
    ) -> None:
        """Log the transaction, then name its order on the key (in that order: a key that
        names an order always has a transaction that decides it)."""
        coordinator = self._xa_parts.coordinator
        try:
            await coordinator.begin(
                order.xid,
                kind=KIND,
                resources=[self._xa_parts.ordering, self._xa_parts.inventory],
                payload=payload,
                reference=order.id,
            )
        except BaseException:
            await self._forget(request)
            raise
        try:
            async with self._uow() as uow:
                attached = await uow.idempotency.attach_order(
                    request.customer_id,
                    request.idempotency_key,
                    token=request.claim_token,
                    order_id=order.id,
                    now=self._clock(),
                )
                await uow.commit()
        except BaseException:
            await coordinator.abort(order.xid, reason="the key could not name the order")
            await self._forget(request)
            raise
        if not attached:
            await coordinator.abort(order.xid, reason="the key was taken over")
            raise CheckoutInProgress(
                "Another request now runs the checkout of this Idempotency-Key.",
                headers={"Retry-After": "1"},
            )

    async def _xa_authorize(self, request: CheckoutRequest, order: Order) -> None:
        """Hold the money (xid = gid): a declined card or a provider down gives up."""
        try:
            await self._xa_parts.payments.try_authorize(
                xid=order.xid,
                order_id=order.id,
                amount=order.total.amount,
                currency=order.currency,
                card_token=request.card_token,
            )
        except IronCartError as error:
            await self._xa_parts.coordinator.abort(order.xid, reason=error.code)
            await self._store_error(request, error)
            raise
        except FenceError as error:  # recovery gave the transaction up (voided) first
            raise await self._xa_aborted(request) from error

    async def _xa_commit(
        self,
        request: CheckoutRequest,
        order: Order,
        payload: Mapping[str, Any],
        announcements: list[Announcement],
    ) -> XaState:
        branches = self._xa_branches(order, announcements)
        try:
            outcome = await self._xa_parts.coordinator.execute(
                branches, kind=KIND, payload=payload, gid=order.xid, begun=True
            )
        except IronCartError as error:  # out of stock (409): rolled back, voided
            await self._store_error(request, error)
            raise
        except XaInDoubt as error:  # the key stays: a replay answers once recovery decided
            raise CheckoutInProgress(
                "The checkout's outcome is being settled; retry shortly.",
                headers={"Retry-After": "2"},
            ) from error
        except XaAborted as error:
            raise await self._xa_aborted(request) from error
        except DBAPIError as error:
            if not is_transient(error):
                raise
            # A deadlock in a branch: rolled back and voided; the client may retry the key.
            busy = CheckoutBusy(
                "The checkout met a conflict; retry shortly.", headers={"Retry-After": "1"}
            )
            await self._store_error(request, busy)
            raise busy from error
        return outcome.state

    def _xa_branches(self, order: Order, announcements: list[Announcement]) -> list[XaBranch]:
        sealed = self._box.seal(orjson.dumps(order.shipping_address))
        lines = [(line.sku, line.quantity) for line in order.lines]

        async def write_order(connection: AsyncConnection) -> None:
            await _write_order(connection, order, sealed)

        async def sell(connection: AsyncConnection) -> None:
            announcements.append(
                await self._inventory.sell_in_branch(connection, reference=order.xid, lines=lines)
            )

        return [
            XaBranch("ordering", self._xa_parts.ordering, write_order),
            XaBranch("inventory", self._xa_parts.inventory, sell),
        ]

    async def _xa_aborted(self, request: CheckoutRequest) -> CheckoutAborted:
        aborted = CheckoutAborted(
            "The checkout was cancelled while it ran; nothing was charged. Start a new one."
        )
        await self._store_error(request, aborted)
        return aborted

    def _xa_or_outcome(self, load: Loader) -> Loader:
        """`load`, and for an order that does not exist (yet) the state of its transaction:
        in flight while undecided, cancelled once rolled back."""

        async def load_or_outcome(order_id: str) -> tuple[str, bytes]:
            try:
                return await load(order_id)
            except OrderNotFound:
                entry = await self._xa_parts.coordinator.find(order_id)
            if entry is None or entry.state is XaState.ABORTED:
                return OrderStatus.CANCELLED.value, b""
            return OrderStatus.PENDING.value, b""

        return load_or_outcome


async def _write_order(connection: AsyncConnection, order: Order, sealed: bytes) -> None:
    """Ordering's branch: the order (stock sold, payment held: awaiting its capture), its
    lines, history and events, through ordering's own repository on the branch's connection."""
    # The session joins the branch's transaction and never ends it (the coordinator does).
    sessions = async_sessionmaker(bind=connection, expire_on_commit=False, autoflush=False)
    reason = "stock sold, payment authorized"
    async with OrderingUnitOfWork(sessions) as uow:
        await uow.orders.add(order, sealed_address=sealed)
        await uow.orders.move(
            order.id,
            source=OrderStatus.PENDING,
            target=OrderStatus.AWAITING_PAYMENT,
            actor=ACTOR,
            reason=reason,
            now=order.created_at,
        )
        events: list[object] = [
            OrderPlaced(
                order.id,
                order.customer_id,
                order.total.amount,
                order.currency,
                tuple(OrderLineSummary(line.sku, line.quantity) for line in order.lines),
            ),
            OrderStatusChanged(
                order.id,
                order.customer_id,
                OrderStatus.PENDING.value,
                OrderStatus.AWAITING_PAYMENT.value,
                ACTOR,
                reason,
            ),
        ]
        for event in events:
            await record(uow.session, outbox, event, subject=f"ordering.{type(event).__name__}")


def _payload(order: Order) -> dict[str, Any]:
    """What recovery needs to finish the checkout: the order, and the payment's xid."""
    return {
        "order_id": order.id,
        "customer_id": order.customer_id,
        "total": str(order.total.amount),
        "currency": order.currency,
        "payment_xid": order.xid,
    }


class PaidOrders(Protocol):
    async def mark_paid(self, known: KnownOrder) -> None:
        """The order's payment was captured: it is paid."""
        ...


class CheckoutFollowUp:
    """The XA checkout's follow-up of its outcome (`XaFollowUp` of kind `checkout`):
    committed -> capture, then the order is paid; aborted -> void. Both idempotent."""

    def __init__(self, payments: PaymentsClient, orders: PaidOrders) -> None:
        self._payments = payments
        self._orders = orders

    async def committed(self, gid: str, payload: Mapping[str, Any]) -> None:
        await self._payments.confirm_capture(xid=str(payload["payment_xid"]))
        await self._orders.mark_paid(
            KnownOrder(
                order_id=str(payload["order_id"]),
                customer_id=str(payload["customer_id"]),
                total=Decimal(str(payload["total"])),
                currency=str(payload["currency"]),
            )
        )

    async def aborted(self, gid: str, payload: Mapping[str, Any]) -> None:
        await self._payments.cancel_void(xid=str(payload["payment_xid"]))
