"""The XA coordinator's decision log (`txn_xa_log`), in the coordinator's own database.

One row per global transaction, written in its own committed transaction at each step:

    preparing ──every branch prepared──> committing ──every branch committed──> committed
        │                     (the commit point: the conditional UPDATE preparing -> committing)
        └──a branch failed, or in doubt (recovery)──> aborted

`next_attempt_at` is when recovery may take the row: a `preparing` row then is in doubt
(its coordinator died or hangs), a `committing` one has branches left to commit.

`settled` is false while the initiator's follow-up of the outcome (`XaFollowUp`: e.g.
capture or void a payment) has not run: a `committed` or `aborted` row that is not
settled is taken by recovery too, which runs the follow-up. Kinds without a follow-up are
settled from the start. `reference` is the initiator's name for the transaction (an
order id, say), so that it can find the transaction without knowing its gid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import (
    Boolean,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    false,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from ironcart.platform.database import Timestamp, metadata

xa_log = Table(
    "txn_xa_log",
    metadata,
    Column("gid", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    # The resources of the branches, in branch order, comma-separated.
    Column("resources", String(400), nullable=False),
    # JSON the initiator keeps with the transaction (e.g. the order it creates).
    Column("payload", Text, nullable=False),
    Column("reason", String(200), nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Timestamp, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    # False until the initiator's follow-up of the outcome ran (see the module docstring).
    Column("settled", Boolean, nullable=False),
    Column("reference", String(64), nullable=True),
    Index("ix_txn_xa_log_state_next_attempt_at", "state", "next_attempt_at"),
    Index("ix_txn_xa_log_settled_next_attempt_at", "settled", "next_attempt_at"),
    Index("ix_txn_xa_log_reference", "reference"),
)


class XaState(StrEnum):
    PREPARING = "preparing"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class XaEntry:
    gid: str
    kind: str
    state: XaState
    resources: tuple[str, ...]
    payload: Mapping[str, Any]
    reason: str | None
    attempts: int
    created_at: datetime
    settled: bool = True
    reference: str | None = None


def _utc(value: datetime) -> datetime:
    # MySQL's DATETIME comes back naive; every timestamp here is written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class XaLog:
    """The queries of the decision log; every method commits its own transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def open(
        self,
        gid: str,
        *,
        kind: str,
        resources: Sequence[str],
        payload: Mapping[str, Any],
        now: datetime,
        due_at: datetime,
        settled: bool = True,
        reference: str | None = None,
    ) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                xa_log.insert().values(
                    gid=gid,
                    kind=kind,
                    state=XaState.PREPARING.value,
                    resources=",".join(resources),
                    payload=orjson.dumps(dict(payload)).decode(),
                    reason=None,
                    attempts=0,
                    next_attempt_at=due_at,
                    created_at=now,
                    updated_at=now,
                    settled=settled,
                    reference=reference,
                )
            )

    async def move(
        self,
        gid: str,
        source: XaState,
        target: XaState,
        *,
        now: datetime,
        due_at: datetime | None = None,
        reason: str | None = None,
    ) -> bool:
        """`source -> target` if the row is still in `source`; False if someone moved it."""
        values: dict[str, Any] = {"state": target.value, "updated_at": now}
        if due_at is not None:
            values["next_attempt_at"] = due_at
        if reason is not None:
            values["reason"] = reason[:200]
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(xa_log)
                .where(and_(xa_log.c.gid == gid, xa_log.c.state == source.value))
                .values(**values)
            )
        return bool(result.rowcount)

    async def settle(self, gid: str, *, now: datetime) -> None:
        """The follow-up of the outcome ran: recovery leaves the row alone from now on."""
        async with self._engine.begin() as connection:
            await connection.execute(
                update(xa_log).where(xa_log.c.gid == gid).values(settled=True, updated_at=now)
            )

    async def get(self, gid: str) -> XaEntry | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(xa_log).where(xa_log.c.gid == gid))).first()
        return None if row is None else _entry(row)

    async def find(self, reference: str) -> XaEntry | None:
        """The latest transaction the initiator named `reference`."""
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    select(xa_log)
                    .where(xa_log.c.reference == reference)
                    .order_by(xa_log.c.created_at.desc())
                    .limit(1)
                )
            ).first()
        return None if row is None else _entry(row)

    async def entries(self, gids: Sequence[str]) -> list[XaEntry]:
        if not gids:
            return []
        async with self._engine.connect() as connection:
            rows = await connection.execute(select(xa_log).where(xa_log.c.gid.in_(list(gids))))
            return [_entry(row) for row in rows]

    async def states(self, gids: Sequence[str]) -> dict[str, XaState]:
        if not gids:
            return {}
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(xa_log.c.gid, xa_log.c.state).where(xa_log.c.gid.in_(list(gids)))
            )
            return {gid: XaState(state) for gid, state in rows}

    async def claim(
        self,
        *,
        now: datetime,
        limit: int,
        backoff_seconds: float,
        max_backoff_seconds: float,
    ) -> list[tuple[str, XaState, tuple[str, ...]]]:
        """Due `preparing`/`committing` rows, and due rows whose follow-up has not run,
        locked past other workers (SKIP LOCKED), each pushed back by an exponential backoff;
        (gid, state, resources)."""
        open_states = [XaState.PREPARING.value, XaState.COMMITTING.value]
        async with self._engine.begin() as connection:
            rows = (
                await connection.execute(
                    select(xa_log.c.gid, xa_log.c.state, xa_log.c.resources, xa_log.c.attempts)
                    .where(
                        and_(
                            or_(xa_log.c.state.in_(open_states), xa_log.c.settled == false()),
                            xa_log.c.next_attempt_at <= now,
                        )
                    )
                    .order_by(xa_log.c.next_attempt_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for gid, _state, _resources, attempts in rows:
                delay = min(max_backoff_seconds, backoff_seconds * 2 ** min(attempts, 16))
                await connection.execute(
                    update(xa_log)
                    .where(xa_log.c.gid == gid)
                    .values(
                        attempts=attempts + 1,
                        next_attempt_at=now + timedelta(seconds=delay),
                        updated_at=now,
                    )
                )
        return [
            (gid, XaState(state), tuple(name for name in resources.split(",") if name))
            for gid, state, resources, _ in rows
        ]


def _entry(row: Any) -> XaEntry:
    return XaEntry(
        gid=row.gid,
        kind=row.kind,
        state=XaState(row.state),
        resources=tuple(name for name in row.resources.split(",") if name),
        payload=orjson.loads(row.payload),
        reason=row.reason,
        attempts=row.attempts,
        created_at=_utc(row.created_at),
        settled=bool(row.settled),
        reference=row.reference,
    )
