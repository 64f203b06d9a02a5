"""What ordering publishes through its outbox (`ordering_outbox`), written in the same
transaction as the order change: `OrderPlaced`, `OrderPaid`, `OrderCancelled`,
`OrderRefunded` and `OrderStatusChanged` (every transition, with who and why).

It consumes shipping's `ShipmentCreated` and `ShipmentDelivered` (the order follows its
shipments); they are registered here too, so a process running ordering alone decodes them."""

from __future__ import annotations

from ironcart.contracts.ordering import (
    OrderCancelled,
    OrderPaid,
    OrderPlaced,
    OrderRefunded,
    OrderStatusChanged,
)
from ironcart.contracts.shipping import ShipmentCreated, ShipmentDelivered
from ironcart.platform.outbox import register_event

EVENTS = (OrderPlaced, OrderPaid, OrderCancelled, OrderRefunded, OrderStatusChanged)
CONSUMED = (ShipmentCreated, ShipmentDelivered)
for _event in (*EVENTS, *CONSUMED):
    register_event(_event)
