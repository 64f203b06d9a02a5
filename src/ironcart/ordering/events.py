"""What ordering publishes through its outbox (`ordering_outbox`), written in the same
transaction as the order change: `OrderPlaced`, `OrderPaid`, `OrderCancelled`,
`OrderRefunded` and `OrderStatusChanged` (every transition, with who and why)."""

from __future__ import annotations

from ironcart.contracts.ordering import (
    OrderCancelled,
    OrderPaid,
    OrderPlaced,
    OrderRefunded,
    OrderStatusChanged,
)
from ironcart.platform.outbox import register_event

EVENTS = (OrderPlaced, OrderPaid, OrderCancelled, OrderRefunded, OrderStatusChanged)
for _event in EVENTS:
    register_event(_event)
