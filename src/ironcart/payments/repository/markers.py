"""What guards the moves: the TCC fences, the webhook events seen, and the outbox."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.payments.domain import BRANCH
from ironcart.payments.repository.tables import (
    payments_outbox,
    payments_tcc_fences,
    rowcount,
    webhook_events,
)
from ironcart.platform.outbox import record
from ironcart.platform.txn.fence import (
    FenceState,
    begin_cancel,
    begin_confirm,
    begin_try,
    insert_if_absent,
)


class SqlFenceRepository:
    """This participant's TCC fences (`platform.txn.fence`), for the payment branch."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def begin_try(self, xid: str) -> bool:
        return await begin_try(self._session, payments_tcc_fences, xid=xid, branch=BRANCH)

    async def begin_confirm(self, xid: str) -> bool:
        return await begin_confirm(self._session, payments_tcc_fences, xid=xid, branch=BRANCH)

    async def begin_cancel(self, xid: str) -> bool:
        return await begin_cancel(self._session, payments_tcc_fences, xid=xid, branch=BRANCH)

    async def hold_tried(self, xid: str, *, now: datetime) -> bool:
        """Lock the branch's fence if it is still `tried` (False: it is not): a cancel's
        `tried -> cancelled` then waits for this transaction, and sees what it wrote."""
        table = payments_tcc_fences
        result = await self._session.execute(
            update(table)
            .where(
                table.c.xid == xid,
                table.c.branch == BRANCH,
                table.c.state == FenceState.TRIED.value,
            )
            .values(updated_at=now)
        )
        return rowcount(result) == 1

    async def state(self, xid: str) -> FenceState | None:
        table = payments_tcc_fences
        value = await self._session.scalar(
            select(table.c.state).where(table.c.xid == xid, table.c.branch == BRANCH)
        )
        return None if value is None else FenceState(value)


class SqlWebhookEventRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add_if_absent(
        self,
        *,
        provider: str,
        event_id: str,
        event_type: str,
        provider_payment_id: str | None,
        now: datetime,
    ) -> bool:
        """Remember an event; False when it was seen before (a duplicate delivery)."""
        result = await self._session.execute(
            insert_if_absent(self._session, webhook_events).values(
                provider=provider,
                event_id=event_id,
                event_type=event_type,
                provider_payment_id=provider_payment_id,
                received_at=now,
            )
        )
        return rowcount(result) == 1


class SqlOutbox:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def record(self, event: object) -> str:
        """Into the outbox, on subject `payments.<EventType>` (under the bus prefix)."""
        subject = f"payments.{type(event).__name__}"
        return await record(self._session, payments_outbox, event, subject=subject)
