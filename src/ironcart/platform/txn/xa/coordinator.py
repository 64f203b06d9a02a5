"""The XA coordinator: an atomic commit across databases.

`execute(branches)`:

1. log the transaction `preparing` (committed before any branch begins, so a prepared
   branch without a log row is never a live transaction's);
2. start every branch and run its work on its connection, in branch order;
3. prepare every branch;
4. write the decision `committing` in its own transaction: a conditional UPDATE from
   `preparing`, the commit point. It loses only if recovery already gave the
   transaction up as in doubt; then it is rolled back (`XaAborted`);
5. commit every branch, then log `committed`. A commit that fails is left to recovery
   (the outcome is decided: it will be committed) and `execute` returns `COMMITTING`.

Any failure before the decision rolls back every branch, prepared or not, logs `aborted`
and re-raises. A failure of the decision write itself leaves the prepared branches to
recovery (`XaInDoubt`): the UPDATE may have committed, so nothing may be undone.

Follow-ups (`follow_ups.py`): `execute` runs the kind's `committed` once every branch
committed, or `aborted` once the rollback is logged, then marks the row settled; what
did not run is left to recovery. `begin` logs a transaction before its branches exist,
so that what the initiator does before `execute` (authorize a payment) is already covered
by recovery; `abort` gives up such a transaction.

`recover()` finishes what a dead or hanging coordinator left (`recovery.py`).
"""

from __future__ import annotations

import os
import re
import signal
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ironcart.platform.txn.xa.follow_ups import FollowUps, XaFollowUp
from ironcart.platform.txn.xa.log import XaEntry, XaLog, XaState
from ironcart.platform.txn.xa.recovery import XaRecoverer, XaRecovery
from ironcart.platform.txn.xa.resources import XaResource

_log = structlog.get_logger("ironcart.txn.xa")

XA_OUTCOMES = Counter(
    "ironcart_xa_transactions_total",
    "XA transactions by kind and how they ended (or were left for recovery).",
    ["kind", "outcome"],
)

PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,11}$")
CRASH_POINTS = frozenset({"after_prepare", "after_decision", "after_first_commit"})


class XaError(Exception):
    code = "xa"


class XaAborted(XaError):
    """Recovery gave the transaction up (in doubt) before its decision: rolled back."""

    code = "xa_aborted"


class XaInDoubt(XaError):
    """The decision could not be recorded for sure: recovery will finish the transaction."""

    code = "xa_in_doubt"

    def __init__(self, gid: str) -> None:
        self.gid = gid
        super().__init__(f"XA transaction {gid}: decision unknown, left to recovery")


BranchWork = Callable[[AsyncConnection], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class XaBranch:
    """A context's part of an XA transaction: `work` runs on the branch's connection, inside
    the branch's transaction, and must neither commit nor roll back."""

    name: str
    resource: XaResource
    work: BranchWork


@dataclass(frozen=True, slots=True)
class XaOutcome:
    gid: str
    state: XaState  # COMMITTED, or COMMITTING: decided, a commit was left to recovery


@dataclass
class _Open:
    branch: XaBranch
    connection: AsyncConnection
    prepared: bool = False
    finished: bool = False


def _now() -> datetime:
    return datetime.now(UTC)


class XaCoordinator:
    def __init__(
        self,
        engine: AsyncEngine,
        resources: Sequence[XaResource],
        *,
        gid_prefix: str = "ironcart",
        in_doubt_after_seconds: float = 60.0,
        retry_backoff_seconds: float = 2.0,
        max_backoff_seconds: float = 300.0,
        clock: Callable[[], datetime] = _now,
        crash_points: frozenset[str] = frozenset(),
        follow_ups: Mapping[str, XaFollowUp] | None = None,
    ) -> None:
        if not PREFIX_PATTERN.match(gid_prefix):
            raise ValueError(
                f"an XA gid prefix is 1-12 of a-z, 0-9, starting with a letter: {gid_prefix!r}"
            )
        names = [resource.name for resource in resources]
        if len(set(names)) != len(names):
            raise ValueError(f"XA resource names must be unique: {names}")
        unknown = crash_points - CRASH_POINTS
        if unknown:
            raise ValueError(f"unknown XA crash points: {sorted(unknown)}")
        self._log = XaLog(engine)
        self._resources = {resource.name: resource for resource in resources}
        self._prefix = gid_prefix
        self._in_doubt = timedelta(seconds=in_doubt_after_seconds)
        self._clock = clock
        self._crash_points = crash_points
        self._follow_ups = FollowUps(self._log, clock, follow_ups)
        self._gid_pattern = re.compile(rf"^{gid_prefix}-([0-9a-f]{{11}})-[0-9a-f]{{32}}$")
        self._recoverer = XaRecoverer(
            self._log,
            self._resources,
            self._follow_ups,
            prefix=gid_prefix,
            created_at=self._created_at,
            in_doubt=self._in_doubt,
            backoff_seconds=retry_backoff_seconds,
            max_backoff_seconds=max_backoff_seconds,
            clock=clock,
        )

    def follow_up(self, kind: str, follow_up: XaFollowUp) -> None:
        """Run `follow_up` once each transaction of `kind` is decided (register at start:
        a transaction begun before is logged settled)."""
        self._follow_ups.register(kind, follow_up)

    async def recover(self, *, limit: int = 100) -> XaRecovery:
        """Finish due and orphaned transactions (`recovery.py`); safe to run on several
        workers at once."""
        return await self._recoverer.recover(limit=limit)

    # -- the initiator's side ----------------------------------------------------------------

    def new_gid(self) -> str:
        """A global transaction id: `<prefix>-<creation time, ms, hex>-<random>` (<= 57 chars)."""
        millis = int(self._clock().timestamp() * 1000)
        return f"{self._prefix}-{millis:011x}-{uuid.uuid4().hex}"

    async def execute(
        self,
        branches: Sequence[XaBranch],
        *,
        kind: str = "",
        payload: Mapping[str, Any] | None = None,
        gid: str | None = None,
        begun: bool = False,
    ) -> XaOutcome:
        """Run every branch's work and commit them all, or none (see the module docstring).

        `begun`: `gid` was logged by `begin` already (with its kind and payload; the
        payload given here, if any, must be the same).
        """
        self._check(branches)
        gid = gid or self.new_gid()
        stored = _stored(payload or {})
        if begun and payload is None:
            entry = await self._log.get(gid)
            if entry is None:
                raise ValueError(f"XA transaction {gid} was not begun")
            stored = dict(entry.payload)
        if not begun:
            await self.begin(
                gid, kind=kind, resources=[branch.resource for branch in branches], payload=stored
            )
        opened: list[_Open] = []
        try:
            await self._prepare_all(gid, branches, opened, kind, stored)
            self._crash_point("after_prepare")
            await self._decide(gid, opened, kind, stored)
            self._crash_point("after_decision")
            outcome = await self._commit_all(gid, opened, kind)
        finally:
            await self._release(opened)
        if outcome.state is XaState.COMMITTED:
            await self._follow_ups.run(gid, kind, XaState.COMMITTED, stored)
        return outcome

    async def begin(
        self,
        gid: str,
        *,
        kind: str,
        resources: Sequence[XaResource],
        payload: Mapping[str, Any],
        reference: str | None = None,
    ) -> None:
        """Log `gid` as `preparing` before its branches run (`execute(..., begun=True)`):
        whatever the initiator does in between is covered by recovery, which gives the
        transaction up (and runs the `aborted` follow-up) if it is not decided in time."""
        if not self._gid_pattern.match(gid):
            raise ValueError(f"not a gid of this coordinator: {gid!r} (use new_gid())")
        now = self._clock()
        await self._log.open(
            gid,
            kind=kind,
            resources=[resource.name for resource in resources],
            payload=_stored(payload),
            now=now,
            due_at=now + self._in_doubt,
            settled=kind not in self._follow_ups,
            reference=reference,
        )

    async def abort(self, gid: str, *, reason: str) -> bool:
        """Give up a begun transaction whose branches never ran: `aborted`, then its follow-up.
        False if it was decided (or given up) already."""
        aborted = await self._log.move(
            gid, XaState.PREPARING, XaState.ABORTED, now=self._clock(), reason=reason
        )
        entry = await self._log.get(gid)
        if entry is not None and entry.state is XaState.ABORTED and not entry.settled:
            await self._follow_ups.run(gid, entry.kind, XaState.ABORTED, entry.payload)
        return aborted

    async def find(self, reference: str) -> XaEntry | None:
        """The latest transaction begun with this `reference`."""
        return await self._log.find(reference)

    async def get(self, gid: str) -> XaEntry | None:
        """The log row of `gid` (its state, resources and the initiator's payload)."""
        return await self._log.get(gid)

    async def state(self, gid: str) -> XaState | None:
        entry = await self._log.get(gid)
        return None if entry is None else entry.state

    # -- phases ----------------------------------------------------------------------------------

    async def _prepare_all(
        self,
        gid: str,
        branches: Sequence[XaBranch],
        opened: list[_Open],
        kind: str,
        payload: Mapping[str, Any],
    ) -> None:
        step = "start"
        current = branches[0]
        try:
            for current in branches:
                step = "start"
                connection = await current.resource.start(gid)
                opened.append(_Open(current, connection))
                step = "work"
                await current.work(connection)
            for item in opened:
                current, step = item.branch, "prepare"
                await current.resource.prepare(item.connection, gid)
                item.prepared = True
        except BaseException as error:
            reason = f"{current.name} {step}: {type(error).__name__}"
            _log.info("xa_aborted", gid=gid, reason=reason)
            if await self._abort(gid, opened, reason):
                await self._follow_ups.run(gid, kind, XaState.ABORTED, payload)
            XA_OUTCOMES.labels(kind, "aborted").inc()
            raise

    async def _decide(
        self, gid: str, opened: list[_Open], kind: str, payload: Mapping[str, Any]
    ) -> None:
        now = self._clock()
        try:
            decided = await self._log.move(
                gid, XaState.PREPARING, XaState.COMMITTING, now=now, due_at=now + self._in_doubt
            )
        except Exception as error:
            _log.warning("xa_decision_unknown", gid=gid, exc_info=True)
            XA_OUTCOMES.labels(kind, "in_doubt").inc()
            raise XaInDoubt(gid) from error
        if not decided:
            await self._abort(gid, opened, "given up by recovery before the decision")
            await self._follow_ups.run(gid, kind, XaState.ABORTED, payload)
            XA_OUTCOMES.labels(kind, "aborted").inc()
            raise XaAborted(f"XA transaction {gid} was rolled back before its decision")

    async def _commit_all(self, gid: str, opened: list[_Open], kind: str) -> XaOutcome:
        deferred = False
        for position, item in enumerate(opened):
            try:
                await item.branch.resource.commit(gid, item.connection)
                item.finished = True
            except Exception:  # noqa: BLE001 - decided: recovery commits this branch later
                _log.warning("xa_commit_deferred", gid=gid, branch=item.branch.name, exc_info=True)
                deferred = True
            if position == 0:
                self._crash_point("after_first_commit")
        if deferred:
            XA_OUTCOMES.labels(kind, "committing").inc()
            return XaOutcome(gid, XaState.COMMITTING)
        await self._log.move(gid, XaState.COMMITTING, XaState.COMMITTED, now=self._clock())
        XA_OUTCOMES.labels(kind, "committed").inc()
        return XaOutcome(gid, XaState.COMMITTED)

    async def _abort(self, gid: str, opened: list[_Open], reason: str) -> bool:
        """Roll back every opened branch (best effort: recovery rolls back what is left),
        then log `aborted` (if the row is still `preparing`); True if this logged it."""
        for item in reversed(opened):
            resource = item.branch.resource
            try:
                if item.prepared:
                    await resource.rollback(gid, item.connection)
                else:
                    await resource.rollback_active(item.connection, gid)
                item.finished = True
            except Exception:  # noqa: BLE001 - its connection is dropped: the server ends it
                _log.warning(
                    "xa_rollback_deferred", gid=gid, branch=item.branch.name, exc_info=True
                )
        try:
            return await self._log.move(
                gid, XaState.PREPARING, XaState.ABORTED, now=self._clock(), reason=reason
            )
        except Exception:  # noqa: BLE001 - still `preparing`: recovery aborts it when in doubt
            _log.warning("xa_abort_not_logged", gid=gid, exc_info=True)
            return False

    async def _release(self, opened: list[_Open]) -> None:
        """Give the connections back; one still holding a branch is closed, not pooled (a
        MariaDB session keeps its prepared branch: ending it detaches it for recovery)."""
        for item in opened:
            try:
                if not item.finished:
                    await item.connection.invalidate()
                await item.connection.close()
            except Exception:  # noqa: BLE001 - a broken connection is discarded either way
                _log.warning("xa_connection_release_failed", exc_info=True)

    # -- internals ---------------------------------------------------------------------------------

    def _check(self, branches: Sequence[XaBranch]) -> None:
        if not branches:
            raise ValueError("an XA transaction needs at least one branch")
        names = [branch.resource.name for branch in branches]
        if len(set(names)) != len(names):
            raise ValueError(f"one branch per resource in an XA transaction: {names}")
        for branch in branches:
            if self._resources.get(branch.resource.name) is not branch.resource:
                raise ValueError(f"resource {branch.resource.name!r} is not this coordinator's")

    def _created_at(self, gid: str) -> datetime | None:
        """When `gid` was made (`new_gid`); None for a gid not of this coordinator's form."""
        match = self._gid_pattern.match(gid)
        if match is None:
            return None
        return datetime.fromtimestamp(int(match.group(1), 16) / 1000, UTC)

    def _crash_point(self, point: str) -> None:
        """Chaos tests only (refused in production by the settings): die here like `kill -9`."""
        if point in self._crash_points:
            _log.warning("xa_crash_point", point=point)
            os.kill(os.getpid(), signal.SIGKILL)


def _stored(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as the log stores it (JSON): a follow-up run by `execute` sees exactly
    what recovery would hand it."""
    stored: dict[str, Any] = orjson.loads(orjson.dumps(dict(payload)))
    return stored
