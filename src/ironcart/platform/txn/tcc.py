"""The TCC coordinator: a persisted global transaction over participant branches.

Life of a global transaction (`txn_transactions.state`):

    trying ──all tries succeeded──> confirming ──every branch confirmed──> confirmed
      │                                                           (the commit decision is
      └──a try failed / in doubt──> cancelling ──every branch cancelled──> cancelled
                                                            the trying -> confirming UPDATE)

1. `begin` writes the transaction and its branches in the *caller's* database
   transaction (checkout writes the order in the same one), so a transaction exists
   exactly when its order does.
2. `execute` calls every branch's try in order. If one fails, the transaction moves to
   `cancelling` and every branch is cancelled — also the ones never tried (participants
   record an empty rollback, so a late try is suspended) — except the branch whose try
   failed as unreachable (an `unavailable` error: its provider timed out or its breaker is
   open), which is left to recovery a few seconds later so the caller gets its answer at
   once instead of waiting on the same dead dependency again. If all succeed, the decision
   is a conditional UPDATE `trying -> confirming`; it loses only when recovery already
   gave up on the transaction, which then ends cancelled (`TransactionAborted`).
3. Confirms (or cancels) that fail are left to `recover`, which claims transactions
   whose `next_attempt_at` has passed — a `trying` one that long is in doubt (its
   process died) and is cancelled; `confirming` / `cancelling` ones are driven on —
   with `FOR UPDATE SKIP LOCKED`, so several workers may recover at once, and with
   exponential backoff between attempts. Participants make confirm and cancel
   idempotent (fences), so driving a branch twice is harmless.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import orjson
import structlog
from prometheus_client import Counter
from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ironcart.platform.database import reading_sessions
from ironcart.platform.errors import ErrorKind, IronCartError
from ironcart.platform.txn.tables import branches as branches_table
from ironcart.platform.txn.tables import transactions

_log = structlog.get_logger("ironcart.txn")

TCC_OUTCOMES = Counter(
    "ironcart_tcc_transactions_total",
    "Global TCC transactions by kind and how they ended (or were left for recovery).",
    ["kind", "outcome"],
)
TCC_RECOVERED = Counter(
    "ironcart_tcc_recovered_total",
    "Global transactions driven by the recovery worker, by the state they were found in.",
    ["state"],
)


class TxnState(StrEnum):
    TRYING = "trying"
    CONFIRMING = "confirming"
    CONFIRMED = "confirmed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


class TransactionAborted(Exception):
    """The transaction was cancelled before its commit decision (e.g. by recovery)."""


class TccParticipant(Protocol):
    async def try_(self, xid: str, payload: Mapping[str, Any]) -> None: ...

    async def confirm(self, xid: str, payload: Mapping[str, Any]) -> None: ...

    async def cancel(self, xid: str, payload: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class Branch:
    name: str
    participant: str
    payload: Mapping[str, Any]


def _now() -> datetime:
    return datetime.now(UTC)


def _stored(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as `begin` stores it (JSON), so a first run sees what recovery would."""
    stored: dict[str, Any] = orjson.loads(orjson.dumps(dict(payload)))
    return stored


class TccCoordinator:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        participants: Mapping[str, TccParticipant],
        *,
        in_doubt_after_seconds: float = 60.0,
        retry_backoff_seconds: float = 2.0,
        max_backoff_seconds: float = 300.0,
        clock: Callable[[], datetime] = _now,
        crash_points: frozenset[str] = frozenset(),
    ) -> None:
        self._crash_points = crash_points
        self._sessions = sessions
        self._reads = reading_sessions(sessions)
        self._participants = participants
        self._in_doubt_after = timedelta(seconds=in_doubt_after_seconds)
        self._backoff = retry_backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._clock = clock

    # -- the initiator's side ----------------------------------------------------------------

    async def begin(
        self, session: AsyncSession, *, xid: str, kind: str, branches: Sequence[Branch]
    ) -> None:
        """Record a new transaction and its branches in the caller's open transaction."""
        unknown = [b.participant for b in branches if b.participant not in self._participants]
        if unknown:
            raise ValueError(f"unknown TCC participants: {unknown}")
        now = self._clock()
        await session.execute(
            transactions.insert().values(
                xid=xid,
                kind=kind,
                state=TxnState.TRYING.value,
                reason=None,
                attempts=0,
                next_attempt_at=now + self._in_doubt_after,
                created_at=now,
                updated_at=now,
            )
        )
        await session.execute(
            branches_table.insert(),
            [
                {
                    "xid": xid,
                    "branch": branch.name,
                    "position": position,
                    "participant": branch.participant,
                    "state": "pending",
                    "payload": orjson.dumps(dict(branch.payload)).decode(),
                    "updated_at": now,
                }
                for position, branch in enumerate(branches)
            ],
        )

    async def execute(
        self, xid: str, *, kind: str = "", branches: Sequence[Branch] | None = None
    ) -> TxnState:
        """Try every branch, decide, then confirm (or cancel and re-raise the try's error).

        `branches`: the ones just given to `begin` (spares reading them back); they reach
        the participants as stored, exactly as recovery would hand them over.

        Returns `CONFIRMED`, or `CONFIRMING` when a confirm failed and was left to recovery
        (the outcome is decided: it will be confirmed). Raises the first try's error after
        cancelling, or `TransactionAborted` if recovery cancelled the transaction first.
        """
        branches = (
            await self._branches(xid)
            if branches is None
            else [Branch(b.name, b.participant, _stored(b.payload)) for b in branches]
        )
        for branch in branches:
            try:
                await self._participant(branch).try_(xid, branch.payload)
            except Exception as error:
                reason = f"{branch.name}: {type(error).__name__}"
                # A participant that could not be reached is not asked again inside this
                # request (the caller is owed a fast answer): recovery cancels it shortly.
                unreachable = branch.name if _unreachable(error) else None
                await self._move(
                    xid,
                    TxnState.TRYING,
                    TxnState.CANCELLING,
                    reason=reason,
                    retry_in=None if unreachable is None else self._backoff,
                )
                await self._drive_cancel(xid, branches, deferred=unreachable)
                TCC_OUTCOMES.labels(kind, "cancelled").inc()
                raise
            self._crash_point(f"after_try:{branch.name}")
        if not await self._move(xid, TxnState.TRYING, TxnState.CONFIRMING):
            await self._drive_cancel(xid, branches)
            TCC_OUTCOMES.labels(kind, "aborted").inc()
            raise TransactionAborted(f"Transaction {xid} was cancelled before its decision.")
        self._crash_point("after_decision")
        state = await self._drive_confirm(xid, branches)
        TCC_OUTCOMES.labels(kind, state.value).inc()
        return state

    async def state(self, xid: str) -> TxnState | None:
        async with self._reads() as session:
            value = await session.scalar(
                select(transactions.c.state).where(transactions.c.xid == xid)
            )
        return None if value is None else TxnState(value)

    # -- recovery ------------------------------------------------------------------------------

    async def recover(self, *, limit: int = 100) -> int:
        """Drive due transactions (in doubt, or whose confirm/cancel failed) to their end."""
        claimed = await self._claim(limit)
        for xid, state in claimed:
            TCC_RECOVERED.labels(state.value).inc()
            branches = await self._branches(xid)
            if state is TxnState.TRYING:
                if await self._move(xid, TxnState.TRYING, TxnState.CANCELLING, reason="in doubt"):
                    state = TxnState.CANCELLING
                else:
                    state = await self.state(xid) or TxnState.CANCELLED
            if state is TxnState.CONFIRMING:
                await self._drive_confirm(xid, branches)
            elif state is TxnState.CANCELLING:
                await self._drive_cancel(xid, branches)
        return len(claimed)

    async def _claim(self, limit: int) -> list[tuple[str, TxnState]]:
        now = self._clock()
        open_states = [TxnState.TRYING.value, TxnState.CONFIRMING.value, TxnState.CANCELLING.value]
        async with self._sessions() as session, session.begin():
            rows = (
                await session.execute(
                    select(transactions.c.xid, transactions.c.state, transactions.c.attempts)
                    .where(
                        and_(
                            transactions.c.state.in_(open_states),
                            transactions.c.next_attempt_at <= now,
                        )
                    )
                    .order_by(transactions.c.next_attempt_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for xid, _state, attempts in rows:
                delay = min(self._max_backoff, self._backoff * 2 ** min(attempts, 16))
                await session.execute(
                    update(transactions)
                    .where(transactions.c.xid == xid)
                    .values(
                        attempts=attempts + 1,
                        next_attempt_at=now + timedelta(seconds=delay),
                        updated_at=now,
                    )
                )
        return [(xid, TxnState(state)) for xid, state, _ in rows]

    # -- internals -----------------------------------------------------------------------------

    def _crash_point(self, point: str) -> None:
        """Chaos tests only (refused in production by the settings): die here like `kill -9`."""
        if point in self._crash_points:
            _log.warning("tcc_crash_point", point=point)
            os.kill(os.getpid(), signal.SIGKILL)

    def _participant(self, branch: Branch) -> TccParticipant:
        return self._participants[branch.participant]

    async def _branches(self, xid: str) -> list[Branch]:
        async with self._reads() as session:
            rows = (
                await session.execute(
                    select(
                        branches_table.c.branch,
                        branches_table.c.participant,
                        branches_table.c.payload,
                    )
                    .where(branches_table.c.xid == xid)
                    .order_by(branches_table.c.position)
                )
            ).all()
        return [
            Branch(name, participant, orjson.loads(payload)) for name, participant, payload in rows
        ]

    async def _move(
        self,
        xid: str,
        source: TxnState,
        target: TxnState,
        *,
        reason: str | None = None,
        branch_state: str | None = None,
        retry_in: float | None = None,
    ) -> bool:
        values: dict[str, Any] = {"state": target.value, "updated_at": self._clock()}
        if reason is not None:
            values["reason"] = reason[:200]
        if retry_in is not None:
            values["next_attempt_at"] = values["updated_at"] + timedelta(seconds=retry_in)
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(transactions)
                .where(and_(transactions.c.xid == xid, transactions.c.state == source.value))
                .values(**values)
            )
            if result.rowcount and branch_state is not None:  # type: ignore[attr-defined]
                await session.execute(
                    update(branches_table)
                    .where(branches_table.c.xid == xid)
                    .values(state=branch_state, updated_at=values["updated_at"])
                )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def _drive_confirm(self, xid: str, branches: Sequence[Branch]) -> TxnState:
        for branch in branches:
            try:
                await self._participant(branch).confirm(xid, branch.payload)
            except Exception:  # noqa: BLE001 - decided: recovery retries the confirm later
                _log.warning("tcc_confirm_deferred", xid=xid, branch=branch.name, exc_info=True)
                return TxnState.CONFIRMING
            self._crash_point(f"after_confirm:{branch.name}")
        await self._move(xid, TxnState.CONFIRMING, TxnState.CONFIRMED, branch_state="confirmed")
        return TxnState.CONFIRMED

    async def _drive_cancel(
        self, xid: str, branches: Sequence[Branch], *, deferred: str | None = None
    ) -> TxnState:
        """Cancel every branch but `deferred` (left, with the transaction, to recovery)."""
        # Reverse order: undo the last effect first (the order, then money, then stock).
        for branch in reversed(branches):
            if branch.name == deferred:
                _log.info("tcc_cancel_deferred", xid=xid, branch=branch.name, why="unreachable")
                continue
            try:
                await self._participant(branch).cancel(xid, branch.payload)
            except Exception:  # noqa: BLE001 - decided: recovery retries the cancel later
                _log.warning("tcc_cancel_deferred", xid=xid, branch=branch.name, exc_info=True)
                return TxnState.CANCELLING
        if deferred is not None:
            return TxnState.CANCELLING
        await self._move(xid, TxnState.CANCELLING, TxnState.CANCELLED, branch_state="cancelled")
        return TxnState.CANCELLED


def _unreachable(error: BaseException) -> bool:
    """The participant did not answer (its dependency is down, slow or refusing calls)."""
    return isinstance(error, IronCartError) and error.kind is ErrorKind.UNAVAILABLE
