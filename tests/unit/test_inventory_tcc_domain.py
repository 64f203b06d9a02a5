"""Inventory's TCC rules without I/O: merging lines, all-or-nothing plans, what confirm does."""

from __future__ import annotations

import pytest

from ironcart.inventory.domain import (
    MAX_QUANTITY,
    Allocation,
    ConfirmStep,
    InsufficientStock,
    InvalidReservation,
    InvalidSku,
    ReservationExpired,
    ReservationStatus,
    Shortage,
    StockLevel,
    Warehouse,
    check_xid,
    confirm_step,
    merge_lines,
    plan_lines,
    tcc_owner,
)


def _level(sku: str, warehouse_id: str, available: int) -> StockLevel:
    warehouse = Warehouse(warehouse_id, f"code-{warehouse_id}", warehouse_id, 1, active=True)
    return StockLevel(sku, warehouse, available, 0, 1)


def test_merge_lines_adds_up_a_repeated_sku_and_sorts_by_sku() -> None:
    assert merge_lines([("PEN", 1), ("MUG", 2), ("PEN", 3)]) == [("MUG", 2), ("PEN", 4)]


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([], id="no-lines"),
        pytest.param([("MUG", 0)], id="zero"),
        pytest.param([("MUG", -1), ("MUG", 2)], id="negative-hidden-by-merge"),
        pytest.param([("MUG", MAX_QUANTITY), ("MUG", 1)], id="merged-above-maximum"),
    ],
)
def test_merge_lines_refuses(lines: list[tuple[str, int]]) -> None:
    with pytest.raises(InvalidReservation):
        merge_lines(lines)


def test_merge_lines_checks_skus() -> None:
    with pytest.raises(InvalidSku):
        merge_lines([("not a sku", 1)])


@pytest.mark.parametrize(
    "xid", [pytest.param("", id="empty"), pytest.param("  ", id="blank"), pytest.param("x" * 65)]
)
def test_check_xid_refuses(xid: str) -> None:
    with pytest.raises(InvalidReservation):
        check_xid(xid)


def test_tcc_owner() -> None:
    assert tcc_owner(check_xid("x" * 64)) == "tcc:" + "x" * 64


def test_plan_lines_plans_every_line() -> None:
    levels = [_level("MUG", "a", 2), _level("MUG", "b", 5), _level("PEN", "a", 1)]

    plans = plan_lines([("MUG", 6), ("PEN", 1)], levels)

    assert plans == {"MUG": [Allocation("a", 1), Allocation("b", 5)], "PEN": [Allocation("a", 1)]}


def test_plan_lines_names_every_short_sku() -> None:
    levels = [_level("MUG", "a", 2), _level("PEN", "a", 9)]

    with pytest.raises(InsufficientStock) as raised:
        plan_lines([("CUP", 1), ("MUG", 3), ("PEN", 9)], levels)

    assert raised.value.items == (Shortage("CUP", 1, 0), Shortage("MUG", 3, 2))
    assert (raised.value.sku, raised.value.requested, raised.value.available) == ("CUP", 1, 0)
    assert raised.value.code == "inventory.insufficient_stock"
    assert raised.value.extra == {
        "sku": "CUP",
        "requested": 1,
        "available": 0,
        "items": [
            {"sku": "CUP", "requested": 1, "available": 0},
            {"sku": "MUG", "requested": 3, "available": 2},
        ],
    }


def test_a_single_sku_shortage_keeps_its_shape() -> None:
    refused = InsufficientStock(sku="MUG", requested=3, available=2)

    assert refused.items == (Shortage("MUG", 3, 2),)
    assert refused.extra == {"sku": "MUG", "requested": 3, "available": 2}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(ReservationStatus.ACTIVE, ConfirmStep.SELL, id="active"),
        pytest.param(ReservationStatus.EXPIRED, ConfirmStep.RETAKE, id="expired"),
        pytest.param(ReservationStatus.COMMITTED, ConfirmStep.NOTHING, id="committed"),
    ],
)
def test_confirm_step(status: ReservationStatus, expected: ConfirmStep) -> None:
    assert confirm_step(status) is expected


def test_confirm_step_refuses_a_released_reservation() -> None:
    with pytest.raises(ReservationExpired) as raised:
        confirm_step(ReservationStatus.RELEASED)
    assert raised.value.code == "inventory.reservation_expired"
