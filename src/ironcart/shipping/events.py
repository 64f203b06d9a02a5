"""What shipping publishes through its outbox (`shipping_outbox`), written in the transaction
of the change: `ShipmentCreated` when the carrier labelled a shipment, `ShipmentDelivered`
when a carrier event moved one to delivered (once per shipment: the move is conditional;
again when the label of a shipment delivered before its label was recorded comes in)."""

from __future__ import annotations

from ironcart.contracts.shipping import ShipmentCreated, ShipmentDelivered
from ironcart.platform.outbox import register_event

EVENTS = (ShipmentCreated, ShipmentDelivered)
for _event in EVENTS:
    register_event(_event)
