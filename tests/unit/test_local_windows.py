"""The per-process fixed-window counters behind `RateLimiter.consume` without Redis."""

from __future__ import annotations

import pytest

from ironcart.platform.ratelimit import Limit, LocalWindows, RateLimiter

pytestmark = pytest.mark.anyio


def test_counts_per_key_and_window() -> None:
    windows = LocalWindows()

    assert [windows.incr("a", 7) for _ in range(3)] == [1, 2, 3]
    assert windows.incr("b", 7) == 1
    assert windows.incr("a", 8) == 1  # a new window starts from one


def test_memory_stays_bounded_under_many_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LocalWindows, "MAX_KEYS", 100)
    windows = LocalWindows()
    for n in range(60):
        windows.incr(f"old-{n}", 1)

    for n in range(1000):
        windows.incr(f"ip-{n}", 2)
        assert len(windows) <= 101

    assert windows.incr("ip-999", 2) >= 1


async def test_consume_in_process_refuses_past_the_limit_and_resets_next_window() -> None:
    limiter = RateLimiter.in_process()
    limit = Limit("api-ip", "3/minute")

    usages = [await limiter.consume(limit, "10.0.0.1", now=120.0) for _ in range(4)]
    later = await limiter.consume(limit, "10.0.0.1", now=180.0)

    assert [u.allowed for u in usages] == [True, True, True, False]
    assert [u.remaining for u in usages] == [2, 1, 0, 0]
    assert usages[0].reset_seconds == 60
    assert (later.allowed, later.remaining) == (True, 2)
