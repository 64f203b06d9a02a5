"""Inventory rules: warehouses, stock levels, reservations, the movement ledger. Pure Python.

IronCartError
 ├── NotFound
 │    ├── SkuNotFound                 code inventory.sku_not_found
 │    ├── WarehouseNotFound           code inventory.warehouse_not_found
 │    └── ReservationNotFound         code inventory.reservation_not_found
 ├── Conflict
 │    ├── InsufficientStock           code inventory.insufficient_stock (sku, requested, available;
 │    │                               a multi-SKU request also lists `items`, every short SKU)
 │    ├── ReservationExpired          code inventory.reservation_expired (released or expired;
 │    │                               a TCC confirm that cannot take the stock back: `skus`)
 │    ├── ReservationAlreadyCommitted code inventory.reservation_committed (release after commit)
 │    ├── StockBelowReserved          code inventory.below_reserved (on_hand would be < reserved)
 │    └── WarehouseCodeTaken          code inventory.warehouse_code_taken
 ├── InvalidRequest
 │    ├── InvalidSku                  code inventory.invalid_sku
 │    ├── UnknownWarehouse            code inventory.unknown_warehouse (named in a request body)
 │    └── InvalidReservation          code inventory.invalid_reservation (quantity, ttl, owner, xid)
 ├── PreconditionFailed
 │    └── StaleStock                  code inventory.stale_version (412: If-Match is not current)
 └── ServiceUnavailable
      └── StockContention             code inventory.contention (lost every optimistic retry)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from ironcart.platform.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    ServiceUnavailable,
)

SKU_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
WAREHOUSE_CODE_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
MAX_QUANTITY = 1_000_000
MAX_STOCK = 1_000_000_000
MAX_TTL_SECONDS = 7 * 24 * 3600
OWNER_MAX_LENGTH = 200
XID_MAX_LENGTH = 64  # the TCC fence table's key
MAX_CHECKOUT_LINES = 1000
REASON_MAX_LENGTH = 500
DEFAULT_LOW_STOCK_THRESHOLD = 0


class SkuNotFound(NotFound):
    code = "inventory.sku_not_found"
    title = "No inventory for this SKU"


class WarehouseNotFound(NotFound):
    code = "inventory.warehouse_not_found"
    title = "Warehouse not found"


class ReservationNotFound(NotFound):
    code = "inventory.reservation_not_found"
    title = "Reservation not found"


@dataclass(frozen=True, slots=True)
class Shortage:
    """A SKU a request could not have: how many units were asked for, how many were free."""

    sku: str
    requested: int
    available: int


class InsufficientStock(Conflict):
    """`sku` / `requested` / `available` name the first short SKU; `items` lists all of them."""

    code = "inventory.insufficient_stock"
    title = "Not enough stock"

    def __init__(
        self, *, sku: str, requested: int, available: int, items: Sequence[Shortage] = ()
    ) -> None:
        self.sku = sku
        self.requested = requested
        self.available = available
        self.items = tuple(items) or (Shortage(sku, requested, available),)
        super().__init__(
            " ".join(
                f"{item.requested} of {item.sku} requested, {item.available} available."
                for item in self.items
            ),
            sku=sku,
            requested=requested,
            available=available,
        )
        if items:  # a multi-SKU request (a checkout): the client needs every short line
            self.extra["items"] = [
                {"sku": item.sku, "requested": item.requested, "available": item.available}
                for item in self.items
            ]

    @classmethod
    def of(cls, items: Sequence[Shortage]) -> InsufficientStock:
        """The error of a multi-SKU request that found `items` (at least one) short."""
        first = items[0]
        return cls(sku=first.sku, requested=first.requested, available=first.available, items=items)


class ReservationExpired(Conflict):
    code = "inventory.reservation_expired"
    title = "Reservation expired or released"

    def __init__(self, detail: str, *, skus: Sequence[str] = ()) -> None:
        self.skus = tuple(skus)
        super().__init__(detail)
        if skus:
            self.extra["skus"] = list(skus)


class ReservationAlreadyCommitted(Conflict):
    code = "inventory.reservation_committed"
    title = "Reservation already committed"


class StockBelowReserved(Conflict):
    code = "inventory.below_reserved"
    title = "Stock cannot fall below what is reserved"


class WarehouseCodeTaken(Conflict):
    code = "inventory.warehouse_code_taken"
    title = "Warehouse code already in use"


class InvalidSku(InvalidRequest):
    code = "inventory.invalid_sku"
    title = "Invalid SKU"


class UnknownWarehouse(InvalidRequest):
    code = "inventory.unknown_warehouse"
    title = "Unknown warehouse"


class InvalidReservation(InvalidRequest):
    code = "inventory.invalid_reservation"
    title = "Invalid reservation request"


class StaleStock(PreconditionFailed):
    code = "inventory.stale_version"
    title = "Stock changed since it was read"


class StockContention(ServiceUnavailable):
    code = "inventory.contention"
    title = "Stock is too contended right now"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


class ReservationStatus(StrEnum):
    ACTIVE = "active"
    COMMITTED = "committed"
    RELEASED = "released"
    EXPIRED = "expired"


class MovementKind(StrEnum):
    RECEIPT = "receipt"
    ADJUSTMENT = "adjustment"
    RESERVATION = "reservation"
    RELEASE = "release"
    SALE = "sale"
    RETURN = "return"
    EXPIRY = "expiry"
    TRANSFER = "transfer"  # a pair: out of one warehouse, into another, one transaction


class Outcome(StrEnum):
    """What a status change asks of the caller: do the work, or nothing (idempotent replay)."""

    APPLY = "apply"
    NOTHING = "nothing"


def check_sku(sku: str) -> str:
    if not SKU_PATTERN.match(sku):
        raise InvalidSku("A SKU is 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'.")
    return sku


def check_reservation_request(*, quantity: int, owner: str, ttl_seconds: int) -> None:
    if not 1 <= quantity <= MAX_QUANTITY:
        raise InvalidReservation(f"The quantity must be between 1 and {MAX_QUANTITY}.")
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidReservation(f"The TTL must be between 1 and {MAX_TTL_SECONDS} seconds.")
    if not 1 <= len(owner) <= OWNER_MAX_LENGTH or not owner.strip():
        raise InvalidReservation(f"The owner must have 1 to {OWNER_MAX_LENGTH} characters.")


def tcc_owner(xid: str) -> str:
    """The owner of the reservations a TCC try holds for the global transaction `xid`."""
    return f"tcc:{xid}"


def check_xid(xid: str) -> str:
    if not 1 <= len(xid) <= XID_MAX_LENGTH or not xid.strip():
        raise InvalidReservation(f"A transaction id has 1 to {XID_MAX_LENGTH} characters.")
    return xid


def merge_lines(lines: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """One (sku, quantity) per SKU, in SKU order; a SKU named twice has its quantities added.

    SKU order is the order a multi-SKU change locks stock rows in, so two checkouts that
    name the same SKUs in different orders never wait for each other in a cycle.
    """
    if not 1 <= len(lines) <= MAX_CHECKOUT_LINES:
        raise InvalidReservation(f"Reserve 1 to {MAX_CHECKOUT_LINES} lines at a time.")
    merged: dict[str, int] = {}
    for sku, quantity in lines:
        check_sku(sku)
        merged[sku] = merged.get(sku, 0) + quantity
        if quantity < 1 or merged[sku] > MAX_QUANTITY:
            raise InvalidReservation(f"The quantity must be between 1 and {MAX_QUANTITY}.")
    return sorted(merged.items())


def commit_outcome(status: ReservationStatus, *, expires_at: datetime, now: datetime) -> Outcome:
    """Committing twice is a success; a released, expired or out-of-time one is refused."""
    if status is ReservationStatus.COMMITTED:
        return Outcome.NOTHING
    if status is ReservationStatus.ACTIVE and now < expires_at:
        return Outcome.APPLY
    raise ReservationExpired("The reservation expired or was released; reserve again.")


def release_outcome(status: ReservationStatus) -> Outcome:
    """Releasing twice (or after expiry) is a no-op; releasing a committed one is refused."""
    if status is ReservationStatus.ACTIVE:
        return Outcome.APPLY
    if status is ReservationStatus.COMMITTED:
        raise ReservationAlreadyCommitted("The reserved units were already sold.")
    return Outcome.NOTHING


@dataclass(frozen=True, slots=True)
class Warehouse:
    id: str
    code: str
    name: str
    priority: int
    active: bool


@dataclass(frozen=True, slots=True)
class StockLevel:
    sku: str
    warehouse: Warehouse
    on_hand: int
    reserved: int
    version: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


@dataclass(frozen=True, slots=True)
class SkuStock:
    """Everything staff see of one SKU; `version` is the sum of its rows' versions (the ETag)."""

    sku: str
    levels: tuple[StockLevel, ...]
    low_stock_threshold: int
    version: int

    @property
    def available(self) -> int:
        return sum(max(level.available, 0) for level in self.levels if level.warehouse.active)


@dataclass(frozen=True, slots=True)
class Allocation:
    warehouse_id: str
    quantity: int


def plan_allocation(*, sku: str, quantity: int, levels: Sequence[StockLevel]) -> list[Allocation]:
    """Spread `quantity` over active warehouses: by priority (lower first), then most available.

    Each warehouse gives what it has until the quantity is met, so a reservation may be
    split. Ties are broken by warehouse code so the plan is deterministic. The plan is
    returned in warehouse-id order, the order in which rows are locked everywhere (no
    deadlocks between two reservations of the same SKU). `InsufficientStock` if the
    active warehouses together have less than `quantity`.
    """
    candidates = sorted(
        (level for level in levels if level.warehouse.active and level.available > 0),
        key=lambda level: (level.warehouse.priority, -level.available, level.warehouse.code),
    )
    total = sum(level.available for level in candidates)
    if total < quantity:
        raise InsufficientStock(sku=sku, requested=quantity, available=total)
    plan: list[Allocation] = []
    remaining = quantity
    for level in candidates:
        take = min(remaining, level.available)
        plan.append(Allocation(level.warehouse.id, take))
        remaining -= take
        if remaining == 0:
            break
    return sorted(plan, key=lambda allocation: allocation.warehouse_id)


def plan_lines(
    lines: Sequence[tuple[str, int]], levels: Sequence[StockLevel]
) -> dict[str, list[Allocation]]:
    """`plan_allocation` of every (sku, quantity) line, all or nothing.

    `InsufficientStock` lists every short SKU, not only the first, so a checkout can show
    them all at once.
    """
    by_sku: dict[str, list[StockLevel]] = {}
    for level in levels:
        by_sku.setdefault(level.sku, []).append(level)
    plans: dict[str, list[Allocation]] = {}
    short: list[Shortage] = []
    for sku, quantity in lines:
        try:
            plans[sku] = plan_allocation(sku=sku, quantity=quantity, levels=by_sku.get(sku, []))
        except InsufficientStock as refused:
            short.extend(refused.items)
    if short:
        raise InsufficientStock.of(short)
    return plans


class ConfirmStep(StrEnum):
    SELL = "sell"
    RETAKE = "retake"
    NOTHING = "nothing"


def confirm_step(status: ReservationStatus) -> ConfirmStep:
    """What a TCC confirm does with one reservation of its try.

    Active: sell it, even past its expiry: its units are still held, and the coordinator's
    decision outranks the TTL, which is only a safety net for a coordinator that died.
    Expired: the units went back to stock; take them again if they are still free, then
    sell them (`RETAKE`), because a confirm is a decision already made, and failing it
    would leave a paid order without goods. Committed: nothing to do. Released: someone
    gave the units back explicitly, outside the transaction; refused.
    """
    if status is ReservationStatus.ACTIVE:
        return ConfirmStep.SELL
    if status is ReservationStatus.EXPIRED:
        return ConfirmStep.RETAKE
    if status is ReservationStatus.COMMITTED:
        return ConfirmStep.NOTHING
    raise ReservationExpired("A reservation of this transaction was released; reserve again.")


def became_low(*, before: int, after: int, threshold: int, previous_threshold: int) -> bool:
    """True when a change moved the SKU from above its threshold to at or below it."""
    return after <= threshold and before > previous_threshold


@dataclass(frozen=True, slots=True)
class Movement:
    """One ledger row: what changed in one (sku, warehouse) level, why, and on whose behalf."""

    sku: str
    warehouse_id: str
    kind: MovementKind
    on_hand_delta: int
    reserved_delta: int
    reference: str | None = None
    reason: str | None = None


# (on_hand, reserved) change per unit of a reservation line, by what happened to it.
_LINE_DELTAS = {
    MovementKind.RESERVATION: (0, 1),
    MovementKind.SALE: (-1, -1),
    MovementKind.RELEASE: (0, -1),
    MovementKind.EXPIRY: (0, -1),
}


def line_movements(
    kind: MovementKind, *, sku: str, lines: Sequence[Allocation], reservation_id: str
) -> list[Movement]:
    """The ledger rows of a reservation's lines being held, sold, released or expired."""
    on_hand, reserved = _LINE_DELTAS[kind]
    return [
        Movement(
            sku,
            line.warehouse_id,
            kind,
            on_hand * line.quantity,
            reserved * line.quantity,
            reservation_id,
        )
        for line in lines
    ]


@dataclass(frozen=True, slots=True)
class ReservationRecord:
    id: str
    sku: str
    quantity: int
    owner: str
    status: ReservationStatus
    expires_at: datetime
    lines: tuple[Allocation, ...]


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """A level that does not equal the sum of its ledger rows (or ledger rows with no level)."""

    sku: str
    warehouse_id: str
    on_hand: int
    reserved: int
    ledger_on_hand: int
    ledger_reserved: int
