"""What other contexts may know of carts: a customer's cart as checkout reads it."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class CartLineSnapshot:
    """A line as stored: `price_seen` (major units of `currency`) is what the shopper saw."""

    sku: str
    quantity: int
    price_seen: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class CartSnapshot:
    """A customer's open cart; `version` guards closing it after the order was placed."""

    id: str
    owner_id: str
    version: int
    currency: str | None
    lines: tuple[CartLineSnapshot, ...]
