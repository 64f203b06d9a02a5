"""Cart tables and their queries. Only this context touches `cart_*` tables.

Every change of a cart first wins `claim` (a conditional `UPDATE ... WHERE version = :v`,
checked by row count) and only then writes its lines, in the same transaction: two writers
that read the same version cannot both commit, so no update is ever lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    and_,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from ironcart.cart.domain import Cart, CartLine, CartStatus, LineChange
from ironcart.platform.database import Timestamp, UnitOfWork, metadata
from ironcart.platform.money import Money

carts = Table(
    "cart_carts",
    metadata,
    Column("id", String(36), primary_key=True),
    # SHA-256 of an anonymous cart's token (the token itself is never stored); NULL for customers.
    Column("token_digest", String(64), nullable=True, unique=True),
    Column("owner_id", String(36), nullable=True),
    # owner_id while the cart is open, NULL once closed: the unique index (which admits any
    # number of NULLs) lets a customer have one open cart, whatever the race.
    Column("open_owner_id", String(36), nullable=True, unique=True),
    Column("status", String(16), nullable=False),
    Column("merged_into", String(36), nullable=True),
    Column("version", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    # The purge's query: owner_id IS NULL AND updated_at < :before.
    Index("ix_cart_carts_owner_id_updated_at", "owner_id", "updated_at"),
)

lines = Table(
    "cart_lines",
    metadata,
    Column(
        "cart_id", String(36), ForeignKey("cart_carts.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("sku", String(64), primary_key=True),
    Column("quantity", Integer, nullable=False),
    Column("price_seen_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("available_seen", Integer, nullable=False),
    Column("added_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    CheckConstraint("quantity > 0", name="quantity_positive"),
)

# PostgreSQL deadlock / serialization failure; MySQL deadlock, lock wait timeout, and
# "record has changed since last read" (MariaDB with innodb_snapshot_isolation).


def utc(value: datetime) -> datetime:
    """SQLite and MariaDB hand back naive datetimes; everything we store is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _rowcount(result: object) -> int:
    return int(result.rowcount)  # type: ignore[attr-defined]


def _line(row: Any) -> CartLine:
    return CartLine(
        sku=row.sku,
        quantity=int(row.quantity),
        price_seen=Money.from_minor(int(row.price_seen_minor), row.currency),
        available_seen=int(row.available_seen),
        added_at=utc(row.added_at),
    )


class SqlCartRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, cart: Cart) -> bool:
        """Insert an empty cart; False if the customer already has an open one."""
        open_owner = cart.owner_id if cart.status is CartStatus.OPEN else None
        try:
            await self._session.execute(
                insert(carts).values(
                    id=cart.id,
                    token_digest=cart.token_digest,
                    owner_id=cart.owner_id,
                    open_owner_id=open_owner,
                    status=cart.status.value,
                    merged_into=None,
                    version=cart.version,
                    created_at=cart.created_at,
                    updated_at=cart.updated_at,
                )
            )
        except IntegrityError:
            return False
        return True

    async def get(self, cart_id: str) -> Cart | None:
        return await self._one(carts.c.id == cart_id)

    async def get_open_for_owner(self, owner_id: str) -> Cart | None:
        return await self._one(carts.c.open_owner_id == owner_id)

    async def get_by_token_digest(self, digest: str) -> Cart | None:
        return await self._one(carts.c.token_digest == digest)

    async def _one(self, condition: ColumnElement[bool]) -> Cart | None:
        # The cart row before its lines: a version read first can only be older than the
        # lines read after it, and `claim` then refuses it (never a stale cart written back).
        row = (await self._session.execute(select(carts).where(condition))).first()
        if row is None:
            return None
        query = (
            select(lines).where(lines.c.cart_id == row.id).order_by(lines.c.added_at, lines.c.sku)
        )
        return Cart(
            id=row.id,
            owner_id=row.owner_id,
            status=CartStatus(row.status),
            version=int(row.version),
            created_at=utc(row.created_at),
            updated_at=utc(row.updated_at),
            token_digest=row.token_digest,
            merged_into=row.merged_into,
            lines=tuple(_line(line) for line in await self._session.execute(query)),
        )

    async def claim(self, cart_id: str, *, version: int, now: datetime) -> bool:
        """Move an open cart from `version` to the next; False if someone changed it first."""
        result = await self._session.execute(
            update(carts)
            .where(
                carts.c.id == cart_id,
                carts.c.version == version,
                carts.c.status == CartStatus.OPEN.value,
            )
            .values(version=carts.c.version + 1, updated_at=now)
        )
        return _rowcount(result) == 1

    async def close(
        self,
        cart_id: str,
        *,
        version: int,
        status: CartStatus,
        merged_into: str | None,
        now: datetime,
    ) -> bool:
        """Close an open cart still at `version` (merged, or checked out); frees its owner."""
        result = await self._session.execute(
            update(carts)
            .where(
                carts.c.id == cart_id,
                carts.c.version == version,
                carts.c.status == CartStatus.OPEN.value,
            )
            .values(
                status=status.value,
                merged_into=merged_into,
                open_owner_id=None,
                version=carts.c.version + 1,
                updated_at=now,
            )
        )
        return _rowcount(result) == 1

    async def write_lines(
        self, cart_id: str, changes: Sequence[LineChange], *, now: datetime
    ) -> None:
        """Apply line changes of a cart this transaction has claimed (0 deletes the line)."""
        for change in changes:
            key = and_(lines.c.cart_id == cart_id, lines.c.sku == change.sku)
            if change.quantity == 0:
                await self._session.execute(delete(lines).where(key))
                continue
            values = {
                "quantity": change.quantity,
                "price_seen_minor": change.price_seen.to_minor(),
                "currency": change.price_seen.currency,
                "available_seen": change.available_seen,
                "updated_at": now,
            }
            if change.new:
                await self._session.execute(
                    insert(lines).values(cart_id=cart_id, sku=change.sku, added_at=now, **values)
                )
            else:
                await self._session.execute(update(lines).where(key).values(**values))

    async def abandoned(self, *, before: datetime, limit: int) -> list[str]:
        """Ids of anonymous carts nobody changed since `before`."""
        query = (
            select(carts.c.id)
            .where(carts.c.owner_id.is_(None), carts.c.updated_at < before)
            .order_by(carts.c.updated_at)
            .limit(limit)
        )
        return list((await self._session.execute(query)).scalars())

    async def delete_abandoned(self, cart_ids: Sequence[str], *, before: datetime) -> int:
        """Delete those carts (their lines go by the cascading foreign key), except any that
        was changed in the meantime: the condition is checked again under the row lock."""
        if not cart_ids:
            return 0
        result = await self._session.execute(
            delete(carts).where(
                carts.c.id.in_(list(cart_ids)),
                carts.c.owner_id.is_(None),
                carts.c.updated_at < before,
            )
        )
        return _rowcount(result)


class CartUnitOfWork(UnitOfWork):
    carts: SqlCartRepository

    def _open_repositories(self, session: AsyncSession) -> None:
        self.carts = SqlCartRepository(session)
