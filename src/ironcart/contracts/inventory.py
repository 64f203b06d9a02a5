"""What other contexts may know of inventory: availability, reservations and stock events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Reservation:
    """Stock held for an owner (a cart, an order, a checkout) until `expires_at`."""

    id: str
    sku: str
    quantity: int
    owner: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class StockChanged:
    """Published after the sellable quantity of a SKU changed (receipt, adjustment, sale...)."""

    sku: str
    available: int


@dataclass(frozen=True, slots=True)
class StockLow:
    """Published when available stock of a SKU falls to or below its low-stock threshold."""

    sku: str
    available: int
    threshold: int
