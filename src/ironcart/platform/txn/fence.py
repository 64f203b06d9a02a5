"""TCC participant fences: one row per (global transaction id, branch) in the participant's store.

A participant calls these inside the same database transaction as its own work, so the
fence and the effect commit or roll back together:

- `begin_try` records `tried`; a second try is a no-op (`False`); a try that arrives after
  its cancel is refused (`Suspended`), so a late try can never hold stock or money that no
  one will release.
- `begin_confirm` moves `tried -> confirmed` (`True`: do the work); confirming again is a
  no-op; confirming a cancelled branch raises `FenceConflict`.
- `begin_cancel` moves `tried -> cancelled` (`True`: undo the work); a cancel with no try
  records `cancelled` (empty rollback, returns `False`, nothing to undo) so that the try,
  if it ever arrives, is suspended; cancelling twice is a no-op; cancelling a confirmed
  branch raises `FenceConflict`.

Concurrency: the insert is an insert-if-absent backed by the primary key and the moves are
conditional UPDATEs checked by row count, so a racing try and cancel serialise on the row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import Column, MetaData, String, Table, and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.platform.database import Timestamp

# Moved to platform.database (the inbox uses it too); re-exported for existing importers.
from ironcart.platform.database import insert_if_absent as insert_if_absent


class FenceState(StrEnum):
    TRIED = "tried"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


class FenceError(Exception):
    code = "tcc_fence"


class Suspended(FenceError):
    """The try arrived after its cancel: refused, nothing may be held."""

    code = "tcc_suspended"


class FenceConflict(FenceError):
    """Confirm after cancel, cancel after confirm, or confirm without a try."""

    code = "tcc_conflict"


def fence_table(metadata: MetaData, prefix: str) -> Table:
    """The fence table of one participant context, named `<prefix>_tcc_fences`."""
    return Table(
        f"{prefix}_tcc_fences",
        metadata,
        Column("xid", String(64), primary_key=True),
        Column("branch", String(32), primary_key=True),
        Column("state", String(16), nullable=False),
        Column("created_at", Timestamp, nullable=False),
        Column("updated_at", Timestamp, nullable=False),
    )


async def _state(session: AsyncSession, table: Table, xid: str, branch: str) -> FenceState | None:
    value = await session.scalar(
        select(table.c.state).where(and_(table.c.xid == xid, table.c.branch == branch))
    )
    return None if value is None else FenceState(value)


async def _insert(
    session: AsyncSession, table: Table, xid: str, branch: str, state: FenceState
) -> bool:
    now = datetime.now(UTC)
    result = await session.execute(
        insert_if_absent(session, table).values(
            xid=xid, branch=branch, state=state.value, created_at=now, updated_at=now
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def _move(
    session: AsyncSession,
    table: Table,
    xid: str,
    branch: str,
    source: FenceState,
    target: FenceState,
) -> bool:
    result = await session.execute(
        update(table)
        .where(and_(table.c.xid == xid, table.c.branch == branch, table.c.state == source.value))
        .values(state=target.value, updated_at=datetime.now(UTC))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def begin_try(session: AsyncSession, table: Table, *, xid: str, branch: str) -> bool:
    """`True`: first try, do the work. `False`: tried before. `Suspended`: cancelled before."""
    if await _insert(session, table, xid, branch, FenceState.TRIED):
        return True
    state = await _state(session, table, xid, branch)
    if state is FenceState.CANCELLED:
        raise Suspended(f"Branch {branch} of {xid} was cancelled before its try.")
    return False


async def begin_confirm(session: AsyncSession, table: Table, *, xid: str, branch: str) -> bool:
    """`True`: first confirm, do the work. `False`: confirmed before."""
    if await _move(session, table, xid, branch, FenceState.TRIED, FenceState.CONFIRMED):
        return True
    state = await _state(session, table, xid, branch)
    if state is FenceState.CONFIRMED:
        return False
    raise FenceConflict(f"Branch {branch} of {xid} cannot be confirmed from {state}.")


async def begin_cancel(session: AsyncSession, table: Table, *, xid: str, branch: str) -> bool:
    """`True`: undo the try's work. `False`: nothing to undo (cancelled before, or empty)."""
    for _ in range(3):
        # Insert first: most cancels follow a failed or missing try (an empty rollback), and
        # an UPDATE that finds no row followed by an INSERT deadlocks on MariaDB's gap locks.
        if await _insert(session, table, xid, branch, FenceState.CANCELLED):
            return False  # empty rollback: recorded, so a late try is suspended
        if await _move(session, table, xid, branch, FenceState.TRIED, FenceState.CANCELLED):
            return True
        state = await _state(session, table, xid, branch)
        if state is FenceState.CANCELLED:
            return False
        if state is FenceState.CONFIRMED:
            raise FenceConflict(f"Branch {branch} of {xid} is confirmed; it cannot be cancelled.")
    raise FenceConflict(f"Branch {branch} of {xid} kept changing while being cancelled.")
