"""The transactional outbox: events are written in the same transaction as the state they describe.

A context declares its outbox table with `outbox_table(metadata, "<context>")` and, inside
its unit of work, calls `record(session, table, event, subject=...)`. The relay
(`platform.relay`) later reads unpublished rows in `seq` order, publishes each to the bus
(in-process or NATS JetStream) with its `event_id` as the deduplication id, and marks it
published. Nothing is published that was not committed; nothing committed is lost.

Events are frozen dataclasses from `ironcart.contracts`; `encode_event` / `decode_event`
turn them into JSON and back (Decimal as string, datetime as ISO 8601) through a registry
filled by `register_event`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar, get_type_hints

import orjson
from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.platform.database import Timestamp

E = TypeVar("E")
_REGISTRY: dict[str, type[Any]] = {}


def register_event(cls: type[E]) -> type[E]:
    """Make an event dataclass known to `decode_event` under its class name."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    _REGISTRY[cls.__name__] = cls
    return cls


def event_type(name: str) -> type[Any] | None:
    return _REGISTRY.get(name)


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_event(event: object) -> bytes:
    """The event's fields as JSON bytes (its type travels beside it, not inside)."""
    if not dataclasses.is_dataclass(event) or isinstance(event, type):
        raise TypeError(f"{type(event).__name__} is not a dataclass instance")
    return orjson.dumps(dataclasses.asdict(event), default=_default)


def decode_event(name: str, payload: bytes | str) -> object:
    """Rebuild a registered event from `encode_event`'s bytes; `KeyError` if unknown."""
    cls = _REGISTRY[name]
    data: Mapping[str, Any] = orjson.loads(payload)
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.name not in data:
            continue
        values[item.name] = _coerce(hints.get(item.name), data[item.name])
    return cls(**values)


def _coerce(hint: object, value: Any) -> Any:
    if value is None:
        return None
    text = str(hint)
    if hint is Decimal or "Decimal" in text:
        return Decimal(value) if isinstance(value, str | int) else value
    if hint is datetime or "datetime" in text:
        return datetime.fromisoformat(value) if isinstance(value, str) else value
    if isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value


def outbox_table(metadata: MetaData, prefix: str) -> Table:
    """The outbox of one context, named `<prefix>_outbox`."""
    name = f"{prefix}_outbox"
    return Table(
        name,
        metadata,
        Column(
            "seq",
            BigInteger().with_variant(Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("event_type", String(100), nullable=False),
        Column("subject", String(200), nullable=False),
        Column("payload", Text, nullable=False),
        Column("created_at", Timestamp, nullable=False),
        Column("published_at", Timestamp, nullable=True),
        Column("attempts", Integer, nullable=False, default=0),
        # The relay's query: published_at IS NULL ORDER BY seq.
        Index(f"ix_{name}_published_at_seq", "published_at", "seq"),
    )


async def record(session: AsyncSession, table: Table, event: object, *, subject: str) -> str:
    """Add `event` to the outbox in the session's open transaction; returns its event id."""
    event_id = str(uuid.uuid4())
    await session.execute(
        table.insert().values(
            event_id=event_id,
            event_type=type(event).__name__,
            subject=subject,
            payload=encode_event(event).decode(),
            created_at=datetime.now(UTC),
            published_at=None,
            attempts=0,
        )
    )
    return event_id
