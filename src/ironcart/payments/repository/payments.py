"""Payments: status moves as conditional UPDATEs, and the refund amounts held on a payment."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from ironcart.payments.domain import (
    CAPTURED_STATUSES,
    PENDING_STATUSES,
    SOURCES,
    Payment,
    PaymentStatus,
)
from ironcart.payments.repository.tables import payment_of, payments, rowcount


class SqlPaymentRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, payment: Payment) -> None:
        await self._session.execute(
            insert(payments).values(
                id=payment.id,
                order_id=payment.order_id,
                xid=payment.xid,
                provider=payment.provider,
                provider_payment_id=payment.provider_payment_id,
                status=payment.status.value,
                amount_minor=payment.amount.to_minor(),
                currency=payment.currency,
                amount_captured_minor=payment.amount_captured_minor,
                amount_refunded_minor=payment.amount_refunded_minor,
                amount_refund_pending_minor=payment.amount_refund_pending_minor,
                authorize_key=payment.authorize_key,
                decline_code=payment.decline_code,
                version=payment.version,
                created_at=payment.created_at,
                updated_at=payment.updated_at,
            )
        )

    async def get(self, payment_id: str) -> Payment | None:
        return await self._one(payments.c.id == payment_id)

    async def get_by_xid(self, xid: str) -> Payment | None:
        return await self._one(payments.c.xid == xid)

    async def get_by_provider_id(self, provider: str, provider_payment_id: str) -> Payment | None:
        return await self._one(
            (payments.c.provider == provider)
            & (payments.c.provider_payment_id == provider_payment_id)
        )

    async def _one(self, condition: ColumnElement[bool]) -> Payment | None:
        row = (await self._session.execute(select(payments).where(condition))).first()
        return None if row is None else payment_of(row)

    async def list_for_order(self, order_id: str) -> list[Payment]:
        """Every payment of the order (one per checkout attempt), oldest first."""
        query = (
            select(payments)
            .where(payments.c.order_id == order_id)
            .order_by(payments.c.created_at, payments.c.id)
        )
        return [payment_of(row) for row in await self._session.execute(query)]

    async def captured_for_order(self, order_id: str) -> Payment | None:
        """The order's captured payment (a checkout captures at most one), newest first."""
        query = (
            select(payments)
            .where(
                payments.c.order_id == order_id,
                payments.c.status.in_([status.value for status in CAPTURED_STATUSES]),
            )
            .order_by(payments.c.created_at.desc(), payments.c.id.desc())
            .limit(1)
        )
        row = (await self._session.execute(query)).first()
        return None if row is None else payment_of(row)

    async def move(
        self,
        payment_id: str,
        target: PaymentStatus,
        *,
        now: datetime,
        provider_payment_id: str | None = None,
        decline_code: str | None = None,
        amount_captured_minor: int | None = None,
        sources: frozenset[PaymentStatus] | None = None,
    ) -> bool:
        """Move to `target` if the payment is in one of its sources (by default, every status
        the domain allows `target` from); False if it is not."""
        values: dict[str, Any] = {
            "status": target.value,
            "version": payments.c.version + 1,
            "updated_at": now,
        }
        if provider_payment_id is not None:
            values["provider_payment_id"] = provider_payment_id
        if decline_code is not None:
            values["decline_code"] = decline_code[:64]
        if amount_captured_minor is not None:
            values["amount_captured_minor"] = amount_captured_minor
        allowed = [status.value for status in (sources or SOURCES[target])]
        result = await self._session.execute(
            update(payments)
            .where(payments.c.id == payment_id, payments.c.status.in_(allowed))
            .values(**values)
        )
        return rowcount(result) == 1

    async def attach_provider_id(
        self, payment_id: str, provider_payment_id: str, *, now: datetime
    ) -> bool:
        """Record the provider's id of a payment that had none (found after it was given up)."""
        result = await self._session.execute(
            update(payments)
            .where(payments.c.id == payment_id, payments.c.provider_payment_id.is_(None))
            .values(
                provider_payment_id=provider_payment_id,
                version=payments.c.version + 1,
                updated_at=now,
            )
        )
        return rowcount(result) == 1

    async def reserve_refund(self, payment_id: str, amount_minor: int, *, now: datetime) -> bool:
        """Hold `amount_minor` of what is left to refund; False if that much is not left."""
        left = (
            payments.c.amount_captured_minor
            - payments.c.amount_refunded_minor
            - payments.c.amount_refund_pending_minor
        )
        result = await self._session.execute(
            update(payments)
            .where(
                payments.c.id == payment_id,
                payments.c.status.in_([status.value for status in CAPTURED_STATUSES]),
                left >= amount_minor,
            )
            .values(
                amount_refund_pending_minor=payments.c.amount_refund_pending_minor + amount_minor,
                version=payments.c.version + 1,
                updated_at=now,
            )
        )
        return rowcount(result) == 1

    async def settle_refund(
        self, payment_id: str, amount_minor: int, *, succeeded: bool, now: datetime
    ) -> None:
        """A held refund amount was refunded (`succeeded`) or given back; status follows."""
        refunded = payments.c.amount_refunded_minor + (amount_minor if succeeded else 0)
        status = case(
            (refunded <= 0, PaymentStatus.CAPTURED.value),
            (refunded >= payments.c.amount_captured_minor, PaymentStatus.REFUNDED.value),
            else_=PaymentStatus.PARTIALLY_REFUNDED.value,
        )
        result = await self._session.execute(
            update(payments)
            .where(
                payments.c.id == payment_id,
                payments.c.amount_refund_pending_minor >= amount_minor,
            )
            # MySQL evaluates SET left to right with the new values: status comes first.
            .ordered_values(
                (payments.c.status, status),
                (payments.c.amount_refunded_minor, refunded),
                (
                    payments.c.amount_refund_pending_minor,
                    payments.c.amount_refund_pending_minor - amount_minor,
                ),
                (payments.c.version, payments.c.version + 1),
                (payments.c.updated_at, now),
            )
        )
        if rowcount(result) != 1:
            raise RuntimeError(f"payment {payment_id} holds less pending refund than settled")

    async def pending(self, *, before: datetime, limit: int) -> list[Payment]:
        """Payments left authorizing or capturing since before `before` (reconciliation)."""
        query = (
            select(payments)
            .where(
                payments.c.status.in_([status.value for status in PENDING_STATUSES]),
                payments.c.updated_at < before,
            )
            .order_by(payments.c.updated_at)
            .limit(limit)
        )
        return [payment_of(row) for row in await self._session.execute(query)]
