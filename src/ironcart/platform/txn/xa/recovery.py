"""XA recovery: finish the transactions whose coordinator died, hangs, or left work undone.

`XaRecoverer.recover()` (`XaCoordinator.recover`; any number of workers at once): claims
due log rows with SKIP LOCKED and pushes each back by an exponential backoff; a
`preparing` row that is due is in doubt and is moved to `aborted` (conditionally: if its
coordinator decided first, it is committed instead). Then, for every resource, every
prepared branch of ours is finished by its row: `committing` (claimed here) or
`committed` -> COMMIT; `aborted` -> ROLLBACK; no row and older than the in-doubt
threshold (the gtrid carries its creation time) -> ROLLBACK (presumed abort); otherwise
it is left alone (a live coordinator's). Finally a claimed `committing` row with no
branch left prepared becomes `committed`. Claimed rows that end `committed` or `aborted`
unsettled get their follow-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

import structlog
from prometheus_client import Counter

from ironcart.platform.txn.xa.follow_ups import FollowUps
from ironcart.platform.txn.xa.log import XaLog, XaState
from ironcart.platform.txn.xa.resources import XaResource

_log = structlog.get_logger("ironcart.txn.xa")

XA_RECOVERED = Counter(
    "ironcart_xa_recovered_branches_total",
    "Prepared XA branches finished by recovery, by resource and action.",
    ["resource", "action"],
)


@dataclass
class XaRecovery:
    """What one `recover()` pass did."""

    claimed: int = 0
    aborted: int = 0  # in-doubt transactions given up
    committed_branches: int = 0
    rolled_back_branches: int = 0
    finished: int = 0  # committing -> committed
    failures: int = 0  # branches (or follow-ups) left for the next pass
    settled: int = 0  # follow-ups run


class _Action(StrEnum):
    COMMIT = "commit"
    ROLLBACK = "rollback"
    WAIT = "wait"


@dataclass
class _Pass:
    now: datetime
    claimed: dict[str, XaState] = field(default_factory=dict)
    resources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    report: XaRecovery = field(default_factory=XaRecovery)


class XaRecoverer:
    """The recovery of one coordinator: its log, its resources, its gids (by `prefix`)."""

    def __init__(
        self,
        log: XaLog,
        resources: Mapping[str, XaResource],
        follow_ups: FollowUps,
        *,
        prefix: str,
        created_at: Callable[[str], datetime | None],
        in_doubt: timedelta,
        backoff_seconds: float,
        max_backoff_seconds: float,
        clock: Callable[[], datetime],
    ) -> None:
        self._log = log
        self._resources = resources
        self._follow_ups = follow_ups
        self._prefix = prefix
        self._created_at = created_at  # from the gid: how long an unlogged branch has been
        self._in_doubt = in_doubt
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._clock = clock

    async def recover(self, *, limit: int = 100) -> XaRecovery:
        """Finish due and orphaned transactions (see the module docstring)."""
        work = _Pass(self._clock())
        for gid, state, resources in await self._log.claim(
            now=work.now,
            limit=limit,
            backoff_seconds=self._backoff,
            max_backoff_seconds=self._max_backoff,
        ):
            work.report.claimed += 1
            work.resources[gid] = resources
            if state is XaState.PREPARING:
                state = await self._give_up(gid, work)
            work.claimed[gid] = state
        prepared = await self._scan()
        found = {gid for gids in prepared.values() for gid in gids}
        states = await self._log.states(sorted(found - set(work.claimed)))
        states.update(work.claimed)
        for name, gids in sorted(prepared.items()):
            for gid in sorted(gids):
                action = self._action(gid, states.get(gid), work)
                await self._finish(self._resources[name], gid, action, work.report)
        await self._complete(work)
        await self._settle(work)
        return work.report

    async def _give_up(self, gid: str, work: _Pass) -> XaState:
        """A due `preparing` row is in doubt: abort it, unless its decision won the race."""
        if await self._log.move(
            gid, XaState.PREPARING, XaState.ABORTED, now=work.now, reason="in doubt"
        ):
            work.report.aborted += 1
            _log.warning("xa_in_doubt_aborted", gid=gid)
            return XaState.ABORTED
        entry = await self._log.get(gid)
        return XaState.ABORTED if entry is None else entry.state

    def _action(self, gid: str, state: XaState | None, work: _Pass) -> _Action:
        if state is XaState.COMMITTED or (state is XaState.COMMITTING and gid in work.claimed):
            return _Action.COMMIT
        if state is XaState.ABORTED:
            return _Action.ROLLBACK
        if state is None:  # presumed abort, once no live coordinator can still log it
            created = self._created_at(gid)
            if created is not None and created + self._in_doubt <= work.now:
                return _Action.ROLLBACK
        return _Action.WAIT  # a live coordinator's, or claimed by another worker

    async def _finish(
        self, resource: XaResource, gid: str, action: _Action, report: XaRecovery
    ) -> None:
        if action is _Action.WAIT:
            return
        try:
            if action is _Action.COMMIT:
                done = await resource.commit(gid)
                report.committed_branches += done
            else:
                done = await resource.rollback(gid)
                report.rolled_back_branches += done
        except Exception:  # noqa: BLE001 - the next pass tries again
            report.failures += 1
            _log.warning("xa_recovery_failed", gid=gid, resource=resource.name, exc_info=True)
            return
        if not done:
            return  # finished meanwhile (another worker), or still attached to a live session
        XA_RECOVERED.labels(resource.name, action.value).inc()
        _log.info("xa_branch_recovered", gid=gid, resource=resource.name, action=action.value)

    async def _complete(self, work: _Pass) -> None:
        """Claimed `committing` rows with nothing left prepared are `committed`."""
        committing = [gid for gid, state in work.claimed.items() if state is XaState.COMMITTING]
        if not committing:
            return
        left = {gid for gids in (await self._scan()).values() for gid in gids}
        for gid in committing:
            unknown = [name for name in work.resources[gid] if name not in self._resources]
            if unknown:
                _log.error("xa_unknown_resources", gid=gid, resources=unknown)
                continue
            if gid not in left and await self._log.move(
                gid, XaState.COMMITTING, XaState.COMMITTED, now=self._clock()
            ):
                work.report.finished += 1
                work.claimed[gid] = XaState.COMMITTED

    async def _settle(self, work: _Pass) -> None:
        """Claimed rows decided and finished but not settled: run their follow-ups."""
        decided = [
            gid
            for gid, state in work.claimed.items()
            if state in {XaState.COMMITTED, XaState.ABORTED}
        ]
        for entry in await self._log.entries(decided):
            if entry.settled or entry.state not in {XaState.COMMITTED, XaState.ABORTED}:
                continue
            if entry.kind not in self._follow_ups:
                _log.error("xa_no_follow_up", gid=entry.gid, kind=entry.kind)
                continue
            if await self._follow_ups.run(entry.gid, entry.kind, entry.state, entry.payload):
                work.report.settled += 1
            else:
                work.report.failures += 1

    async def _scan(self) -> dict[str, set[str]]:
        return {
            name: await resource.prepared(f"{self._prefix}-")
            for name, resource in self._resources.items()
        }
