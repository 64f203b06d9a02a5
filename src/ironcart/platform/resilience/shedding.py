"""Load shedding: refuse new requests (503 + Retry-After) before the process falls over.

Two signals, both per process: requests in flight, and the event loop's scheduling lag
(sampled every ~50 ms by a small background task, smoothed so that one slow callback does
not shed). Routes have a priority; each priority has its own bounds, lower for low priority:

    low     catalog listing and search (GET /api/v1/products, GET /api/v1/categories)
    normal  everything else under /api and the other framework routes
    high    checkout and money (POST /api/v1/orders, refunds, flash-sale purchases,
            payment webhooks) and POST /api/v1/auth/token; refused only at the hard cap

`/healthz`, `/readyz`, `/metrics` and `/ops/*` are never shed. `SheddingPolicy.admits` is the
whole decision, pure, so it is unit-tested without I/O; the middleware only counts and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from prometheus_client import Counter, Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ironcart.platform.http.problems import problem
from ironcart.platform.settings import AdmissionSettings

SHED = Counter(
    "ironcart_requests_shed_total",
    "Requests refused by load shedding (503), by route priority.",
    ["priority"],
)
IN_FLIGHT = Gauge(
    "ironcart_requests_in_flight",
    "HTTP requests being handled (load shedding counts these), summed over processes.",
    multiprocess_mode="livesum",
)
LOOP_LAG = Gauge(
    "ironcart_event_loop_lag_seconds",
    "Smoothed event-loop scheduling lag that load shedding compares with its bounds.",
    multiprocess_mode="livemax",
)


class Priority(IntEnum):
    LOW = 0
    NORMAL = 1
    HIGH = 2


_EXEMPT = re.compile(r"^/(healthz|readyz|metrics)$|^/ops(/|$)")
_LOW = {("GET", "/api/v1/products"), ("GET", "/api/v1/categories")}
_HIGH = re.compile(
    r"^POST (/api/v1/orders|/api/v1/auth/token|/api/v1/orders/[^/]+/refunds"
    r"|/api/v1/flash-sales/[^/]+/purchase|/api/v1/payments/webhooks/[^/]+)/?$"
)


def classify(method: str, path: str) -> Priority | None:
    """The priority of a request, or None for the routes that are never shed."""
    if _EXEMPT.match(path):
        return None
    if (method, path.rstrip("/") or "/") in _LOW:
        return Priority.LOW
    if _HIGH.match(f"{method} {path}"):
        return Priority.HIGH
    return Priority.NORMAL


@dataclass(frozen=True, slots=True)
class SheddingPolicy:
    """Bounds per priority: in-flight requests, and loop lag (None: never shed on lag)."""

    max_in_flight: tuple[int, int, int]
    max_lag_seconds: tuple[float | None, float | None, float | None]

    @classmethod
    def from_settings(cls, settings: AdmissionSettings) -> SheddingPolicy:
        return cls(
            max_in_flight=(
                settings.max_in_flight_low,
                settings.max_in_flight_normal,
                settings.max_in_flight_high,
            ),
            max_lag_seconds=(
                settings.max_lag_low_ms / 1000,
                settings.max_lag_normal_ms / 1000,
                None,
            ),
        )

    def admits(self, priority: Priority, *, in_flight: int, lag_seconds: float) -> bool:
        """May a new request of `priority` start while `in_flight` others run at this lag?"""
        if in_flight >= self.max_in_flight[priority]:
            return False
        max_lag = self.max_lag_seconds[priority]
        return max_lag is None or lag_seconds < max_lag


class LagMonitor:
    """Samples the event loop's scheduling delay; runs only while requests keep coming."""

    def __init__(
        self,
        *,
        interval_seconds: float = 0.05,
        smoothing: float = 0.3,
        idle_after_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval_seconds
        self._smoothing = smoothing
        self._idle_after = idle_after_seconds
        self._clock = clock
        self.lag_seconds = 0.0
        self._last_used = float("-inf")
        self._task: asyncio.Task[None] | None = None

    def record(self, *, expected: float, actual: float) -> float:
        """Fold one sample (a sleep that was due at `expected`, resumed at `actual`) in."""
        sample = max(0.0, actual - expected)
        self.lag_seconds += self._smoothing * (sample - self.lag_seconds)
        LOOP_LAG.set(self.lag_seconds)
        return self.lag_seconds

    def touch(self) -> None:
        """A request arrived: make sure the sampler runs (it stops itself when idle)."""
        self._last_used = self._clock()
        if self._task is None or self._task.done():
            self.lag_seconds = 0.0
            self._task = asyncio.get_running_loop().create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _sample(self) -> None:
        while self._clock() - self._last_used < self._idle_after:
            expected = self._clock() + self.interval
            await asyncio.sleep(self.interval)
            self.record(expected=expected, actual=self._clock())
        self.lag_seconds = 0.0
        LOOP_LAG.set(0.0)


class LoadSheddingMiddleware:
    """Pure ASGI: counts requests in flight and refuses new ones beyond the policy's bounds."""

    def __init__(self, app: ASGIApp, *, settings: AdmissionSettings) -> None:
        self.app = app
        self.policy = SheddingPolicy.from_settings(settings)
        self.monitor = LagMonitor(interval_seconds=settings.lag_sample_ms / 1000)
        self.retry_after = str(settings.shed_retry_after_seconds)
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._watch_shutdown(receive), send)
            return
        priority = classify(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if priority is None:
            await self.app(scope, receive, send)
            return
        self.monitor.touch()
        lag = self.monitor.lag_seconds
        if not self.policy.admits(priority, in_flight=self.in_flight, lag_seconds=lag):
            await self._shed(priority, scope, receive, send)
            return
        self.in_flight += 1
        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()

    def _watch_shutdown(self, receive: Receive) -> Receive:
        async def watching() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.monitor.stop()
            return message

        return watching

    async def _shed(self, priority: Priority, scope: Scope, receive: Receive, send: Send) -> None:
        SHED.labels(priority.name.lower()).inc()
        response = problem(
            503,
            "overloaded",
            title="Server overloaded",
            detail="The server is shedding load; retry after the time in Retry-After.",
            headers={"Retry-After": self.retry_after},
        )
        await response(scope, receive, send)
