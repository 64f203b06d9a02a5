"""The request's deadline, carried in a context variable and propagated downstream.

A caller says how long it will wait in `X-Request-Deadline-Ms` (remaining milliseconds:
relative, so immune to clock skew between hosts). `DeadlineMiddleware` starts every
request's scope with min(that header, `request_deadline_seconds`); outbound calls read
`remaining_seconds()` so a request with 2 s left never starts a 5 s call, and send what is
left on with `outbound_deadline_headers()`. A route may have a tighter deadline of its own
(`route_deadlines`: checkout must answer fast even when the PSP stalls).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from starlette.types import ASGIApp, Receive, Scope, Send

DEADLINE_HEADER = "X-Request-Deadline-Ms"
_HEADER_KEY = DEADLINE_HEADER.lower().encode()
_MAX_HEADER_MS = 3_600_000  # beyond an hour the value is noise: the server's bound applies

# An absolute time.monotonic() value; None: no deadline.
_deadline: ContextVar[float | None] = ContextVar("ironcart_deadline", default=None)


def remaining_seconds() -> float | None:
    """Seconds left before the current deadline (may be <= 0), or None without one."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


@contextmanager
def deadline_scope(seconds: float) -> Iterator[None]:
    """Run the block under a deadline `seconds` from now; an earlier one already set wins."""
    candidate = time.monotonic() + seconds
    current = _deadline.get()
    token = _deadline.set(candidate if current is None else min(current, candidate))
    try:
        yield
    finally:
        _deadline.reset(token)


def outbound_deadline_headers() -> dict[str, str]:
    """The header telling a downstream service how long is left; {} when no deadline."""
    left = remaining_seconds()
    if left is None:
        return {}
    return {DEADLINE_HEADER: str(max(0, int(left * 1000)))}


def parse_deadline_ms(value: bytes | str | None) -> float | None:
    """Seconds from a header value; None when absent or not a whole number of milliseconds."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not text.isdigit() or len(text) > 10:
        return None
    return min(int(text), _MAX_HEADER_MS) / 1000


class DeadlineMiddleware:
    """Pure ASGI: each HTTP request runs under min(its header, its route's deadline from
    `routes` ("METHOD /path", exact), else `default_seconds`)."""

    def __init__(
        self, app: ASGIApp, *, default_seconds: float, routes: Mapping[str, float] | None = None
    ) -> None:
        self._app = app
        self._default = default_seconds
        self._routes = dict(routes or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        route = f"{scope['method']} {scope['path']}"
        seconds = min(self._default, self._routes.get(route, self._default))
        for key, value in scope["headers"]:
            if key == _HEADER_KEY:
                asked = parse_deadline_ms(value)
                if asked is not None:
                    seconds = min(seconds, asked)
                break
        with deadline_scope(seconds):
            await self._app(scope, receive, send)
