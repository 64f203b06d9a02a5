"""Order rules without I/O: the state machine, totals and line merging."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ironcart.ordering.domain import (
    MAX_LINE_QUANTITY,
    TRANSITIONS,
    EmptyCheckout,
    IllegalTransition,
    OrderStatus,
    PricedItem,
    UnsellableItems,
    check_transition,
    compute_totals,
    merge_lines,
)
from ironcart.platform.money import Money

S = OrderStatus


def _item(price: str, quantity: int, currency: str = "USD") -> PricedItem:
    return PricedItem("SKU-1", "Mug", "Blue", quantity, Money.of(price, currency), 300)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (S.PENDING, S.AWAITING_PAYMENT),
        (S.PENDING, S.CANCELLED),
        (S.AWAITING_PAYMENT, S.PAID),
        (S.AWAITING_PAYMENT, S.CANCELLED),
        (S.PAID, S.CANCELLED),
        (S.PAID, S.PARTIALLY_REFUNDED),
        (S.PAID, S.PARTIALLY_FULFILLED),
        (S.FULFILLED, S.DELIVERED),
        (S.PARTIALLY_REFUNDED, S.REFUNDED),
    ],
)
def test_legal_transitions_pass(source: OrderStatus, target: OrderStatus) -> None:
    check_transition(source, target)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (S.PENDING, S.PAID),  # never paid without the capture step
        (S.CANCELLED, S.PAID),
        (S.REFUNDED, S.PAID),
        (S.DELIVERED, S.CANCELLED),  # shipped: refund, not cancel
        (S.FULFILLED, S.CANCELLED),
        (S.AWAITING_PAYMENT, S.REFUNDED),
        (S.PAID, S.PENDING),
    ],
)
def test_illegal_transitions_are_refused(source: OrderStatus, target: OrderStatus) -> None:
    with pytest.raises(IllegalTransition) as raised:
        check_transition(source, target)
    assert raised.value.extra == {"current": source.value, "target": target.value}


def test_terminal_states_have_no_way_out() -> None:
    assert TRANSITIONS[S.CANCELLED] == frozenset()
    assert TRANSITIONS[S.REFUNDED] == frozenset()
    assert set(TRANSITIONS) == set(OrderStatus)


@pytest.mark.parametrize(
    ("rate", "shipping", "expected_tax", "expected_total"),
    [
        ("0", "5.00", "0.00", "29.99"),
        ("0.2", "5.00", "6.00", "35.99"),  # 29.99 * 0.2 = 5.998 -> 6.00
        ("0.075", "0.00", "1.87", "26.86"),  # 24.99 * 0.075 = 1.87425 -> 1.87
        ("0.0498", "0.01", "1.25", "26.25"),  # 25.00 * 0.0498 = 1.245 -> 1.25 (half-even: 1.24)
    ],
    ids=["no-tax", "vat-20", "sales-tax-7.5", "half-up"],
)
def test_totals_are_server_computed_with_tax_on_goods_and_shipping(
    rate: str, shipping: str, expected_tax: str, expected_total: str
) -> None:
    items = [_item("12.49", 1), _item("12.50", 1)]
    totals = compute_totals(items, shipping=Money.of(shipping, "USD"), tax_rate=Decimal(rate))
    assert totals.subtotal == Money.of("24.99", "USD")
    assert totals.tax == Money.of(expected_tax, "USD")
    assert totals.total == Money.of(expected_total, "USD")


def test_totals_in_a_currency_without_minor_units() -> None:
    totals = compute_totals(
        [_item("1200", 3, "JPY")], shipping=Money.of("500", "JPY"), tax_rate=Decimal("0.1")
    )
    assert totals.total == Money.of("4510", "JPY")


def test_lines_are_merged_per_sku_in_first_seen_order() -> None:
    assert merge_lines([("A", 1), ("B", 2), ("A", 3)]) == [("A", 4), ("B", 2)]


def test_an_empty_checkout_and_oversized_lines_are_refused() -> None:
    with pytest.raises(EmptyCheckout):
        merge_lines([])
    with pytest.raises(UnsellableItems):
        merge_lines([("A", MAX_LINE_QUANTITY), ("A", 1)])
    with pytest.raises(EmptyCheckout):
        merge_lines([(f"S{i}", 1) for i in range(101)])
