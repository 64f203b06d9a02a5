"""Cart rules without I/O: access, line limits, stock and currency checks, merging, repricing."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from ironcart.cart.domain import (
    MAX_LINE_QUANTITY,
    MAX_LINES,
    Access,
    Cart,
    CartLine,
    CartStatus,
    CurrencyMismatch,
    InsufficientStock,
    InvalidQuantity,
    LineChange,
    LineNotFound,
    LineQuantityLimit,
    Offer,
    TooManyLines,
    UnknownSku,
    add_line,
    apply_changes,
    new_cart_token,
    plan_merge,
    price_cart,
    remove_line,
    set_quantity,
    token_digest,
)
from ironcart.platform.money import Money

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TOKEN = "t" * 43


def usd(amount: str) -> Money:
    return Money.of(amount, "USD")


def line(
    sku: str,
    quantity: int,
    price: str = "10.00",
    *,
    currency: str = "USD",
    available: int = 50,
    minutes: int = 0,
) -> CartLine:
    return CartLine(
        sku, quantity, Money.of(price, currency), available, NOW + timedelta(minutes=minutes)
    )


def cart(
    *lines: CartLine,
    owner: str | None = None,
    status: CartStatus = CartStatus.OPEN,
    token: str | None = TOKEN,
) -> Cart:
    return Cart(
        id="cart-1",
        owner_id=owner,
        status=status,
        version=3,
        created_at=NOW,
        updated_at=NOW,
        token_digest=None if owner else token_digest(token) if token else None,
        lines=tuple(lines),
    )


def offer(
    sku: str, price: str | None = "10.00", available: int = 50, currency: str = "USD"
) -> Offer:
    return Offer(
        sku, None if price is None else Money.of(price, currency), available, "Mug", "Blue"
    )


# -- tokens and access ------------------------------------------------------------------------


def test_tokens_are_long_random_and_stored_as_sha256() -> None:
    tokens = {new_cart_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(token) >= 43 for token in tokens)
    token = tokens.pop()
    assert token_digest(token) == hashlib.sha256(token.encode()).hexdigest()


@pytest.mark.parametrize(
    ("subject", "access", "reachable"),
    [
        pytest.param(cart(), Access(token=TOKEN), True, id="anonymous-with-its-token"),
        pytest.param(cart(), Access(token="x" * 43), False, id="anonymous-wrong-token"),
        pytest.param(cart(), Access(), False, id="anonymous-no-token"),
        pytest.param(cart(), Access(user_id="u1"), False, id="anonymous-signed-in-no-token"),
        pytest.param(cart(), Access(token=TOKEN + "x" * 300), False, id="oversized-token"),
        pytest.param(cart(owner="u1"), Access(user_id="u1"), True, id="owner"),
        pytest.param(cart(owner="u1"), Access(user_id="u2"), False, id="another-customer"),
        pytest.param(cart(owner="u1"), Access(token=TOKEN), False, id="customer-cart-by-token"),
        pytest.param(
            cart(owner="u1", status=CartStatus.CLOSED),
            Access(user_id="u1"),
            False,
            id="closed-for-owner",
        ),
        pytest.param(
            cart(status=CartStatus.MERGED), Access(token=TOKEN), False, id="merged-for-token"
        ),
    ],
)
def test_who_reaches_a_cart(subject: Cart, access: Access, reachable: bool) -> None:
    assert subject.reachable_by(access) is reachable


# -- adding -----------------------------------------------------------------------------------


def test_adding_a_new_line_keeps_the_price_seen() -> None:
    change = add_line(cart(), offer=offer("MUG", "12.50", available=7), quantity=2)
    assert change == LineChange("MUG", 2, usd("12.50"), 7, new=True)


def test_adding_more_of_a_line_sums_and_sees_the_current_price() -> None:
    change = add_line(cart(line("MUG", 3, "10.00")), offer=offer("MUG", "11.00"), quantity=4)
    assert change == LineChange("MUG", 7, usd("11.00"), 50, new=False)


@pytest.mark.parametrize(
    "quantity", [0, -1, MAX_LINE_QUANTITY + 1], ids=["zero", "negative", "100"]
)
def test_adding_refuses_quantities_out_of_range(quantity: int) -> None:
    with pytest.raises(InvalidQuantity):
        add_line(cart(), offer=offer("MUG"), quantity=quantity)


def test_adding_an_unknown_or_unpublished_sku_is_refused() -> None:
    with pytest.raises(UnknownSku) as raised:
        add_line(cart(), offer=offer("GONE", None), quantity=1)
    assert raised.value.code == "cart.unknown_sku"
    assert raised.value.extra == {"sku": "GONE"}


def test_a_line_is_capped_at_the_maximum_quantity() -> None:
    assert (
        add_line(cart(line("MUG", 98)), offer=offer("MUG", available=500), quantity=1).quantity
        == MAX_LINE_QUANTITY
    )
    with pytest.raises(LineQuantityLimit) as raised:
        add_line(cart(line("MUG", 99)), offer=offer("MUG", available=500), quantity=1)
    assert raised.value.extra == {"sku": "MUG", "requested": 100, "maximum": MAX_LINE_QUANTITY}


def test_adding_beyond_available_stock_is_refused() -> None:
    with pytest.raises(InsufficientStock) as raised:
        add_line(cart(line("MUG", 3)), offer=offer("MUG", available=4), quantity=2)
    assert raised.value.code == "cart.insufficient_stock"
    assert raised.value.extra == {"sku": "MUG", "requested": 5, "available": 4}


def test_a_cart_holds_one_currency() -> None:
    with pytest.raises(CurrencyMismatch) as raised:
        add_line(cart(line("MUG", 1)), offer=offer("TEA", "5.00", currency="EUR"), quantity=1)
    assert raised.value.extra == {"sku": "TEA", "currency": "EUR", "cart_currency": "USD"}


def test_a_cart_holds_at_most_max_lines() -> None:
    full = cart(*(line(f"SKU-{i}", 1) for i in range(MAX_LINES)))
    with pytest.raises(TooManyLines):
        add_line(full, offer=offer("ONE-MORE"), quantity=1)
    assert add_line(full, offer=offer("SKU-0"), quantity=1).quantity == 2  # existing line: fine


# -- changing and removing --------------------------------------------------------------------


def test_lowering_a_quantity_needs_neither_stock_nor_publication() -> None:
    change = set_quantity(cart(line("MUG", 5, available=9)), sku="MUG", quantity=2, offer=None)
    assert change == LineChange("MUG", 2, usd("10.00"), 9)


def test_quantity_zero_removes_the_line() -> None:
    assert set_quantity(cart(line("MUG", 5)), sku="MUG", quantity=0, offer=None).quantity == 0


def test_raising_a_quantity_is_checked_against_stock_and_sale() -> None:
    subject = cart(line("MUG", 2))
    assert set_quantity(subject, sku="MUG", quantity=6, offer=offer("MUG", available=6)) == (
        LineChange("MUG", 6, usd("10.00"), 6)
    )
    with pytest.raises(InsufficientStock):
        set_quantity(subject, sku="MUG", quantity=7, offer=offer("MUG", available=6))
    with pytest.raises(UnknownSku):
        set_quantity(subject, sku="MUG", quantity=3, offer=offer("MUG", None))


@pytest.mark.parametrize("quantity", [-1, MAX_LINE_QUANTITY + 1], ids=["negative", "100"])
def test_setting_refuses_quantities_out_of_range(quantity: int) -> None:
    with pytest.raises(InvalidQuantity):
        set_quantity(cart(line("MUG", 1)), sku="MUG", quantity=quantity, offer=offer("MUG"))


def test_changing_a_line_that_is_not_there() -> None:
    with pytest.raises(LineNotFound):
        set_quantity(cart(), sku="MUG", quantity=1, offer=offer("MUG"))
    with pytest.raises(LineNotFound):
        remove_line(cart(line("TEA", 1)), sku="MUG")


def test_apply_changes_updates_inserts_and_deletes_in_added_order() -> None:
    before = cart(line("A", 1, minutes=0), line("B", 2, minutes=1), line("C", 3, minutes=2))
    later = NOW + timedelta(hours=1)
    after = apply_changes(
        before,
        [
            LineChange("B", 0, usd("10.00"), 50),
            LineChange("A", 4, usd("9.00"), 40),
            LineChange("D", 1, usd("1.00"), 5, new=True),
        ],
        version=4,
        now=later,
    )
    assert [(x.sku, x.quantity, x.price_seen) for x in after.lines] == [
        ("A", 4, usd("9.00")),
        ("C", 3, usd("10.00")),
        ("D", 1, usd("1.00")),
    ]
    assert after.lines[0].added_at == NOW  # an updated line keeps its place
    assert (after.version, after.updated_at) == (4, later)


# -- merging ----------------------------------------------------------------------------------


def test_merge_sums_quantities_and_adds_new_lines() -> None:
    target = cart(line("A", 2), line("B", 98), owner="u1")
    source = cart(line("A", 3, "8.00"), line("B", 5), line("C", 1, "4.00"))
    plan = plan_merge(target, source)
    assert plan.changes == [
        LineChange("A", 5, usd("10.00"), 50),  # the customer's line keeps its price seen
        LineChange("B", MAX_LINE_QUANTITY, usd("10.00"), 50),  # capped
        LineChange("C", 1, usd("4.00"), 50, new=True),
    ]
    assert plan.dropped == []


def test_merge_drops_what_does_not_fit() -> None:
    target = cart(*(line(f"SKU-{i}", 1) for i in range(MAX_LINES - 1)), owner="u1")
    source = cart(
        line("EUR-1", 1, currency="EUR"),
        line("NEW-1", 1),
        line("NEW-2", 1),
        line("SKU-0", MAX_LINE_QUANTITY),
    )
    plan = plan_merge(target, source)
    assert [(c.sku, c.quantity, c.new) for c in plan.changes] == [
        ("NEW-1", 1, True),
        ("SKU-0", MAX_LINE_QUANTITY, False),
    ]
    assert plan.dropped == ["EUR-1", "NEW-2"]


def test_merge_into_an_empty_cart_adopts_the_currency() -> None:
    plan = plan_merge(cart(owner="u1"), cart(line("A", 1, currency="EUR"), line("B", 1)))
    assert [c.sku for c in plan.changes] == ["A"]
    assert plan.dropped == ["B"]


def test_merging_an_already_covered_line_changes_nothing() -> None:
    plan = plan_merge(cart(line("A", MAX_LINE_QUANTITY), owner="u1"), cart(line("A", 1)))
    assert plan.changes == []
    assert plan.dropped == []


# -- repricing at read time -------------------------------------------------------------------


def test_price_cart_recomputes_at_current_prices_and_stock() -> None:
    subject = cart(
        line("A", 2, "10.00", available=50, minutes=0),
        line("B", 3, "5.00", available=10, minutes=1),
        line("C", 1, "7.00", available=4, minutes=2),
    )
    priced = price_cart(
        subject,
        {
            "A": offer("A", "12.00", available=50),
            "B": offer("B", "5.00", available=2),
            "C": offer("C", None, available=4),
        },
    )
    a, b, c = priced.lines
    assert (a.price_changed, a.current_price, a.line_total) == (True, usd("12.00"), usd("24.00"))
    assert (a.availability_changed, a.insufficient_stock, a.purchasable) == (False, False, True)
    assert (b.price_changed, b.available, b.availability_changed, b.insufficient_stock) == (
        False,
        2,
        True,
        True,
    )
    assert b.line_total == usd("15.00")
    assert (c.purchasable, c.current_price, c.line_total, c.price_changed) == (
        False,
        None,
        None,
        False,
    )
    assert priced.subtotal == usd("39.00")
    assert (a.name, a.variant_name) == ("Mug", "Blue")


def test_a_line_whose_sku_now_sells_in_another_currency_is_not_purchasable() -> None:
    priced = price_cart(cart(line("A", 1)), {"A": offer("A", "9.00", currency="EUR")})
    assert priced.lines[0].purchasable is False
    assert priced.lines[0].price_changed is True
    assert priced.subtotal == usd("0.00")


def test_an_empty_cart_has_no_currency_and_no_subtotal() -> None:
    priced = price_cart(cart(), {})
    assert (priced.lines, priced.subtotal, priced.cart.currency) == ((), None, None)


def test_a_sku_the_catalog_forgot_is_shown_unavailable() -> None:
    priced = price_cart(cart(line("A", 1)), {})
    assert priced.lines[0].available == 0
    assert priced.lines[0].insufficient_stock is True
    assert priced.lines[0].purchasable is False
