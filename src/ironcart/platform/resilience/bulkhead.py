"""Bounded concurrency per dependency: a stalled dependency holds at most `max_concurrent`
calls; the next ones wait a bounded time for a slot, then are refused (no call is made)."""

from __future__ import annotations

import asyncio


class Bulkhead:
    def __init__(self, max_concurrent: int) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        self._limit = max_concurrent
        self._slots = asyncio.Semaphore(max_concurrent)
        self._waiting = 0
        self._in_flight = 0

    @property
    def max_concurrent(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return self._waiting

    async def acquire(self, wait_seconds: float) -> bool:
        """Take a slot, waiting at most `wait_seconds`; False when none came free in time."""
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot is taken without suspending
            self._in_flight += 1
            return True
        if wait_seconds <= 0:
            return False
        self._waiting += 1
        try:
            async with asyncio.timeout(wait_seconds):
                await self._slots.acquire()
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1
        self._in_flight += 1
        return True

    def release(self) -> None:
        self._in_flight -= 1
        self._slots.release()
