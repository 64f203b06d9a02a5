"""Shipping HTTP API: zones (staff, versioned, `If-Match` on writes), quotes (public),
shipments (staff create; the owner or staff read), and the carriers' webhooks."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Request, Response

from ironcart.contracts.identity import Principal
from ironcart.platform.http.auth import CurrentUser, StaffOnly
from ironcart.platform.http.preconditions import required_version, version_etag
from ironcart.platform.security.webhooks import MAX_HEADER_LENGTH
from ironcart.shipping.domain import CARRIER_PATTERN, Zone
from ironcart.shipping.sandbox_carrier import SIGNATURE_HEADER
from ironcart.shipping.schemas import (
    QuoteList,
    QuoteRead,
    QuoteRequest,
    ShipmentCreate,
    ShipmentList,
    ShipmentRead,
    WebhookReceived,
    ZoneList,
    ZoneRead,
    ZoneWrite,
)
from ironcart.shipping.service import ShippingService
from ironcart.shipping.zoning import ZoneDraft

NO_STORE = "no-store"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,36}$"

router = APIRouter(tags=["shipping"])


async def get_shipping(request: Request) -> ShippingService:
    service: ShippingService = request.app.state.container.shipping
    return service


Shipping = Annotated[ShippingService, Depends(get_shipping)]
ZoneId = Annotated[str, Path(pattern=ID_PATTERN)]
OrderId = Annotated[str, Path(pattern=ID_PATTERN)]
ShipmentId = Annotated[str, Path(pattern=ID_PATTERN)]
Carrier = Annotated[str, Path(pattern=CARRIER_PATTERN)]
Signature = Annotated[str | None, Header(alias=SIGNATURE_HEADER, max_length=MAX_HEADER_LENGTH)]


def _own(principal: Principal) -> str | None:
    """Staff may see any shipment; a customer only those of their own orders."""
    return None if principal.has_scope("staff") else principal.user_id


def _zone_response(zone: Zone, response: Response) -> ZoneRead:
    response.headers["ETag"] = version_etag(zone.version)
    response.headers["Cache-Control"] = NO_STORE
    return ZoneRead.of(zone)


def _draft(body: ZoneWrite) -> ZoneDraft:
    return ZoneDraft(
        name=body.name,
        countries=body.countries,
        postal_prefixes=body.postal_prefixes,
        methods=[item.to_domain() for item in body.methods],
    )


@router.get("/api/v1/shipping/zones", response_model=ZoneList)
async def list_zones(_staff: StaffOnly, shipping: Shipping, response: Response) -> ZoneList:
    """Staff: every zone with its methods, by name."""
    response.headers["Cache-Control"] = NO_STORE
    return ZoneList(data=[ZoneRead.of(zone) for zone in await shipping.list_zones()])


@router.post("/api/v1/shipping/zones", response_model=ZoneRead, status_code=201)
async def create_zone(
    body: ZoneWrite, _staff: StaffOnly, shipping: Shipping, response: Response
) -> ZoneRead:
    """Staff: a new zone with its methods; 409 if the name is taken."""
    return _zone_response(await shipping.create_zone(_draft(body)), response)


@router.get("/api/v1/shipping/zones/{zone_id}", response_model=ZoneRead)
async def get_zone(
    zone_id: ZoneId, _staff: StaffOnly, shipping: Shipping, response: Response
) -> ZoneRead:
    """Staff: one zone, its version as the ETag."""
    return _zone_response(await shipping.get_zone(zone_id), response)


@router.put("/api/v1/shipping/zones/{zone_id}", response_model=ZoneRead)
async def replace_zone(
    zone_id: ZoneId,
    body: ZoneWrite,
    request: Request,
    _staff: StaffOnly,
    shipping: Shipping,
    response: Response,
) -> ZoneRead:
    """Staff: replace the zone and its methods; `If-Match` required (428), stale: 412."""
    version = required_version(request)
    zone = await shipping.update_zone(zone_id, _draft(body), expected_version=version)
    return _zone_response(zone, response)


@router.delete("/api/v1/shipping/zones/{zone_id}", status_code=204)
async def delete_zone(
    zone_id: ZoneId, request: Request, _staff: StaffOnly, shipping: Shipping
) -> Response:
    """Staff: remove the zone; `If-Match` required (428), stale: 412."""
    await shipping.delete_zone(zone_id, expected_version=required_version(request))
    return Response(status_code=204)


@router.post("/api/v1/shipping/quotes", response_model=QuoteList)
async def quote(body: QuoteRequest, shipping: Shipping, response: Response) -> QuoteList:
    """The methods offered for a destination and parcel, with their prices (maybe none)."""
    response.headers["Cache-Control"] = NO_STORE
    offers = await shipping.quote(
        country=body.country,
        postal_code=body.postal_code,
        weight_grams=body.weight_grams,
        subtotal=Decimal(body.subtotal),
        currency=body.currency,
    )
    return QuoteList(data=[QuoteRead.of(offer) for offer in offers])


@router.post("/api/v1/orders/{order_id}/shipments", response_model=ShipmentRead, status_code=201)
async def create_shipment(
    order_id: OrderId, body: ShipmentCreate, _staff: StaffOnly, shipping: Shipping
) -> ShipmentRead:
    """Staff: ship some or all of a paid order's lines; 409 beyond what is left to ship."""
    shipment = await shipping.create_shipment(
        order_id=order_id,
        lines=[(line.sku, line.quantity) for line in body.lines],
        carrier=body.carrier,
    )
    return ShipmentRead.of(shipment)


@router.get("/api/v1/orders/{order_id}/shipments", response_model=ShipmentList)
async def list_shipments(
    order_id: OrderId, user: CurrentUser, shipping: Shipping, response: Response
) -> ShipmentList:
    """The shipments of one of the customer's orders (staff: any order); 404 for others'."""
    response.headers["Cache-Control"] = NO_STORE
    found = await shipping.shipments_for_order(order_id=order_id, customer_id=_own(user))
    return ShipmentList(data=[ShipmentRead.of(shipment) for shipment in found])


@router.get("/api/v1/shipments/{shipment_id}", response_model=ShipmentRead)
async def get_shipment(
    shipment_id: ShipmentId, user: CurrentUser, shipping: Shipping, response: Response
) -> ShipmentRead:
    """One shipment with its tracking history: the order's owner or staff; 404 for others."""
    response.headers["Cache-Control"] = NO_STORE
    shipment = await shipping.get_shipment(shipment_id=shipment_id, customer_id=_own(user))
    return ShipmentRead.of(shipment)


@router.post("/api/v1/shipping/webhooks/{carrier}", response_model=WebhookReceived)
async def receive_webhook(
    carrier: Carrier, request: Request, shipping: Shipping, signature: Signature = None
) -> WebhookReceived:
    """A signed carrier tracking event. A repeated delivery is acknowledged and changes nothing."""
    applied = await shipping.handle_webhook(
        carrier=carrier, body=await request.body(), signature_header=signature
    )
    return WebhookReceived(received=True, duplicate=not applied)
