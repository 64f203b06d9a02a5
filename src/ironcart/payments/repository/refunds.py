"""Refunds: one row per (order, idempotency key), settled once."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.payments.domain import Refund, RefundStatus
from ironcart.payments.repository.tables import refund_of, refunds, rowcount
from ironcart.platform.txn.fence import insert_if_absent


class SqlRefundRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add_if_absent(self, refund: Refund) -> bool:
        """Insert the refund; False when its (order, idempotency key) exists already."""
        result = await self._session.execute(
            insert_if_absent(self._session, refunds).values(
                id=refund.id,
                payment_id=refund.payment_id,
                order_id=refund.order_id,
                amount_minor=refund.amount.to_minor(),
                currency=refund.amount.currency,
                status=refund.status.value,
                idempotency_key=refund.idempotency_key,
                provider_refund_id=None,
                failure_code=None,
                created_at=refund.created_at,
                updated_at=refund.updated_at,
            )
        )
        return rowcount(result) == 1

    async def get(self, refund_id: str) -> Refund | None:
        row = (
            await self._session.execute(select(refunds).where(refunds.c.id == refund_id))
        ).first()
        return None if row is None else refund_of(row)

    async def get_by_key(self, order_id: str, idempotency_key: str) -> Refund | None:
        query = select(refunds).where(
            refunds.c.order_id == order_id, refunds.c.idempotency_key == idempotency_key
        )
        row = (await self._session.execute(query)).first()
        return None if row is None else refund_of(row)

    async def settle(
        self,
        refund_id: str,
        status: RefundStatus,
        *,
        now: datetime,
        provider_refund_id: str | None = None,
        failure_code: str | None = None,
    ) -> bool:
        """Move a pending refund to its outcome; False if it was settled already."""
        result = await self._session.execute(
            update(refunds)
            .where(refunds.c.id == refund_id, refunds.c.status == RefundStatus.PENDING.value)
            .values(
                status=status.value,
                provider_refund_id=provider_refund_id,
                failure_code=None if failure_code is None else failure_code[:64],
                updated_at=now,
            )
        )
        return rowcount(result) == 1

    async def pending(self, *, before: datetime, limit: int) -> list[Refund]:
        query = (
            select(refunds)
            .where(refunds.c.status == RefundStatus.PENDING.value, refunds.c.updated_at < before)
            .order_by(refunds.c.updated_at)
            .limit(limit)
        )
        return [refund_of(row) for row in await self._session.execute(query)]
