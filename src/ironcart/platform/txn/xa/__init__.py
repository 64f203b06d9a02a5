"""XA / two-phase commit: one atomic commit across several databases, and its recovery.

For deployments where the tables of two contexts live in different databases (orders and
inventory): each database is a resource (`PostgresResource`: PREPARE TRANSACTION;
`MysqlResource`: XA START/END/PREPARE), a context does its part as an `XaBranch` whose
work runs on the branch's connection, and `XaCoordinator` prepares every branch, writes
its decision to `txn_xa_log` (the commit point), commits, and on restart recovers every
prepared branch it finds by that log.

resources.py    the resource managers, in plain SQL over SQLAlchemy's async connections
log.py          the decision log table and its queries
coordinator.py  the protocol (begin, execute, abort), crash points for chaos tests
follow_ups.py   what an initiator does once its transaction is decided (`XaFollowUp`)
recovery.py     finishing what a dead or hanging coordinator left (`recover()`)

Errors: `XaError` ├── `XaAborted` (given up by recovery before the decision: rolled back)
                  └── `XaInDoubt` (the decision write failed: recovery finishes it)
A branch's own error (its work, or a prepare) is re-raised after every branch rolled back.
"""

from __future__ import annotations

from ironcart.platform.txn.xa.coordinator import (
    CRASH_POINTS,
    BranchWork,
    XaAborted,
    XaBranch,
    XaCoordinator,
    XaError,
    XaInDoubt,
    XaOutcome,
)
from ironcart.platform.txn.xa.follow_ups import XaFollowUp
from ironcart.platform.txn.xa.log import XaEntry, XaState, xa_log
from ironcart.platform.txn.xa.recovery import XaRecovery
from ironcart.platform.txn.xa.resources import (
    MysqlResource,
    PostgresResource,
    XaResource,
    is_unknown_xid,
    xa_resource,
)

__all__ = [
    "CRASH_POINTS",
    "BranchWork",
    "MysqlResource",
    "PostgresResource",
    "XaAborted",
    "XaBranch",
    "XaCoordinator",
    "XaEntry",
    "XaError",
    "XaFollowUp",
    "XaInDoubt",
    "XaOutcome",
    "XaRecovery",
    "XaResource",
    "XaState",
    "is_unknown_xid",
    "xa_log",
    "xa_resource",
]
