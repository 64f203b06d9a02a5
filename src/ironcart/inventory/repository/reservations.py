"""Reservations, their lines per warehouse, and the race-safe status transitions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from ironcart.contracts.inventory import Reservation
from ironcart.inventory.domain import Allocation, ReservationRecord, ReservationStatus
from ironcart.inventory.repository.tables import reservation_lines, reservations, rowcount, utc


class SqlReservationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(
        self,
        reservation: Reservation,
        *,
        now: datetime,
        status: ReservationStatus = ReservationStatus.ACTIVE,
    ) -> None:
        """Insert a new reservation, active unless told (an XA sale records it committed at
        once); its lines come with `add_lines`."""
        await self._session.execute(
            insert(reservations).values(
                id=reservation.id,
                sku=reservation.sku,
                quantity=reservation.quantity,
                owner=reservation.owner,
                status=status.value,
                expires_at=reservation.expires_at,
                created_at=now,
                updated_at=now,
            )
        )

    async def add_lines(self, reservation_id: str, lines: Sequence[Allocation]) -> None:
        await self._session.execute(
            insert(reservation_lines),
            [
                {
                    "reservation_id": reservation_id,
                    "warehouse_id": line.warehouse_id,
                    "quantity": line.quantity,
                }
                for line in lines
            ],
        )

    async def replace_lines(self, reservation_id: str, lines: Sequence[Allocation]) -> None:
        """Record where a reservation's units now come from (a TCC confirm took them again)."""
        await self._session.execute(
            delete(reservation_lines).where(reservation_lines.c.reservation_id == reservation_id)
        )
        await self.add_lines(reservation_id, lines)

    async def get(self, reservation_id: str) -> ReservationRecord | None:
        found = await self._records(reservations.c.id == reservation_id)
        return found[0] if found else None

    async def by_owner(self, owner: str) -> list[ReservationRecord]:
        """Every reservation of `owner`, whatever its status, in SKU order (not locked).

        There is no index on `owner`: this scans the table. Acceptable for the TCC owners
        (`tcc:<xid>`) while the table is small; an index is the remedy when it is not.
        """
        return await self._records(reservations.c.owner == owner)

    async def _records(self, condition: ColumnElement[bool]) -> list[ReservationRecord]:
        query = select(reservations).where(condition).order_by(reservations.c.sku)
        rows = (await self._session.execute(query)).all()
        lines = await self.lines([row.id for row in rows]) if rows else {}
        return [
            ReservationRecord(
                id=row.id,
                sku=row.sku,
                quantity=row.quantity,
                owner=row.owner,
                status=ReservationStatus(row.status),
                expires_at=utc(row.expires_at),
                lines=tuple(lines.get(row.id, ())),
            )
            for row in rows
        ]

    async def lines(self, reservation_ids: Sequence[str]) -> dict[str, list[Allocation]]:
        query = (
            select(reservation_lines)
            .where(reservation_lines.c.reservation_id.in_(list(reservation_ids)))
            .order_by(reservation_lines.c.reservation_id, reservation_lines.c.warehouse_id)
        )
        found: dict[str, list[Allocation]] = {}
        for row in await self._session.execute(query):
            found.setdefault(row.reservation_id, []).append(
                Allocation(row.warehouse_id, row.quantity)
            )
        return found

    async def transition(
        self,
        reservation_id: str,
        to: ReservationStatus,
        *,
        now: datetime,
        unexpired_at: datetime | None = None,
        source: ReservationStatus = ReservationStatus.ACTIVE,
    ) -> bool:
        """Move a reservation still in `source` (active) to `to`; False if it was not (someone
        else won).

        With `unexpired_at`, only a reservation that has not expired by then moves.
        """
        conditions = [
            reservations.c.id == reservation_id,
            reservations.c.status == source.value,
        ]
        if unexpired_at is not None:
            conditions.append(reservations.c.expires_at > unexpired_at)
        result = await self._session.execute(
            update(reservations).where(*conditions).values(status=to.value, updated_at=now)
        )
        return rowcount(result) == 1

    async def claim_expired(self, *, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(id, sku) of active reservations past their expiry, locked; rows another worker
        holds are skipped (SKIP LOCKED on PostgreSQL and MariaDB; SQLite has one writer)."""
        query = (
            select(reservations.c.id, reservations.c.sku)
            .where(
                reservations.c.status == ReservationStatus.ACTIVE.value,
                reservations.c.expires_at < now,
            )
            .order_by(reservations.c.expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [(row.id, row.sku) for row in await self._session.execute(query)]
