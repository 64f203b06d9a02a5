"""The TCC coordinator's log: one row per global transaction, one per branch."""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, String, Table, Text

from ironcart.platform.database import Timestamp, metadata

transactions = Table(
    "txn_transactions",
    metadata,
    Column("xid", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    # trying -> confirming -> confirmed | trying/confirming? -> cancelling -> cancelled
    Column("state", String(16), nullable=False),
    Column("reason", String(200), nullable=True),
    Column("attempts", Integer, nullable=False),
    # Recovery drives a transaction once this time has passed (in-doubt, or retry backoff).
    Column("next_attempt_at", Timestamp, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Index("ix_txn_transactions_state_next_attempt_at", "state", "next_attempt_at"),
)

branches = Table(
    "txn_branches",
    metadata,
    Column("xid", String(64), primary_key=True),
    Column("branch", String(32), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("participant", String(32), nullable=False),
    # pending until the transaction ends, then confirmed | cancelled with it
    Column("state", String(16), nullable=False),
    Column("payload", Text, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)
