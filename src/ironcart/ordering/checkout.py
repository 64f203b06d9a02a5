"""Checkout: one `POST /api/v1/orders` is one TCC transaction over stock, money and the order.

1. The Idempotency-Key is claimed (customer, key) -> `in_progress` with the request's hash.
   A second request with the key waits for the first and gets its stored answer, or 409
   while it is still running; a different body gets 422.
2. Lines come from the customer's cart (or the request); prices from the catalog now,
   shipping from the method's flat rate, tax at the configured rate: the client sets none.
3. One database transaction writes the order (`pending`), its lines, `OrderPlaced` in the
   outbox, the key's order id and the global transaction with its branches — inventory
   (reserve / commit / release), payments (authorize / capture / void) and the order
   itself (awaiting_payment / paid / cancelled).
4. The coordinator tries, decides and confirms; a failed try cancels every branch and its
   error (out of stock 409, declined 402, provider down 503) becomes the stored answer.
   A crash anywhere is finished by the recovery worker from what step 3 stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import structlog

from ironcart.cart.client import CartClient
from ironcart.catalog.client import CatalogClient
from ironcart.contracts.ordering import OrderLineSummary, OrderPlaced
from ironcart.inventory.client import InventoryClient
from ironcart.ordering.domain import (
    CheckoutAborted,
    CheckoutBusy,
    CheckoutInProgress,
    IdempotencyKeyReused,
    Order,
    OrderLine,
    OrderStatus,
    PricedItem,
    UnsellableItems,
    compute_totals,
    merge_lines,
)
from ironcart.ordering.repository import IdempotencyRecord, OrderingUnitOfWork, outbox
from ironcart.platform.errors import ErrorKind, IronCartError
from ironcart.platform.money import Money
from ironcart.platform.outbox import record
from ironcart.platform.security.crypto import SecretBox
from ironcart.platform.settings import OrderingSettings
from ironcart.platform.txn.fence import FenceError
from ironcart.platform.txn.tcc import Branch, TccCoordinator, TransactionAborted, TxnState
from ironcart.shipping.client import ShippingClient

_log = structlog.get_logger("ironcart.ordering")


@dataclass(frozen=True, slots=True)
class CheckoutRequest:
    customer_id: str
    idempotency_key: str
    cart_id: str | None
    lines: tuple[tuple[str, int], ...]
    shipping_method: str
    shipping_address: dict[str, str]
    card_token: str
    fingerprint: bytes  # the request body as parsed, canonically encoded
    claim_token: str = ""  # set by `Checkout.place`: this request's hold on the key


@dataclass(frozen=True, slots=True)
class CheckoutAnswer:
    status: int
    body: bytes
    replayed: bool
    order_id: str | None


# Renders an order as stored: (status, JSON body). The answer, also for a later replay.
Loader = Callable[[str], Awaitable[tuple[str, bytes]]]
# An order in these states is decided (or done): a replay answers 201 with it.
_IN_FLIGHT = {OrderStatus.PENDING.value, OrderStatus.AWAITING_PAYMENT.value}


def _now() -> datetime:
    return datetime.now(UTC)


def request_hash(fingerprint: bytes) -> str:
    return hashlib.sha256(fingerprint).hexdigest()


class Checkout:
    def __init__(
        self,
        *,
        uow_factory: Callable[[], OrderingUnitOfWork],
        coordinator: TccCoordinator,
        catalog: CatalogClient,
        cart: CartClient,
        inventory: InventoryClient,
        shipping: ShippingClient,
        address_box: SecretBox,
        settings: OrderingSettings,
        outbox_written: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._uow = uow_factory
        self._coordinator = coordinator
        self._catalog = catalog
        self._cart = cart
        self._inventory = inventory
        self._shipping = shipping
        self._box = address_box
        self._settings = settings
        self._outbox_written = outbox_written
        self._clock = clock
        self._running = asyncio.Semaphore(settings.max_concurrent_checkouts)

    async def place(
        self,
        request: CheckoutRequest,
        *,
        load: Loader,
    ) -> CheckoutAnswer:
        """Run (or replay) the checkout for this Idempotency-Key; see the module docstring."""
        request = replace(request, claim_token=str(uuid.uuid4()))
        digest = request_hash(request.fingerprint)
        replay = await self._claim_or_replay(request, digest, load=load)
        if replay is not None:
            return replay
        try:
            await asyncio.wait_for(self._running.acquire(), self._settings.checkout_queue_seconds)
        except TimeoutError:
            await self._forget(request)
            raise CheckoutBusy(
                "Too many checkouts at once; retry shortly.", headers={"Retry-After": "2"}
            ) from None
        try:
            return await self._checkout(request, load=load)
        finally:
            self._running.release()

    async def _checkout(self, request: CheckoutRequest, *, load: Loader) -> CheckoutAnswer:
        try:
            order, cart_version = await self._prepare(request)
        except IronCartError as error:
            await self._store_error(request, error)
            raise
        except BaseException:
            await self._forget(request)
            raise
        return await self._run(request, order, cart_version, load=load)

    # -- idempotency -------------------------------------------------------------------------

    async def _claim_or_replay(
        self, request: CheckoutRequest, digest: str, *, load: Loader
    ) -> CheckoutAnswer | None:
        """None when this request owns the key now; else the first request's answer."""
        deadline = asyncio.get_running_loop().time() + self._settings.idempotency_wait_seconds
        delay = 0.02
        while True:
            record_ = await self._claim(request, digest)
            if record_ is None:
                return None
            if record_.request_hash != digest:
                raise IdempotencyKeyReused(
                    "This Idempotency-Key was used with a different request body."
                )
            if record_.state == "completed":
                return _replayed(record_.response_status, record_.response_body, record_.order_id)
            stale = self._clock() - _aware(record_.updated_at) > timedelta(
                seconds=self._settings.idempotency_stale_seconds
            )
            if stale and record_.order_id:
                # The first request died after creating its order: answer with the order as
                # recovery left it, once recovery has decided it.
                answer = await self._settled(request, record_.order_id, load)
                if answer is not None:
                    return answer
            elif stale and await self._take_over(request):
                return None  # the first request died before creating anything
            if asyncio.get_running_loop().time() >= deadline:
                raise CheckoutInProgress(
                    "A checkout with this Idempotency-Key is still running; retry shortly.",
                    headers={"Retry-After": "1"},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)
            # Waiting only reads (one write per waiter would queue SQLite's single writer).
            while (record_ := await self._read_key(request)) is not None and (
                record_.state == "in_progress"
                and asyncio.get_running_loop().time() < deadline
                and self._clock() - _aware(record_.updated_at)
                <= timedelta(seconds=self._settings.idempotency_stale_seconds)
            ):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)

    async def _settled(
        self, request: CheckoutRequest, order_id: str, load: Loader
    ) -> CheckoutAnswer | None:
        """The answer for the order of a request that died, once its outcome is known."""
        status, body = await load(order_id)
        if status in _IN_FLIGHT:
            return None  # recovery has not decided it yet: keep waiting (or 409)
        if status == OrderStatus.CANCELLED.value:
            aborted = CheckoutAborted(
                "The checkout did not finish and was cancelled; nothing was charged."
            )
            await self._store_error(request, aborted, token=None)
            raise aborted
        await self._complete(request, body, token=None)
        return CheckoutAnswer(201, body, True, order_id)

    async def _claim(self, request: CheckoutRequest, digest: str) -> IdempotencyRecord | None:
        """Claim the key (None) or return the record already there."""
        now = self._clock()
        async with self._uow() as uow:
            claimed = await uow.idempotency.claim(
                request.customer_id,
                request.idempotency_key,
                token=request.claim_token,
                request_hash=digest,
                now=now,
                expires_at=now + timedelta(hours=self._settings.idempotency_ttl_hours),
            )
            await uow.commit()
        if claimed:
            return None
        found = await self._read_key(request)
        return found if found is not None else await self._claim(request, digest)

    async def _read_key(self, request: CheckoutRequest) -> IdempotencyRecord | None:
        async with self._uow().reading() as uow:
            return await uow.idempotency.get(request.customer_id, request.idempotency_key)

    async def _take_over(self, request: CheckoutRequest) -> bool:
        now = self._clock()
        stale_before = now - timedelta(seconds=self._settings.idempotency_stale_seconds)
        async with self._uow() as uow:
            taken = await uow.idempotency.take_over(
                request.customer_id,
                request.idempotency_key,
                token=request.claim_token,
                stale_before=stale_before,
                now=now,
            )
            await uow.commit()
        return taken

    async def _store_error(
        self, request: CheckoutRequest, error: IronCartError, *, token: str | None = ""
    ) -> None:
        """Store the error as the key's answer (a temporary one frees the key instead)."""
        if token == "":
            token = request.claim_token
        if error.kind is ErrorKind.UNAVAILABLE and token is not None:
            # Provider or database down: nothing stands (the order, if any, is cancelled),
            # so the client may retry with the same key, as the Retry-After invites.
            await self._forget(request)
            return
        body = orjson.dumps(
            {
                "code": error.code,
                "kind": error.kind.value,
                "title": error.title,
                "detail": error.detail,
                "extra": error.extra,
            },
            default=str,
        ).decode()
        async with self._uow() as uow:
            await uow.idempotency.complete(
                request.customer_id,
                request.idempotency_key,
                token=token,
                status=0,
                body=body,
                now=self._clock(),
            )
            await uow.commit()

    async def _forget(self, request: CheckoutRequest) -> None:
        async with self._uow() as uow:
            await uow.idempotency.forget(
                request.customer_id, request.idempotency_key, token=request.claim_token
            )
            await uow.commit()

    # -- pricing -------------------------------------------------------------------------------

    async def _prepare(self, request: CheckoutRequest) -> tuple[Order, int | None]:
        cart_version: int | None = None
        wanted: Sequence[tuple[str, int]] = request.lines
        if request.cart_id is not None:
            cart = await self._cart.customer_cart(
                cart_id=request.cart_id, user_id=request.customer_id
            )
            wanted = [(line.sku, line.quantity) for line in cart.lines]
            cart_version = cart.version
        lines = merge_lines(wanted)
        items = await self._price(lines)
        # Sold out: refuse before writing anything (a crowd on the last units costs reads).
        await self._inventory.check_available(lines=lines)
        currency = items[0].unit_price.currency
        # Shipping prices the parcel: its zone (country, postal code), weight and subtotal.
        rate = await self._shipping.quote(
            method_code=request.shipping_method,
            country=request.shipping_address.get("country", ""),
            postal_code=request.shipping_address.get("postal_code"),
            weight_grams=sum(item.weight_grams * item.quantity for item in items),
            subtotal=sum((item.unit_price.amount * item.quantity for item in items), Decimal(0)),
            currency=currency,
        )
        totals = compute_totals(
            items, shipping=Money.of(rate, currency), tax_rate=self._settings.tax_rate
        )
        now = self._clock()
        order = Order(
            id=str(uuid.uuid4()),
            customer_id=request.customer_id,
            status=OrderStatus.PENDING,
            currency=currency,
            subtotal=totals.subtotal,
            shipping=totals.shipping,
            tax=totals.tax,
            total=totals.total,
            refunded=Money.zero(currency),
            shipping_method=request.shipping_method,
            shipping_address=request.shipping_address,
            xid=f"checkout-{uuid.uuid4()}",
            version=1,
            created_at=now,
            updated_at=now,
            lines=[
                OrderLine(i.sku, i.product_name, i.variant_name, i.quantity, i.unit_price)
                for i in items
            ],
        )
        return order, cart_version

    async def _price(self, lines: Sequence[tuple[str, int]]) -> list[PricedItem]:
        variants = await self._catalog.variants([sku for sku, _ in lines])
        unsellable = [sku for sku, _ in lines if sku not in variants or not variants[sku].published]
        if unsellable:
            raise UnsellableItems("Some items cannot be sold.", skus=unsellable)
        currencies = {variants[sku].currency for sku, _ in lines}
        if len(currencies) != 1:
            raise UnsellableItems(
                "Items priced in different currencies.", skus=[s for s, _ in lines]
            )
        return [
            PricedItem(
                sku,
                variants[sku].product_name,
                variants[sku].variant_name,
                quantity,
                Money.of(variants[sku].price, variants[sku].currency),
                variants[sku].weight_grams,
            )
            for sku, quantity in lines
        ]

    # -- the transaction -----------------------------------------------------------------------

    async def _run(
        self,
        request: CheckoutRequest,
        order: Order,
        cart_version: int | None,
        *,
        load: Loader,
    ) -> CheckoutAnswer:
        try:
            branches = await self._begin(request, order)
        except CheckoutInProgress:
            raise  # another request holds the key now; nothing of ours was stored
        except BaseException:
            await self._forget(request)  # the order's transaction rolled back: nothing stands
            raise
        try:
            state = await self._coordinator.execute(order.xid, kind="checkout", branches=branches)
        except IronCartError as error:
            await self._store_error(request, error)
            raise
        except (TransactionAborted, FenceError) as error:
            aborted = CheckoutAborted(
                "The checkout was cancelled while it ran; nothing was charged. Start a new one."
            )
            await self._store_error(request, aborted)
            raise aborted from error
        if state is not TxnState.CONFIRMED:
            _log.info("checkout_confirm_deferred", order_id=order.id, xid=order.xid)
        if request.cart_id is not None and cart_version is not None:
            await self._close_cart(request, cart_version)
        _, body = await load(order.id)
        await self._complete(request, body, token=request.claim_token)
        return CheckoutAnswer(201, body, False, order.id)

    async def _complete(self, request: CheckoutRequest, body: bytes, *, token: str | None) -> None:
        async with self._uow() as uow:
            await uow.idempotency.complete(
                request.customer_id,
                request.idempotency_key,
                token=token,
                status=201,
                body=body.decode(),
                now=self._clock(),
            )
            await uow.commit()

    async def _begin(self, request: CheckoutRequest, order: Order) -> list[Branch]:
        sealed = self._box.seal(orjson.dumps(order.shipping_address))
        branches = [
            Branch(
                "inventory",
                "inventory",
                {
                    "lines": [[line.sku, line.quantity] for line in order.lines],
                    "ttl_seconds": self._settings.reservation_ttl_seconds,
                },
            ),
            Branch(
                "payment",
                "payments",
                {
                    "order_id": order.id,
                    "amount": str(order.total.amount),
                    "currency": order.currency,
                    "card_token": request.card_token,
                },
            ),
            Branch(
                "order",
                "ordering",
                {
                    "order_id": order.id,
                    "customer_id": order.customer_id,
                    "total": str(order.total.amount),
                    "currency": order.currency,
                },
            ),
        ]
        async with self._uow() as uow:
            await uow.orders.add(order, sealed_address=sealed)
            if not await uow.idempotency.attach_order(
                request.customer_id,
                request.idempotency_key,
                token=request.claim_token,
                order_id=order.id,
                now=self._clock(),
            ):
                # This request was too slow and another took the key over: roll back.
                raise CheckoutInProgress(
                    "Another request now runs the checkout of this Idempotency-Key.",
                    headers={"Retry-After": "1"},
                )
            await record(
                uow.session,
                outbox,
                OrderPlaced(
                    order.id,
                    order.customer_id,
                    order.total.amount,
                    order.currency,
                    tuple(OrderLineSummary(line.sku, line.quantity) for line in order.lines),
                ),
                subject="ordering.OrderPlaced",
            )
            await self._coordinator.begin(
                uow.session, xid=order.xid, kind="checkout", branches=branches
            )
            await uow.commit()
        self._outbox_written()
        return branches

    async def _close_cart(self, request: CheckoutRequest, version: int) -> None:
        assert request.cart_id is not None  # noqa: S101 - checked by the caller
        try:
            await self._cart.close_cart(
                cart_id=request.cart_id, user_id=request.customer_id, version=version
            )
        except IronCartError as error:  # the order stands; the shopper changed the cart meanwhile
            _log.info("checkout_cart_not_closed", cart_id=request.cart_id, error=error.code)


def _aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _replayed(status: int | None, body: str | None, order_id: str | None) -> CheckoutAnswer:
    if status == 0 and body is not None:
        raise replayed_error(orjson.loads(body))
    return CheckoutAnswer(status or 201, (body or "{}").encode(), True, order_id)


def replayed_error(stored: dict[str, Any]) -> IronCartError:
    """The error the first request ended with, raised again for a replay of its key."""
    cls = type(
        "ReplayedError",
        (IronCartError,),
        {"code": stored["code"], "kind": ErrorKind(stored["kind"]), "title": stored["title"]},
    )
    error: IronCartError = cls(
        stored["detail"], headers={"Idempotent-Replayed": "true"}, **stored.get("extra", {})
    )
    return error


def fingerprint(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS, default=_default)


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)
