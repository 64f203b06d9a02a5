"""Cart use cases: anonymous and customer carts, their lines, merge on login, purge.

Catalog and inventory are asked through their ports before a cart's transaction opens, so
nothing leaves while a cart is claimed. Every write reads the cart, decides with the domain
rules, and claims the version it read (`UPDATE ... WHERE version = :v`): a lost race is run
again on fresh data, unless the caller named the version with If-Match (then `StaleCart`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog
from sqlalchemy.exc import DBAPIError

from ironcart.cart.domain import (
    Access,
    Cart,
    CartContention,
    CartNotFound,
    CartStatus,
    LineChange,
    Offer,
    PricedCart,
    StaleCart,
    add_line,
    apply_changes,
    check_quantity,
    new_cart_token,
    plan_merge,
    price_cart,
    remove_line,
    set_quantity,
    token_digest,
)
from ironcart.cart.repository import CartUnitOfWork
from ironcart.catalog.client import CatalogClient
from ironcart.contracts.cart import CartLineSnapshot, CartSnapshot
from ironcart.contracts.catalog import VariantSnapshot
from ironcart.inventory.client import InventoryClient
from ironcart.platform.database import is_transient
from ironcart.platform.money import Money

_log = structlog.get_logger("ironcart.cart")
MAX_ATTEMPTS = 50
PURGE_BATCH = 500

Decide = Callable[[Cart], list[LineChange]]


def _now() -> datetime:
    return datetime.now(UTC)


def _offer(sku: str, variant: VariantSnapshot | None, available: int) -> Offer:
    if variant is None or not variant.published:
        return Offer(sku, None, available)
    price = Money.of(variant.price, variant.currency)
    return Offer(sku, price, available, variant.product_name, variant.variant_name)


class CartService:
    def __init__(
        self,
        *,
        uow_factory: Callable[[], CartUnitOfWork],
        catalog: CatalogClient,
        inventory: InventoryClient,
        clock: Callable[[], datetime] = _now,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self._uow = uow_factory
        self._catalog = catalog
        self._inventory = inventory
        self._clock = clock
        self._max_attempts = max_attempts

    # -- opening carts ----------------------------------------------------------------------

    async def create_anonymous_cart(self) -> tuple[PricedCart, str]:
        """A new, empty cart and its token: shown this once, only its digest is stored."""
        token = new_cart_token()
        cart = self._new_cart(owner_id=None, digest=token_digest(token))
        async with self._uow() as uow:
            if not await uow.carts.add(cart):
                raise RuntimeError("a new cart collided with an existing one")
            await uow.commit()
        return price_cart(cart, {}), token

    async def open_customer_cart(self, *, user_id: str) -> tuple[PricedCart, bool]:
        """The customer's open cart, created if there is none; (cart, created)."""
        for _ in range(self._max_attempts):
            async with self._uow().reading() as uow:
                existing = await uow.carts.get_open_for_owner(user_id)
            if existing is not None:
                return await self._priced(existing), False
            cart = self._new_cart(owner_id=user_id, digest=None)
            async with self._uow() as uow:
                if await uow.carts.add(cart):
                    await uow.commit()
                    return price_cart(cart, {}), True
            # Another request opened it first (the unique index said so): read that one.
        raise CartContention

    def _new_cart(self, *, owner_id: str | None, digest: str | None) -> Cart:
        now = self._clock()
        return Cart(
            id=str(uuid.uuid4()),
            owner_id=owner_id,
            status=CartStatus.OPEN,
            version=1,
            created_at=now,
            updated_at=now,
            token_digest=digest,
        )

    # -- reading ----------------------------------------------------------------------------

    async def get_cart(self, *, cart_id: str, access: Access) -> PricedCart:
        """The cart repriced now; `CartNotFound` unless `access` is its owner or its token."""
        async with self._uow().reading() as uow:
            cart = await uow.carts.get(cart_id)
        if cart is None or not cart.reachable_by(access):
            raise CartNotFound
        return await self._priced(cart)

    async def _priced(self, cart: Cart) -> PricedCart:
        skus = [line.sku for line in cart.lines]
        return price_cart(cart, await self._offers(skus) if skus else {})

    async def _offers(self, skus: Sequence[str]) -> dict[str, Offer]:
        variants, available = await asyncio.gather(
            self._catalog.variants(skus), self._inventory.availability(skus)
        )
        return {sku: _offer(sku, variants.get(sku), available.get(sku, 0)) for sku in skus}

    # -- lines ------------------------------------------------------------------------------

    async def add_item(
        self,
        *,
        cart_id: str,
        access: Access,
        sku: str,
        quantity: int,
        expected_version: int | None = None,
    ) -> PricedCart:
        """Add units of a SKU on sale (a new line, or more of a line), within limits and stock."""
        check_quantity(quantity)
        offer = (await self._offers([sku]))[sku]
        cart = await self._change(
            cart_id,
            access,
            expected_version,
            lambda current: [add_line(current, offer=offer, quantity=quantity)],
        )
        return await self._priced(cart)

    async def set_quantity(
        self,
        *,
        cart_id: str,
        access: Access,
        sku: str,
        quantity: int,
        expected_version: int | None = None,
    ) -> PricedCart:
        """Set a line's quantity; 0 removes it. An increase is checked against stock."""
        check_quantity(quantity, allow_zero=True)
        offer = (await self._offers([sku]))[sku] if quantity > 0 else None
        cart = await self._change(
            cart_id,
            access,
            expected_version,
            lambda current: [set_quantity(current, sku=sku, quantity=quantity, offer=offer)],
        )
        return await self._priced(cart)

    async def remove_item(
        self, *, cart_id: str, access: Access, sku: str, expected_version: int | None = None
    ) -> PricedCart:
        """Remove a line; `LineNotFound` if the SKU is not in the cart."""
        cart = await self._change(
            cart_id, access, expected_version, lambda current: [remove_line(current, sku=sku)]
        )
        return await self._priced(cart)

    async def _change(
        self, cart_id: str, access: Access, expected_version: int | None, decide: Decide
    ) -> Cart:
        for _ in range(self._max_attempts):
            try:
                changed = await self._try_change(cart_id, access, expected_version, decide)
            except DBAPIError as error:
                if not is_transient(error):
                    raise
                _log.info("cart_transaction_retried", error=type(error.orig).__name__)
                continue
            if changed is not None:
                return changed
        raise CartContention

    async def _try_change(
        self, cart_id: str, access: Access, expected_version: int | None, decide: Decide
    ) -> Cart | None:
        """One attempt: the changed cart, or None when another writer claimed it first."""
        async with self._uow() as uow:
            cart = await uow.carts.get(cart_id)
            if cart is None or not cart.reachable_by(access):
                raise CartNotFound
            if expected_version is not None and cart.version != expected_version:
                raise StaleCart("The cart changed since it was read; read it again.")
            changes = decide(cart)
            now = self._clock()
            if not await uow.carts.claim(cart.id, version=cart.version, now=now):
                if expected_version is not None:
                    raise StaleCart("The cart changed since it was read; read it again.")
                return None
            await uow.carts.write_lines(cart.id, changes, now=now)
            await uow.commit()
        return apply_changes(cart, changes, version=cart.version + 1, now=now)

    # -- merge on login ---------------------------------------------------------------------

    async def merge(
        self, *, cart_id: str, user_id: str, token: str, expected_version: int | None = None
    ) -> PricedCart:
        """Fold the anonymous cart of `token` into the customer's cart `cart_id`, then close it.

        Quantities add up within the limits (`domain.plan_merge`). Merging a cart that was
        already merged into this one changes nothing and answers the same (idempotent).
        """
        for _ in range(self._max_attempts):
            try:
                merged = await self._try_merge(cart_id, user_id, token, expected_version)
            except DBAPIError as error:
                if not is_transient(error):
                    raise
                continue
            if merged is not None:
                return await self._priced(merged)
        raise CartContention

    async def _try_merge(
        self, cart_id: str, user_id: str, token: str, expected_version: int | None
    ) -> Cart | None:
        async with self._uow() as uow:
            target = await uow.carts.get(cart_id)
            if target is None or not target.reachable_by(Access(user_id=user_id)):
                raise CartNotFound
            source = await uow.carts.get_by_token_digest(token_digest(token))
            if source is not None and source.merged_into == target.id:
                # Merged by a concurrent or earlier request: answer with the cart as it is now
                # (under READ COMMITTED `target` may have been read before that merge committed).
                return await uow.carts.get(cart_id) or target
            if source is None or not source.reachable_by(Access(token=token)):
                raise CartNotFound("No open cart has this cart token.")
            if expected_version is not None and target.version != expected_version:
                raise StaleCart("The cart changed since it was read; read it again.")
            plan = plan_merge(target, source)
            now = self._clock()
            # Customer cart, then anonymous cart: every merge locks in this order.
            if not await uow.carts.claim(target.id, version=target.version, now=now):
                if expected_version is not None:
                    raise StaleCart("The cart changed since it was read; read it again.")
                return None
            if not await uow.carts.close(
                source.id,
                version=source.version,
                status=CartStatus.MERGED,
                merged_into=target.id,
                now=now,
            ):
                return None  # the anonymous cart changed meanwhile: merge what it holds now
            await uow.carts.write_lines(target.id, plan.changes, now=now)
            await uow.commit()
        if plan.dropped:
            _log.info("cart_merge_dropped_lines", cart_id=target.id, skus=plan.dropped)
        return apply_changes(target, plan.changes, version=target.version + 1, now=now)

    # -- checkout and housekeeping ----------------------------------------------------------

    async def customer_cart(self, *, cart_id: str, user_id: str) -> CartSnapshot:
        """The customer's open cart as stored (for checkout); `CartNotFound` if not theirs."""
        async with self._uow().reading() as uow:
            cart = await uow.carts.get(cart_id)
        if cart is None or cart.owner_id is None or not cart.reachable_by(Access(user_id=user_id)):
            raise CartNotFound
        return CartSnapshot(
            id=cart.id,
            owner_id=cart.owner_id,
            version=cart.version,
            currency=cart.currency,
            lines=tuple(
                CartLineSnapshot(
                    line.sku, line.quantity, line.price_seen.amount, line.price_seen.currency
                )
                for line in cart.lines
            ),
        )

    async def close_cart(self, *, cart_id: str, user_id: str, version: int) -> None:
        """Close a customer's cart after checkout, if still at `version`; twice is a no-op."""
        async with self._uow() as uow:
            cart = await uow.carts.get(cart_id)
            if cart is None or cart.owner_id != user_id or cart.status is CartStatus.MERGED:
                raise CartNotFound
            if cart.status is CartStatus.CLOSED:
                return
            if not await uow.carts.close(
                cart.id,
                version=version,
                status=CartStatus.CLOSED,
                merged_into=None,
                now=self._clock(),
            ):
                raise StaleCart("The cart changed since checkout read it.")
            await uow.commit()

    async def purge_abandoned(self, *, before: datetime, limit: int = 10_000) -> int:
        """Delete anonymous carts nobody changed since `before`, in batches; returns how many."""
        purged = 0
        while purged < limit:
            size = min(PURGE_BATCH, limit - purged)
            async with self._uow() as uow:
                found = await uow.carts.abandoned(before=before, limit=size)
                deleted = await uow.carts.delete_abandoned(found, before=before)
                await uow.commit()
            purged += deleted
            if len(found) < size or deleted == 0:
                break
        return purged
