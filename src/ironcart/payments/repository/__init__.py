"""Payments' tables, their queries and the unit of work. Only this context touches `payments_*`.

Every status change is a conditional UPDATE (`... WHERE status IN (<allowed sources>)`)
checked by row count, so two writers (an API response and a webhook, a confirm and a
cancel) can never both apply a move, and a status never moves backwards. Refunds reserve
their amount on the payment row with one conditional UPDATE before the provider is asked,
so concurrent refunds can never add up to more than was captured.

tables.py    the tables (declared on the shared metadata) and row mappers
payments.py  payments: status moves, refund holds, reconciliation's query
refunds.py   refunds and their settlement
markers.py   TCC fences, webhook events seen (deduplication), the outbox
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.payments.repository.markers import (
    SqlFenceRepository,
    SqlOutbox,
    SqlWebhookEventRepository,
)
from ironcart.payments.repository.payments import SqlPaymentRepository
from ironcart.payments.repository.refunds import SqlRefundRepository
from ironcart.payments.repository.tables import (
    payments,
    payments_outbox,
    payments_tcc_fences,
    refunds,
    webhook_events,
)
from ironcart.platform.database import UnitOfWork


class PaymentsUnitOfWork(UnitOfWork):
    payments: SqlPaymentRepository
    refunds: SqlRefundRepository
    fences: SqlFenceRepository
    webhook_events: SqlWebhookEventRepository
    outbox: SqlOutbox

    def _open_repositories(self, session: AsyncSession) -> None:
        self.payments = SqlPaymentRepository(session)
        self.refunds = SqlRefundRepository(session)
        self.fences = SqlFenceRepository(session)
        self.webhook_events = SqlWebhookEventRepository(session)
        self.outbox = SqlOutbox(session)


__all__ = [
    "PaymentsUnitOfWork",
    "payments",
    "payments_outbox",
    "payments_tcc_fences",
    "refunds",
    "webhook_events",
]
