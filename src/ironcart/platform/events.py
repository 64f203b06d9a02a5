"""The in-process event bus: past-tense events, any number of handlers, published after commit.

A use case collects its events while its unit of work is open and hands them to
`publish` only after `commit()` returned, so nothing is announced that was not stored.
Handler errors are logged and do not reach the publisher, except for subscribers that
ask to be retried (`retried=True`): those are the consumers of outbox events, whose
failure must reach the relay so the event is delivered again (they are idempotent).
(The durable outbox and the NATS JetStream relay build on this interface.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog

Handler = Callable[[Any], Awaitable[None]]
_log = structlog.get_logger("ironcart.events")


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[type, list[tuple[Handler, bool]]] = defaultdict(list)

    def subscribe(self, event_type: type, handler: Handler, *, retried: bool = False) -> None:
        """`retried`: this handler's error is raised to the publisher once every handler ran
        (the relay then delivers the event again); otherwise it is logged and dropped."""
        self._handlers[event_type].append((handler, retried))

    async def publish(self, events: Iterable[object]) -> None:
        for event in events:
            failure: Exception | None = None
            for handler, retried in self._handlers.get(type(event), ()):
                try:
                    await handler(event)
                except Exception as error:  # noqa: BLE001 - one failing subscriber must not fail the others
                    _log.exception("event_handler_failed", event_type=type(event).__name__)
                    if retried and failure is None:
                        failure = error
            if failure is not None:
                raise failure
