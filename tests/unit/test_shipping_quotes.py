"""Shipping rules without I/O: which zone wins, weight bands and their edges, the free-shipping
threshold, overweight parcels (at checkout: not offered), unknown countries, and forward-only
tracking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ironcart.contracts.shipping import ShipmentCreated
from ironcart.platform.money import Money
from ironcart.platform.outbox import decode_event, encode_event
from ironcart.shipping.client import InProcessShippingClient
from ironcart.shipping.domain import (
    MAX_WEIGHT_GRAMS,
    ExceedsOrdered,
    InvalidShippingData,
    MethodNotOffered,
    Shipment,
    ShipmentStatus,
    Zone,
    check_shippable,
    check_zone,
    destination,
    method,
    quote,
    shipment_lines,
    tracked_move,
)
from ironcart.shipping.events import EVENTS
from ironcart.shipping.service import ShippingService

S = ShipmentStatus
T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def _zone(
    name: str, countries: tuple[str, ...], prefixes: tuple[str, ...] = (), **methods: object
) -> Zone:
    return Zone(
        id=f"zone-{name}",
        name=name,
        countries=countries,
        postal_prefixes=prefixes,
        methods=tuple(methods.values()),  # type: ignore[arg-type]
    )


GBP_STANDARD = method(
    code="standard",
    name="Standard",
    currency="GBP",
    bands=[(1000, Decimal("3.50")), (5000, Decimal("5.00")), (20000, Decimal("9.00"))],
    free_over=Decimal("50.00"),
)
GBP_EXPRESS = method(
    code="express", name="Express", currency="GBP", bands=[(2000, Decimal("12.00"))]
)
HIGHLANDS_STANDARD = method(
    code="standard", name="Standard (Highlands)", currency="GBP", bands=[(20000, Decimal("14.00"))]
)
EU_STANDARD = method(
    code="standard", name="EU Standard", currency="EUR", bands=[(2000, Decimal("8.00"))]
)
WORLD_STANDARD = method(
    code="world", name="International", currency="GBP", bands=[(2000, Decimal("25.00"))]
)
ZONES = [
    _zone("GB", ("GB",), standard=GBP_STANDARD, express=GBP_EXPRESS),
    _zone("GB Highlands", ("GB",), ("IV", "KW", "HS"), standard=HIGHLANDS_STANDARD),
    _zone("GB Inverness centre", ("GB",), ("IV1",), standard=GBP_EXPRESS),
    _zone("EU", ("FR", "DE", "IE"), standard=EU_STANDARD),
    _zone("Rest of world", (), world=WORLD_STANDARD),
]


def _offers(
    country: str, postal: str, grams: int, subtotal: str, currency: str = "GBP"
) -> list[tuple[str, str, str]]:
    where = destination(country, postal)
    found = quote(ZONES, where, weight_grams=grams, subtotal=Money.of(subtotal, currency))
    return [(offer.zone_name, offer.method_code, str(offer.price.amount)) for offer in found]


@pytest.mark.parametrize(
    ("country", "postal", "grams", "subtotal", "expected"),
    [
        ("GB", "SW1A 1AA", 500, "10.00", [("GB", "standard", "3.50"), ("GB", "express", "12.00")]),
        ("GB", "IV2 3AB", 500, "10.00", [("GB Highlands", "standard", "14.00")]),
        ("GB", "iv1 1aa", 500, "10.00", [("GB Inverness centre", "express", "12.00")]),
        ("GB", "IV10 1AA", 500, "10.00", [("GB Inverness centre", "express", "12.00")]),
        ("GB", "", 500, "10.00", [("GB", "standard", "3.50"), ("GB", "express", "12.00")]),
        ("US", "10001", 500, "10.00", [("Rest of world", "world", "25.00")]),
        ("FR", "75001", 500, "10.00", []),
    ],
    ids=[
        "country-zone",
        "postal-prefix-beats-country",
        "longest-prefix-wins-case-insensitive",
        "prefix-matches-start-of-code",
        "no-postal-code-country-zone",
        "rest-of-world",
        "other-currency-not-offered",
    ],
)
def test_the_most_specific_zone_wins(
    country: str, postal: str, grams: int, subtotal: str, expected: list[tuple[str, str, str]]
) -> None:
    assert _offers(country, postal, grams, subtotal) == expected


def test_eu_methods_are_offered_in_euros() -> None:
    assert _offers("DE", "10115", 2000, "20.00", "EUR") == [("EU", "standard", "8.00")]


def test_no_zone_for_the_country_offers_nothing() -> None:
    zones = [zone for zone in ZONES if zone.countries]  # no rest of the world
    where = destination("JP", "100-0001")
    assert quote(zones, where, weight_grams=100, subtotal=Money.of("1", "GBP")) == []


@pytest.mark.parametrize(
    ("grams", "subtotal", "expected"),
    [
        (0, "10.00", "3.50"),
        (1000, "10.00", "3.50"),
        (1001, "10.00", "5.00"),
        (5000, "10.00", "5.00"),
        (5001, "10.00", "9.00"),
        (20000, "10.00", "9.00"),
        (20001, "10.00", None),
        (1000, "49.99", "3.50"),
        (1000, "50.00", "0.00"),
        (19000, "120.00", "0.00"),
        (20001, "500.00", None),
    ],
    ids=[
        "empty-parcel",
        "first-band-edge-inclusive",
        "just-over-first-band",
        "second-band-edge",
        "third-band",
        "last-band-edge",
        "overweight-not-offered",
        "just-under-free-threshold",
        "free-at-threshold",
        "free-over-threshold-heavy",
        "overweight-not-offered-even-if-free",
    ],
)
def test_weight_bands_and_free_threshold(grams: int, subtotal: str, expected: str | None) -> None:
    price = GBP_STANDARD.price_for(weight_grams=grams, subtotal=Money.of(subtotal, "GBP"))
    assert (None if price is None else str(price.amount)) == expected


@pytest.mark.parametrize(
    ("country", "postal"),
    [("gb", ""), ("GBR", ""), ("", ""), ("G1", ""), ("GB", "SW1A_1AA"), ("GB", "X" * 13)],
    ids=["lower-case", "alpha-3", "empty", "digit", "underscore", "postal-too-long"],
)
def test_a_malformed_destination_is_refused(country: str, postal: str) -> None:
    with pytest.raises(InvalidShippingData):
        destination(country, postal)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bands": [(2000, Decimal("1")), (1000, Decimal("2"))]},
        {"bands": [(1000, Decimal("1")), (1000, Decimal("2"))]},
        {"bands": [(0, Decimal("1"))]},
        {"bands": []},
        {"bands": [(1000, Decimal("-1"))]},
        {"bands": [(1000, Decimal("1.001"))]},
        {"bands": [(1000, Decimal("1"))], "code": "Not OK"},
        {"bands": [(1000, Decimal("1"))], "currency": "gbp"},
        {"bands": [(1000, Decimal("1"))], "free_over": Decimal("-5")},
    ],
    ids=[
        "decreasing-bands",
        "repeated-band",
        "zero-grams",
        "no-band",
        "negative-price",
        "too-many-decimals",
        "bad-code",
        "bad-currency",
        "negative-threshold",
    ],
)
def test_a_malformed_method_is_refused(kwargs: dict[str, object]) -> None:
    values: dict[str, object] = {"code": "standard", "name": "Standard", "currency": "GBP"}
    with pytest.raises(InvalidShippingData):
        method(**{**values, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("countries", "prefixes", "methods"),
    [
        (["GB", "GB"], [], [GBP_STANDARD]),
        (["UK1"], [], [GBP_STANDARD]),
        ([], ["IV"], [GBP_STANDARD]),
        (["GB"], ["IV-1"], [GBP_STANDARD]),
        (["GB"], [], []),
        (["GB"], [], [GBP_STANDARD, GBP_STANDARD]),
    ],
    ids=[
        "repeated-country",
        "bad-country",
        "prefix-without-country",
        "bad-prefix",
        "no-method",
        "repeated-method-code",
    ],
)
def test_a_malformed_zone_is_refused(
    countries: list[str], prefixes: list[str], methods: list[object]
) -> None:
    with pytest.raises(InvalidShippingData):
        check_zone(name="Z", countries=countries, postal_prefixes=prefixes, methods=methods)  # type: ignore[arg-type]


def test_zone_prefixes_are_normalised() -> None:
    name, countries, prefixes = check_zone(
        name="  GB   north ",
        countries=["GB"],
        postal_prefixes=["iv 1", "IV1", "kw"],
        methods=[GBP_EXPRESS],
    )
    assert (name, countries, prefixes) == ("GB north", ("GB",), ("IV1", "KW"))


def _shipment(status: ShipmentStatus, rank: int, status_at: datetime | None = T0) -> Shipment:
    return Shipment(
        id="s",
        order_id="o",
        customer_id="c",
        carrier="sandbox",
        status=status,
        status_rank=rank,
        version=1,
        created_at=T0,
        updated_at=T0,
        lines=(("SKU", 1),),
        status_at=status_at,
    )


LATER = T0 + timedelta(minutes=5)
EARLIER = T0 - timedelta(minutes=5)


@pytest.mark.parametrize(
    ("current", "rank", "reported", "at", "expected"),
    [
        (S.CREATED, 0, S.PICKED_UP, LATER, (S.PICKED_UP, 1)),
        (S.CREATED, 0, S.DELIVERED, LATER, (S.DELIVERED, 4)),
        (S.REQUESTED, -1, S.IN_TRANSIT, LATER, (S.IN_TRANSIT, 2)),
        (S.DELIVERED, 4, S.IN_TRANSIT, LATER, None),
        (S.IN_TRANSIT, 2, S.PICKED_UP, EARLIER, None),
        (S.IN_TRANSIT, 2, S.IN_TRANSIT, LATER, None),
        (S.IN_TRANSIT, 2, S.EXCEPTION, LATER, (S.EXCEPTION, 2)),
        (S.IN_TRANSIT, 2, S.EXCEPTION, EARLIER, None),
        (S.DELIVERED, 4, S.EXCEPTION, LATER, None),
        (S.EXCEPTION, 2, S.IN_TRANSIT, LATER, (S.IN_TRANSIT, 2)),
        (S.EXCEPTION, 2, S.IN_TRANSIT, EARLIER, None),
        (S.EXCEPTION, 2, S.DELIVERED, EARLIER, (S.DELIVERED, 4)),
        (S.EXCEPTION, 2, S.PICKED_UP, LATER, None),
        (S.FAILED, -1, S.DELIVERED, LATER, None),
        (S.CREATED, 0, S.CREATED, LATER, None),
    ],
    ids=[
        "forward",
        "skip-ahead",
        "before-label-attached",
        "late-in-transit-after-delivered",
        "older-lower-rank",
        "same-rank-repeat",
        "exception-side-state",
        "exception-that-happened-before",
        "no-exception-after-delivered",
        "resumes-after-exception",
        "no-resume-with-older-event",
        "higher-rank-leaves-exception",
        "lower-rank-does-not-leave-exception",
        "failed-is-final",
        "created-is-not-reported",
    ],
)
def test_tracking_moves_forward_only(
    current: ShipmentStatus,
    rank: int,
    reported: ShipmentStatus,
    at: datetime,
    expected: tuple[ShipmentStatus, int] | None,
) -> None:
    assert tracked_move(_shipment(current, rank), reported, occurred_at=at) == expected


def test_shipment_lines_merge_by_sku_in_lock_order() -> None:
    assert shipment_lines([("B", 1), ("A", 2), ("B", 3)]) == (("A", 2), ("B", 4))


@pytest.mark.parametrize(
    "lines",
    [[], [("A", 0)], [("A", -1)], [("", 1)], [(" A", 1)], [("A", True)]],
    ids=["empty", "zero", "negative", "empty-sku", "padded-sku", "boolean-quantity"],
)
def test_malformed_shipment_lines_are_refused(lines: list[tuple[str, int]]) -> None:
    with pytest.raises(InvalidShippingData):
        shipment_lines(lines)


@pytest.mark.parametrize(
    ("shipped", "lines", "left"),
    [({"A": 2}, [("A", 2)], 1), ({}, [("C", 1)], 0), ({"A": 3}, [("A", 1)], 0)],
    ids=["more-than-left", "not-ordered", "all-shipped"],
)
def test_over_shipping_is_refused(
    shipped: dict[str, int], lines: list[tuple[str, int]], left: int
) -> None:
    with pytest.raises(ExceedsOrdered) as raised:
        check_shippable({"A": 3, "B": 1}, shipped, lines)
    assert raised.value.extra["left"] == left


def test_shipping_events_survive_the_outbox_encoding() -> None:
    assert ShipmentCreated in EVENTS
    event = ShipmentCreated("s", "o", "c", "sandbox", "TRK1", (("A", 2), ("B", 1)), True)
    assert decode_event("ShipmentCreated", encode_event(event)) == event


class _ZonesOnly:
    """A unit of work whose zones are `ZONES` (all a quote reads)."""

    class _Zones:
        async def all(self) -> list[Zone]:
            return ZONES

    zones = _Zones()

    def reading(self) -> _ZonesOnly:
        return self

    async def __aenter__(self) -> _ZonesOnly:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None


class _Checkout:
    """What checkout asks shipping, through the client port, for a parcel to SW1A."""

    def __init__(self) -> None:
        service = ShippingService(
            uow_factory=_ZonesOnly,  # type: ignore[arg-type]
            ordering=None,  # type: ignore[arg-type]
            carriers={},
            verifiers={},
        )
        self.client = InProcessShippingClient(service)

    async def quote(self, grams: int) -> Decimal:
        return await self.client.quote(
            method_code="standard", country="GB", postal_code="SW1A 1AA",
            weight_grams=grams, subtotal=Decimal("10"), currency="GBP",
        )  # fmt: skip

    async def methods(self, grams: int) -> list[str]:
        offers = await self.client.methods(
            country="GB", postal_code="SW1A 1AA", weight_grams=grams,
            subtotal=Decimal("10"), currency="GBP",
        )  # fmt: skip
        return [offer.method_code for offer in offers]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "grams",
    [
        pytest.param(20001, id="above-every-band"),
        pytest.param(MAX_WEIGHT_GRAMS + 1, id="above-the-max-weight"),
        pytest.param(10**12, id="far-above"),
    ],
)
async def test_an_overweight_parcel_at_checkout_is_a_method_not_offered(grams: int) -> None:
    checkout = _Checkout()

    with pytest.raises(MethodNotOffered) as raised:
        await checkout.quote(grams)

    assert raised.value.extra == {"method": "standard"}
    assert await checkout.methods(grams) == []
    assert await checkout.quote(20000) == Decimal("9.00")
    assert await checkout.methods(2000) == ["standard", "express"]
