"""Inventory rules without I/O: the allocation plan, reservation status transitions, low stock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ironcart.inventory.domain import (
    Allocation,
    InsufficientStock,
    InvalidReservation,
    InvalidSku,
    Outcome,
    ReservationAlreadyCommitted,
    ReservationExpired,
    ReservationStatus,
    SkuStock,
    StockLevel,
    Warehouse,
    became_low,
    check_reservation_request,
    check_sku,
    commit_outcome,
    plan_allocation,
    release_outcome,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _level(
    warehouse_id: str, available: int, *, priority: int = 1, active: bool = True, reserved: int = 0
) -> StockLevel:
    warehouse = Warehouse(warehouse_id, f"code-{warehouse_id}", warehouse_id, priority, active)
    return StockLevel("SKU-1", warehouse, available + reserved, reserved, 1)


@pytest.mark.parametrize(
    ("levels", "quantity", "expected"),
    [
        pytest.param([_level("a", 30), _level("b", 20)], 1, [("a", 1)], id="most-stock-first"),
        pytest.param(
            [_level("a", 30, priority=2), _level("b", 20, priority=1)],
            5,
            [("b", 5)],
            id="lower-priority-number-first",
        ),
        pytest.param(
            [_level("a", 3, priority=1), _level("b", 20, priority=2)],
            5,
            [("a", 3), ("b", 2)],
            id="split-when-first-is-short",
        ),
        pytest.param(
            [_level("c", 2), _level("a", 2), _level("b", 2)],
            6,
            [("a", 2), ("b", 2), ("c", 2)],
            id="split-over-three-in-id-order",
        ),
        pytest.param(
            [_level("a", 10, active=False), _level("b", 4)],
            4,
            [("b", 4)],
            id="inactive-warehouse-skipped",
        ),
        pytest.param(
            [_level("a", 0, reserved=7), _level("b", 5)],
            5,
            [("b", 5)],
            id="fully-reserved-warehouse-skipped",
        ),
        pytest.param([_level("b", 5), _level("a", 5)], 1, [("a", 1)], id="tie-broken-by-code"),
    ],
)
def test_plan_allocation(
    levels: list[StockLevel], quantity: int, expected: list[tuple[str, int]]
) -> None:
    plan = plan_allocation(sku="SKU-1", quantity=quantity, levels=levels)

    assert plan == [Allocation(warehouse, units) for warehouse, units in expected]
    assert sum(line.quantity for line in plan) == quantity


def test_plan_allocation_refuses_more_than_active_stock() -> None:
    levels = [_level("a", 3), _level("b", 2), _level("c", 100, active=False)]

    with pytest.raises(InsufficientStock) as raised:
        plan_allocation(sku="SKU-1", quantity=6, levels=levels)

    assert (raised.value.sku, raised.value.requested, raised.value.available) == ("SKU-1", 6, 5)
    assert raised.value.code == "inventory.insufficient_stock"
    assert raised.value.extra == {"sku": "SKU-1", "requested": 6, "available": 5}


def test_plan_allocation_with_no_stock_at_all() -> None:
    with pytest.raises(InsufficientStock) as raised:
        plan_allocation(sku="SKU-1", quantity=1, levels=[])
    assert raised.value.available == 0


@pytest.mark.parametrize(
    ("status", "expires_in", "expected"),
    [
        pytest.param(ReservationStatus.ACTIVE, 60, Outcome.APPLY, id="active"),
        pytest.param(ReservationStatus.COMMITTED, 60, Outcome.NOTHING, id="committed-twice"),
        pytest.param(ReservationStatus.COMMITTED, -60, Outcome.NOTHING, id="committed-then-late"),
    ],
)
def test_commit_outcome(status: ReservationStatus, expires_in: int, expected: Outcome) -> None:
    expires_at = NOW + timedelta(seconds=expires_in)
    assert commit_outcome(status, expires_at=expires_at, now=NOW) is expected


@pytest.mark.parametrize(
    ("status", "expires_in"),
    [
        pytest.param(ReservationStatus.ACTIVE, -1, id="active-but-past-expiry"),
        pytest.param(ReservationStatus.ACTIVE, 0, id="expiring-this-instant"),
        pytest.param(ReservationStatus.RELEASED, 60, id="released"),
        pytest.param(ReservationStatus.EXPIRED, -60, id="expired"),
    ],
)
def test_commit_outcome_refuses_released_or_expired(
    status: ReservationStatus, expires_in: int
) -> None:
    with pytest.raises(ReservationExpired) as raised:
        commit_outcome(status, expires_at=NOW + timedelta(seconds=expires_in), now=NOW)
    assert raised.value.code == "inventory.reservation_expired"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(ReservationStatus.ACTIVE, Outcome.APPLY, id="active"),
        pytest.param(ReservationStatus.RELEASED, Outcome.NOTHING, id="released-twice"),
        pytest.param(ReservationStatus.EXPIRED, Outcome.NOTHING, id="after-expiry"),
    ],
)
def test_release_outcome(status: ReservationStatus, expected: Outcome) -> None:
    assert release_outcome(status) is expected


def test_release_after_commit_is_refused() -> None:
    with pytest.raises(ReservationAlreadyCommitted):
        release_outcome(ReservationStatus.COMMITTED)


@pytest.mark.parametrize(
    ("before", "after", "threshold", "previous_threshold", "expected"),
    [
        pytest.param(6, 5, 5, 5, True, id="falls-to-threshold"),
        pytest.param(10, 0, 5, 5, True, id="falls-below-threshold"),
        pytest.param(5, 4, 5, 5, False, id="already-low"),
        pytest.param(8, 6, 5, 5, False, id="still-above"),
        pytest.param(3, 4, 5, 5, False, id="rises-while-low"),
        pytest.param(7, 7, 10, 5, True, id="threshold-raised-above-stock"),
        pytest.param(7, 7, 5, 10, False, id="threshold-lowered"),
    ],
)
def test_became_low(
    before: int, after: int, threshold: int, previous_threshold: int, expected: bool
) -> None:
    assert (
        became_low(
            before=before, after=after, threshold=threshold, previous_threshold=previous_threshold
        )
        is expected
    )


@pytest.mark.parametrize(
    "sku", ["A", "sku-1", "SKU_2.blue", "x" * 64], ids=["one", "dash", "dot", "max"]
)
def test_valid_skus(sku: str) -> None:
    assert check_sku(sku) == sku


@pytest.mark.parametrize(
    "sku",
    ["", "x" * 65, "has space", "semi;colon", "ünï", "a/b", "line\nbreak"],
    ids=["empty", "too-long", "space", "semicolon", "non-ascii", "slash", "newline"],
)
def test_invalid_skus(sku: str) -> None:
    with pytest.raises(InvalidSku):
        check_sku(sku)


@pytest.mark.parametrize(
    ("quantity", "owner", "ttl_seconds"),
    [
        pytest.param(0, "cart-1", 60, id="zero-quantity"),
        pytest.param(-3, "cart-1", 60, id="negative-quantity"),
        pytest.param(1, "", 60, id="no-owner"),
        pytest.param(1, "   ", 60, id="blank-owner"),
        pytest.param(1, "o" * 201, 60, id="owner-too-long"),
        pytest.param(1, "cart-1", 0, id="zero-ttl"),
        pytest.param(1, "cart-1", 8 * 24 * 3600, id="ttl-too-long"),
    ],
)
def test_invalid_reservation_requests(quantity: int, owner: str, ttl_seconds: int) -> None:
    with pytest.raises(InvalidReservation):
        check_reservation_request(quantity=quantity, owner=owner, ttl_seconds=ttl_seconds)


def test_sku_stock_counts_only_active_warehouses() -> None:
    stock = SkuStock(
        "SKU-1",
        (_level("a", 4, reserved=3), _level("b", 10, active=False), _level("c", 1)),
        low_stock_threshold=2,
        version=9,
    )
    assert stock.available == 5
