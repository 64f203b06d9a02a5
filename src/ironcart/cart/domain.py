"""Cart rules: who may reach a cart, line limits, merging, pricing at read time. Pure Python.

IronCartError
 ├── NotFound
 │    ├── CartNotFound            code cart.not_found (unknown, closed, or not yours: never 403)
 │    └── LineNotFound            code cart.line_not_found
 ├── Conflict
 │    ├── InsufficientStock       code cart.insufficient_stock (sku, requested, available)
 │    ├── LineQuantityLimit       code cart.line_quantity_limit (sku, requested, maximum)
 │    └── TooManyLines            code cart.too_many_lines (maximum)
 ├── InvalidRequest
 │    ├── UnknownSku              code cart.unknown_sku (sku): not in the catalog, or unpublished
 │    ├── CurrencyMismatch        code cart.currency_mismatch (sku, currency, cart_currency)
 │    └── InvalidQuantity         code cart.invalid_quantity
 ├── PreconditionFailed
 │    └── StaleCart               code cart.stale_version (412: If-Match is not current)
 └── ServiceUnavailable
      └── CartContention          code cart.contention (lost every optimistic retry)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from ironcart.platform.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    ServiceUnavailable,
)
from ironcart.platform.money import Money

MAX_LINE_QUANTITY = 99
MAX_LINES = 100
TOKEN_BYTES = 32
TOKEN_MAX_LENGTH = 256
# Anonymous carts nobody changed for this long may be purged (`CartService.purge_abandoned`).
ABANDONED_AFTER = timedelta(days=30)


class CartNotFound(NotFound):
    code = "cart.not_found"
    title = "Cart not found"


class LineNotFound(NotFound):
    code = "cart.line_not_found"
    title = "This SKU is not in the cart"


class InsufficientStock(Conflict):
    code = "cart.insufficient_stock"
    title = "Not enough stock"

    def __init__(self, *, sku: str, requested: int, available: int) -> None:
        super().__init__(
            f"{requested} of {sku} wanted, {available} available.",
            sku=sku,
            requested=requested,
            available=available,
        )


class LineQuantityLimit(Conflict):
    code = "cart.line_quantity_limit"
    title = "Too many units of one SKU"

    def __init__(self, *, sku: str, requested: int) -> None:
        super().__init__(
            f"A cart holds at most {MAX_LINE_QUANTITY} units of {sku}; {requested} wanted.",
            sku=sku,
            requested=requested,
            maximum=MAX_LINE_QUANTITY,
        )


class TooManyLines(Conflict):
    code = "cart.too_many_lines"
    title = "Too many lines in the cart"

    def __init__(self) -> None:
        super().__init__(f"A cart holds at most {MAX_LINES} lines.", maximum=MAX_LINES)


class UnknownSku(InvalidRequest):
    code = "cart.unknown_sku"
    title = "Unknown SKU"

    def __init__(self, sku: str) -> None:
        super().__init__(f"{sku!r} is not a SKU on sale.", sku=sku)


class CurrencyMismatch(InvalidRequest):
    code = "cart.currency_mismatch"
    title = "The cart holds another currency"

    def __init__(self, *, sku: str, currency: str, cart_currency: str) -> None:
        super().__init__(
            f"{sku} is priced in {currency}; this cart holds {cart_currency}.",
            sku=sku,
            currency=currency,
            cart_currency=cart_currency,
        )


class InvalidQuantity(InvalidRequest):
    code = "cart.invalid_quantity"
    title = "Invalid quantity"


class StaleCart(PreconditionFailed):
    code = "cart.stale_version"
    title = "The cart changed since it was read"


class CartContention(ServiceUnavailable):
    code = "cart.contention"
    title = "The cart is too contended right now"

    def __init__(self) -> None:
        super().__init__(
            "Too many concurrent changes of this cart; retry.", headers={"Retry-After": "1"}
        )


class CartStatus(StrEnum):
    OPEN = "open"
    MERGED = "merged"
    CLOSED = "closed"


def new_cart_token() -> str:
    """An unguessable bearer secret for an anonymous cart (256 bits), shown once."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """What is stored instead of the token: a leaked table does not open anybody's cart."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Access:
    """Who is asking: a signed-in person (`user_id`) and/or the bearer of a cart token."""

    user_id: str | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class CartLine:
    sku: str
    quantity: int
    price_seen: Money
    available_seen: int
    added_at: datetime


@dataclass(frozen=True, slots=True)
class Cart:
    id: str
    owner_id: str | None
    status: CartStatus
    version: int
    created_at: datetime
    updated_at: datetime
    token_digest: str | None = None
    merged_into: str | None = None
    lines: tuple[CartLine, ...] = ()

    @property
    def is_anonymous(self) -> bool:
        return self.owner_id is None

    @property
    def currency(self) -> str | None:
        return self.lines[0].price_seen.currency if self.lines else None

    def line(self, sku: str) -> CartLine | None:
        return next((line for line in self.lines if line.sku == sku), None)

    def reachable_by(self, access: Access) -> bool:
        """An open cart, reached by its owner or by the bearer of its token; nobody else."""
        if self.status is not CartStatus.OPEN:
            return False
        if self.owner_id is not None and access.user_id == self.owner_id:
            return True
        return self.token_matches(access.token)

    def token_matches(self, token: str | None) -> bool:
        if self.token_digest is None or not token or len(token) > TOKEN_MAX_LENGTH:
            return False
        return hmac.compare_digest(self.token_digest, token_digest(token))


@dataclass(frozen=True, slots=True)
class Offer:
    """What the catalog and inventory say about a SKU now. `price` None: not on sale."""

    sku: str
    price: Money | None
    available: int
    name: str = ""
    variant_name: str = ""


@dataclass(frozen=True, slots=True)
class LineChange:
    """One line to write: `quantity` 0 deletes it; `new` lines are inserted."""

    sku: str
    quantity: int
    price_seen: Money
    available_seen: int
    new: bool = False


def check_quantity(quantity: int, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not low <= quantity <= MAX_LINE_QUANTITY:
        raise InvalidQuantity(f"The quantity must be between {low} and {MAX_LINE_QUANTITY}.")


def add_line(cart: Cart, *, offer: Offer, quantity: int) -> LineChange:
    """Add `quantity` units of a SKU on sale, or add them to its line.

    The line keeps the price the shopper saw now; its total must stay within the per-line
    limit and the available stock, and a new line within the line limit and the cart's currency.
    """
    check_quantity(quantity)
    if offer.price is None:
        raise UnknownSku(offer.sku)
    existing = cart.line(offer.sku)
    if existing is None:
        _check_new_line(cart, offer.sku, offer.price)
    wanted = quantity + (existing.quantity if existing else 0)
    if wanted > MAX_LINE_QUANTITY:
        raise LineQuantityLimit(sku=offer.sku, requested=wanted)
    if wanted > offer.available:
        raise InsufficientStock(sku=offer.sku, requested=wanted, available=offer.available)
    return LineChange(offer.sku, wanted, offer.price, offer.available, new=existing is None)


def _check_new_line(cart: Cart, sku: str, price: Money) -> None:
    if len(cart.lines) >= MAX_LINES:
        raise TooManyLines
    if cart.currency is not None and price.currency != cart.currency:
        raise CurrencyMismatch(sku=sku, currency=price.currency, cart_currency=cart.currency)


def set_quantity(cart: Cart, *, sku: str, quantity: int, offer: Offer | None) -> LineChange:
    """Set a line's quantity (0 removes it). Only an increase needs the SKU on sale and in stock."""
    check_quantity(quantity, allow_zero=True)
    existing = cart.line(sku)
    if existing is None:
        raise LineNotFound(f"{sku!r} is not in this cart.")
    if quantity <= existing.quantity:
        return replace(_as_change(existing), quantity=quantity)
    if offer is None or offer.price is None:
        raise UnknownSku(sku)
    if quantity > offer.available:
        raise InsufficientStock(sku=sku, requested=quantity, available=offer.available)
    return replace(_as_change(existing), quantity=quantity, available_seen=offer.available)


def remove_line(cart: Cart, *, sku: str) -> LineChange:
    existing = cart.line(sku)
    if existing is None:
        raise LineNotFound(f"{sku!r} is not in this cart.")
    return replace(_as_change(existing), quantity=0)


def _as_change(line: CartLine) -> LineChange:
    return LineChange(line.sku, line.quantity, line.price_seen, line.available_seen)


@dataclass(frozen=True, slots=True)
class MergePlan:
    changes: list[LineChange] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def plan_merge(target: Cart, source: Cart) -> MergePlan:
    """Fold an anonymous cart into a customer's: quantities add up, capped per line; new lines
    come in while the cart has room and share its currency, the rest is dropped (and reported).
    Stock is not checked here: the cart shows `insufficient_stock` at read time instead."""
    plan = MergePlan()
    lines = len(target.lines)
    currency = target.currency
    for line in source.lines:
        existing = target.line(line.sku)
        if existing is not None:
            quantity = min(existing.quantity + line.quantity, MAX_LINE_QUANTITY)
            if quantity != existing.quantity:
                plan.changes.append(replace(_as_change(existing), quantity=quantity))
            continue
        if lines >= MAX_LINES or (currency is not None and line.price_seen.currency != currency):
            plan.dropped.append(line.sku)
            continue
        plan.changes.append(replace(_as_change(line), new=True))
        lines += 1
        currency = line.price_seen.currency
    return plan


def apply_changes(cart: Cart, changes: list[LineChange], *, version: int, now: datetime) -> Cart:
    """The cart as it is after `changes` were written at `version`."""
    lines = {line.sku: line for line in cart.lines}
    for change in changes:
        if change.quantity == 0:
            lines.pop(change.sku, None)
            continue
        added_at = lines[change.sku].added_at if change.sku in lines else now
        lines[change.sku] = CartLine(
            change.sku, change.quantity, change.price_seen, change.available_seen, added_at
        )
    ordered = sorted(lines.values(), key=lambda line: (line.added_at, line.sku))
    return replace(cart, lines=tuple(ordered), version=version, updated_at=now)


@dataclass(frozen=True, slots=True)
class PricedLine:
    sku: str
    name: str
    variant_name: str
    quantity: int
    price_seen: Money
    current_price: Money | None
    available: int
    purchasable: bool
    price_changed: bool
    availability_changed: bool
    insufficient_stock: bool
    line_total: Money | None


@dataclass(frozen=True, slots=True)
class PricedCart:
    """A cart repriced against the catalog and inventory as they are now."""

    cart: Cart
    lines: tuple[PricedLine, ...]
    subtotal: Money | None


def price_cart(cart: Cart, offers: dict[str, Offer]) -> PricedCart:
    """Reprice every line; the subtotal counts the purchasable lines at their current price."""
    currency = cart.currency
    priced = tuple(_price_line(line, offers.get(line.sku), currency) for line in cart.lines)
    subtotal = None if currency is None else Money.zero(currency)
    for line in priced:
        if subtotal is not None and line.line_total is not None:
            subtotal = subtotal + line.line_total
    return PricedCart(cart, priced, subtotal)


def _price_line(line: CartLine, offer: Offer | None, currency: str | None) -> PricedLine:
    price = offer.price if offer is not None else None
    available = offer.available if offer is not None else 0
    purchasable = price is not None and price.currency == currency
    return PricedLine(
        sku=line.sku,
        name=offer.name if offer is not None else "",
        variant_name=offer.variant_name if offer is not None else "",
        quantity=line.quantity,
        price_seen=line.price_seen,
        current_price=price,
        available=available,
        purchasable=purchasable,
        price_changed=price is not None and price != line.price_seen,
        availability_changed=available != line.available_seen,
        insufficient_stock=line.quantity > available,
        line_total=price.times(line.quantity) if price is not None and purchasable else None,
    )
