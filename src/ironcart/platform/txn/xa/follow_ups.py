"""What an initiator does once its XA transaction is decided, and running it exactly as
`execute` and recovery both must: the kind's follow-up, then the log row marked settled.

An initiator whose transaction has effects outside the databases (a payment authorized
before it, captured or voided after it) registers an `XaFollowUp` for its `kind`. Its rows
are logged unsettled; a follow-up that fails, or a process that dies before it ran,
leaves the row unsettled, and recovery runs it again: it must be idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

import structlog

from ironcart.platform.txn.xa.log import XaLog, XaState

_log = structlog.get_logger("ironcart.txn.xa")


class XaFollowUp(Protocol):
    """What the initiator of one kind of transaction does once it is decided (idempotent:
    recovery may run it again after a crash)."""

    async def committed(self, gid: str, payload: Mapping[str, Any]) -> None:
        """Every branch committed."""
        ...

    async def aborted(self, gid: str, payload: Mapping[str, Any]) -> None:
        """Rolled back (or given up before any branch ran)."""
        ...


class FollowUps:
    """The follow-ups by kind, run against the decision log."""

    def __init__(
        self,
        log: XaLog,
        clock: Callable[[], datetime],
        follow_ups: Mapping[str, XaFollowUp] | None = None,
    ) -> None:
        self._log = log
        self._clock = clock
        self._by_kind: dict[str, XaFollowUp] = dict(follow_ups or {})

    def register(self, kind: str, follow_up: XaFollowUp) -> None:
        self._by_kind[kind] = follow_up

    def __contains__(self, kind: object) -> bool:
        return kind in self._by_kind

    async def run(self, gid: str, kind: str, state: XaState, payload: Mapping[str, Any]) -> bool:
        """Run the kind's follow-up of `state` and mark the row settled; False if it failed
        (the row stays unsettled: recovery runs it again)."""
        follow_up = self._by_kind.get(kind)
        if follow_up is None:
            return True
        try:
            if state is XaState.COMMITTED:
                await follow_up.committed(gid, payload)
            else:
                await follow_up.aborted(gid, payload)
            await self._log.settle(gid, now=self._clock())
        except Exception:  # noqa: BLE001 - decided either way: recovery follows it up later
            _log.warning("xa_follow_up_deferred", gid=gid, state=state.value, exc_info=True)
            return False
        return True
