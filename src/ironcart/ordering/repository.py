"""Ordering's tables and queries. Only this context touches `ordering_*` tables.

Status changes are conditional UPDATEs (`WHERE id = :id AND status = :from`) checked by
row count, so two actors (a customer's cancel and the checkout's confirm, say) cannot both
move the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    and_,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

import ironcart.ordering.events  # noqa: F401 - registers the events the outbox carries
from ironcart.ordering.domain import Order, OrderLine, OrderStatus, Transition
from ironcart.platform.database import Timestamp, UnitOfWork, metadata
from ironcart.platform.money import Money
from ironcart.platform.outbox import outbox_table
from ironcart.platform.txn.fence import insert_if_absent

orders = Table(
    "ordering_orders",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("customer_id", String(36), nullable=False),
    Column("status", String(24), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("subtotal_minor", BigInteger, nullable=False),
    Column("shipping_minor", BigInteger, nullable=False),
    Column("tax_minor", BigInteger, nullable=False),
    Column("total_minor", BigInteger, nullable=False),
    Column("refunded_minor", BigInteger, nullable=False),
    Column("shipping_method", String(32), nullable=False),
    # Personal data: the address JSON sealed with AES-GCM (platform.security.crypto).
    Column("shipping_address", LargeBinary, nullable=False),
    Column("xid", String(64), nullable=False, unique=True),
    Column("version", Integer, nullable=False),
    # Cancelled after payment, refund and restock not yet confirmed (finish_cancellations).
    Column("compensation_pending", Boolean, nullable=False),
    # Staff began shipping it: the customer can no longer cancel (shipping's port sets it).
    Column("fulfilment_started", Boolean, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Index(
        "ix_ordering_orders_compensation_pending_updated_at", "compensation_pending", "updated_at"
    ),
    # A customer's history, newest first, keyset-paginated.
    Index("ix_ordering_orders_customer_id_created_at_id", "customer_id", "created_at", "id"),
    # Staff filters by status and date.
    Index("ix_ordering_orders_status_created_at", "status", "created_at"),
    Index("ix_ordering_orders_created_at_id", "created_at", "id"),
)

order_lines = Table(
    "ordering_order_lines",
    metadata,
    Column(
        "order_id",
        String(36),
        ForeignKey("ordering_orders.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("position", Integer, primary_key=True),
    Column("sku", String(64), nullable=False),
    Column("product_name", String(200), nullable=False),
    Column("variant_name", String(200), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price_minor", BigInteger, nullable=False),
)

status_history = Table(
    "ordering_status_history",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("order_id", String(36), nullable=False, index=True),
    Column("from_status", String(24), nullable=False),
    Column("to_status", String(24), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("reason", String(200), nullable=False),
    Column("at", Timestamp, nullable=False),
)

idempotency_keys = Table(
    "ordering_idempotency_keys",
    metadata,
    Column("customer_id", String(36), primary_key=True),
    Column("idempotency_key", String(200), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    # Who holds an in-progress claim: writes of a request whose claim was taken over fail.
    Column("claim_token", String(36), nullable=False),
    Column("state", String(16), nullable=False),  # in_progress | completed
    Column("order_id", String(36), nullable=True),
    Column("response_status", Integer, nullable=True),
    Column("response_body", Text, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    # Purge: expires_at < now.
    Column("expires_at", Timestamp, nullable=False, index=True),
)

outbox = outbox_table(metadata, "ordering")


class OrderRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, order: Order, *, sealed_address: bytes) -> None:
        await self._session.execute(
            orders.insert().values(
                id=order.id,
                customer_id=order.customer_id,
                status=order.status.value,
                currency=order.currency,
                subtotal_minor=order.subtotal.to_minor(),
                shipping_minor=order.shipping.to_minor(),
                tax_minor=order.tax.to_minor(),
                total_minor=order.total.to_minor(),
                refunded_minor=order.refunded.to_minor(),
                shipping_method=order.shipping_method,
                shipping_address=sealed_address,
                xid=order.xid,
                version=order.version,
                compensation_pending=False,
                fulfilment_started=False,
                created_at=order.created_at,
                updated_at=order.updated_at,
            )
        )
        await self._session.execute(
            order_lines.insert(),
            [
                {
                    "order_id": order.id,
                    "position": position,
                    "sku": line.sku,
                    "product_name": line.product_name,
                    "variant_name": line.variant_name,
                    "quantity": line.quantity,
                    "unit_price_minor": line.unit_price.to_minor(),
                }
                for position, line in enumerate(order.lines)
            ],
        )

    async def get(self, order_id: str, *, with_history: bool = True) -> tuple[Order, bytes] | None:
        row = (
            await self._session.execute(select(orders).where(orders.c.id == order_id))
        ).one_or_none()
        if row is None:
            return None
        order = _order(row)
        line_rows = await self._session.execute(
            select(order_lines)
            .where(order_lines.c.order_id == order_id)
            .order_by(order_lines.c.position)
        )
        order.lines = [
            OrderLine(
                r.sku,
                r.product_name,
                r.variant_name,
                r.quantity,
                Money.from_minor(r.unit_price_minor, order.currency),
            )
            for r in line_rows
        ]
        if with_history:
            history = await self._session.execute(
                select(status_history)
                .where(status_history.c.order_id == order_id)
                .order_by(status_history.c.id)
            )
            order.history = [
                Transition(h.from_status, h.to_status, h.actor, h.reason, _aware(h.at))
                for h in history
            ]
        return order, row.shipping_address

    async def page(
        self,
        *,
        customer_id: str | None,
        statuses: Sequence[str] = (),
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int,
    ) -> list[Order]:
        """Newest first; `after` is the keyset cursor (created_at, id) of the last row seen."""
        query = select(orders)
        if customer_id is not None:
            query = query.where(orders.c.customer_id == customer_id)
        if statuses:
            query = query.where(orders.c.status.in_(list(statuses)))
        if created_from is not None:
            query = query.where(orders.c.created_at >= created_from)
        if created_to is not None:
            query = query.where(orders.c.created_at < created_to)
        if after is not None:
            created_at, order_id = after
            query = query.where(
                or_(
                    orders.c.created_at < created_at,
                    and_(orders.c.created_at == created_at, orders.c.id < order_id),
                )
            )
        query = query.order_by(orders.c.created_at.desc(), orders.c.id.desc()).limit(limit)
        return [_order(row) for row in await self._session.execute(query)]

    async def move(
        self,
        order_id: str,
        *,
        source: OrderStatus,
        target: OrderStatus,
        actor: str,
        reason: str,
        now: datetime,
        refunded_minor: int | None = None,
        compensation_pending: bool | None = None,
        unless_fulfilling: bool = False,
    ) -> bool:
        """The conditional status change and its history row; False if the order moved on
        (or, with `unless_fulfilling`, if its fulfilment has started)."""
        values: dict[str, object] = {
            "status": target.value,
            "version": orders.c.version + 1,
            "updated_at": now,
        }
        if compensation_pending is not None:
            values["compensation_pending"] = compensation_pending
        if refunded_minor is not None:
            values["refunded_minor"] = refunded_minor
        condition = and_(orders.c.id == order_id, orders.c.status == source.value)
        if unless_fulfilling:
            condition = and_(condition, orders.c.fulfilment_started.is_(False))
        result = await self._session.execute(update(orders).where(condition).values(**values))
        if not result.rowcount:  # type: ignore[attr-defined]
            return False
        await self._session.execute(
            status_history.insert().values(
                order_id=order_id,
                from_status=source.value,
                to_status=target.value,
                actor=actor[:64],
                reason=reason[:200],
                at=now,
            )
        )
        return True

    async def start_fulfilment(
        self, order_id: str, *, shippable: Sequence[OrderStatus], now: datetime
    ) -> bool:
        """Mark the order as being fulfilled, if it is in a shippable state (else False)."""
        result = await self._session.execute(
            update(orders)
            .where(
                and_(
                    orders.c.id == order_id,
                    orders.c.status.in_([status.value for status in shippable]),
                )
            )
            .values(fulfilment_started=True, updated_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def compensated(self, order_id: str, refunded_minor: int, *, now: datetime) -> None:
        """The refund and restock of a cancelled paid order are done."""
        await self._session.execute(
            update(orders)
            .where(orders.c.id == order_id)
            .values(refunded_minor=refunded_minor, compensation_pending=False, updated_at=now)
        )

    async def pending_compensations(self, *, limit: int) -> list[str]:
        """Cancelled paid orders whose refund or restock has not completed, oldest first."""
        rows = await self._session.scalars(
            select(orders.c.id)
            .where(orders.c.compensation_pending.is_(True))
            .order_by(orders.c.updated_at)
            .limit(limit)
        )
        return list(rows)


def _aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _order(row: object) -> Order:
    r = row  # a Row of ordering_orders
    currency: str = r.currency  # type: ignore[attr-defined]

    def money(minor: int) -> Money:
        return Money.from_minor(minor, currency)

    return Order(
        id=r.id,  # type: ignore[attr-defined]
        customer_id=r.customer_id,  # type: ignore[attr-defined]
        status=OrderStatus(r.status),  # type: ignore[attr-defined]
        currency=currency,
        subtotal=money(r.subtotal_minor),  # type: ignore[attr-defined]
        shipping=money(r.shipping_minor),  # type: ignore[attr-defined]
        tax=money(r.tax_minor),  # type: ignore[attr-defined]
        total=money(r.total_minor),  # type: ignore[attr-defined]
        refunded=money(r.refunded_minor),  # type: ignore[attr-defined]
        shipping_method=r.shipping_method,  # type: ignore[attr-defined]
        shipping_address={},
        xid=r.xid,  # type: ignore[attr-defined]
        version=r.version,  # type: ignore[attr-defined]
        fulfilment_started=bool(r.fulfilment_started),  # type: ignore[attr-defined]
        created_at=_aware(r.created_at),  # type: ignore[attr-defined]
        updated_at=_aware(r.updated_at),  # type: ignore[attr-defined]
    )


class IdempotencyRecord:
    __slots__ = (
        "claim_token",
        "order_id",
        "request_hash",
        "response_body",
        "response_status",
        "state",
        "updated_at",
    )

    def __init__(self, row: object) -> None:
        self.request_hash: str = row.request_hash  # type: ignore[attr-defined]
        self.claim_token: str = row.claim_token  # type: ignore[attr-defined]
        self.state: str = row.state  # type: ignore[attr-defined]
        self.order_id: str | None = row.order_id  # type: ignore[attr-defined]
        self.response_status: int | None = row.response_status  # type: ignore[attr-defined]
        self.response_body: str | None = row.response_body  # type: ignore[attr-defined]
        self.updated_at: datetime = _aware(row.updated_at)  # type: ignore[attr-defined]


class IdempotencyRepository:
    """A key's record; every write by the request holding it names its `claim_token`."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    @staticmethod
    def _key(customer_id: str, key: str, token: str | None = None) -> ColumnElement[bool]:
        condition = and_(
            idempotency_keys.c.customer_id == customer_id,
            idempotency_keys.c.idempotency_key == key,
        )
        return (
            condition if token is None else and_(condition, idempotency_keys.c.claim_token == token)
        )

    async def claim(
        self,
        customer_id: str,
        key: str,
        *,
        token: str,
        request_hash: str,
        now: datetime,
        expires_at: datetime,
    ) -> bool:
        """Insert an `in_progress` record held by `token`; False when the key exists already."""
        result = await self._session.execute(
            insert_if_absent(self._session, idempotency_keys).values(
                customer_id=customer_id,
                idempotency_key=key,
                request_hash=request_hash,
                claim_token=token,
                state="in_progress",
                order_id=None,
                response_status=None,
                response_body=None,
                created_at=now,
                updated_at=now,
                expires_at=expires_at,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def get(self, customer_id: str, key: str) -> IdempotencyRecord | None:
        row = (
            await self._session.execute(select(idempotency_keys).where(self._key(customer_id, key)))
        ).one_or_none()
        return None if row is None else IdempotencyRecord(row)

    async def attach_order(
        self, customer_id: str, key: str, *, token: str, order_id: str, now: datetime
    ) -> bool:
        """Bind the order to the key; False if this request no longer holds it."""
        return await self._update(
            customer_id, key, token, state="in_progress", order_id=order_id, updated_at=now
        )

    async def complete(
        self,
        customer_id: str,
        key: str,
        *,
        token: str | None,
        status: int,
        body: str,
        now: datetime,
    ) -> bool:
        """Store the answer; `token=None` answers for a request that died (its order's end)."""
        return await self._update(
            customer_id,
            key,
            token,
            state="completed",
            response_status=status,
            response_body=body,
            updated_at=now,
        )

    async def take_over(
        self, customer_id: str, key: str, *, token: str, stale_before: datetime, now: datetime
    ) -> bool:
        """Re-claim an abandoned `in_progress` record that never created an order."""
        result = await self._session.execute(
            update(idempotency_keys)
            .where(
                and_(
                    self._key(customer_id, key),
                    idempotency_keys.c.state == "in_progress",
                    idempotency_keys.c.order_id.is_(None),
                    idempotency_keys.c.updated_at < stale_before,
                )
            )
            .values(claim_token=token, updated_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def forget(self, customer_id: str, key: str, *, token: str) -> None:
        """Drop this request's claim: the key may be used again (nothing it did stands)."""
        await self._session.execute(
            delete(idempotency_keys).where(
                and_(self._key(customer_id, key, token), idempotency_keys.c.state == "in_progress")
            )
        )

    async def purge_expired(self, now: datetime, *, batch: int = 1000) -> int:
        """Delete up to `batch` expired records (the caller loops)."""
        expired = (
            select(idempotency_keys.c.customer_id, idempotency_keys.c.idempotency_key)
            .where(idempotency_keys.c.expires_at < now)
            .limit(batch)
        )
        rows = (await self._session.execute(expired)).all()
        for customer_id, key in rows:
            await self._session.execute(delete(idempotency_keys).where(self._key(customer_id, key)))
        return len(rows)

    async def _update(
        self, customer_id: str, key: str, token: str | None, **values: object
    ) -> bool:
        condition = and_(
            self._key(customer_id, key, token), idempotency_keys.c.state == "in_progress"
        )
        result = await self._session.execute(
            update(idempotency_keys).where(condition).values(**values)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


class OrderingUnitOfWork(UnitOfWork):
    orders: OrderRepository
    idempotency: IdempotencyRepository

    def _open_repositories(self, session: AsyncSession) -> None:
        self.orders = OrderRepository(session)
        self.idempotency = IdempotencyRepository(session)
