"""Admission decisions without I/O: route priorities, the shedding policy, lag smoothing."""

from __future__ import annotations

import uuid

import pytest

from ironcart.platform.ratelimit import Limit, RateLimiter, Usage
from ironcart.platform.resilience.ratelimits import headers_for, refusal
from ironcart.platform.resilience.shedding import LagMonitor, Priority, SheddingPolicy, classify
from ironcart.platform.settings import AdmissionSettings, SettingsError, load_settings

LOW, NORMAL, HIGH = Priority.LOW, Priority.NORMAL, Priority.HIGH


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/api/v1/products", LOW),
        ("GET", "/api/v1/products/", LOW),
        ("GET", "/api/v1/categories", LOW),
        ("GET", "/api/v1/products/abc", NORMAL),
        ("POST", "/api/v1/products", NORMAL),
        ("POST", "/api/v1/carts/c1/items", NORMAL),
        ("GET", "/api/v1/orders", NORMAL),
        ("POST", "/api/v1/orders", HIGH),
        ("POST", "/api/v1/orders/o1/refunds", HIGH),
        ("POST", "/api/v1/orders/o1/cancel", NORMAL),
        ("POST", "/api/v1/payments/webhooks/sandbox", HIGH),
        ("POST", "/api/v1/flash-sales/f1/purchase", HIGH),
        ("POST", "/api/v1/auth/token", HIGH),
        ("GET", "/docs", NORMAL),
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
        ("GET", "/ops/breakers", None),
        ("GET", "/opsx", NORMAL),
    ],
    ids=lambda value: str(value),
)
def test_route_priorities(method: str, path: str, expected: Priority | None) -> None:
    assert classify(method, path) == expected


POLICY = SheddingPolicy(max_in_flight=(4, 8, 10), max_lag_seconds=(0.1, 0.3, None))


@pytest.mark.parametrize(
    ("in_flight", "lag", "admitted"),
    [
        (0, 0.0, (True, True, True)),
        (3, 0.0, (True, True, True)),
        (4, 0.0, (False, True, True)),  # low priority goes first
        (8, 0.0, (False, False, True)),
        (9, 0.0, (False, False, True)),
        (10, 0.0, (False, False, False)),  # the hard cap refuses everyone
        (0, 0.1, (False, True, True)),
        (0, 0.3, (False, False, True)),
        (0, 30.0, (False, False, True)),  # checkout is never shed on lag alone
    ],
    ids=lambda value: str(value),
)
def test_policy_sheds_low_priority_first(
    in_flight: int, lag: float, admitted: tuple[bool, bool, bool]
) -> None:
    decisions = tuple(
        POLICY.admits(priority, in_flight=in_flight, lag_seconds=lag)
        for priority in (LOW, NORMAL, HIGH)
    )
    assert decisions == admitted


def test_policy_from_settings() -> None:
    settings = AdmissionSettings(
        max_in_flight_low=2,
        max_in_flight_normal=5,
        max_in_flight_high=9,
        max_lag_low_ms=40,
        max_lag_normal_ms=500,
    )
    policy = SheddingPolicy.from_settings(settings)
    assert policy.max_in_flight == (2, 5, 9)
    assert policy.max_lag_seconds == (0.04, 0.5, None)


def test_one_slow_callback_does_not_shed_but_sustained_lag_does() -> None:
    monitor = LagMonitor(smoothing=0.3)
    assert monitor.record(expected=1.0, actual=1.3) == pytest.approx(0.09)
    assert monitor.lag_seconds < POLICY.max_lag_seconds[LOW]  # type: ignore[operator]
    for step in range(3):
        monitor.record(expected=2.0 + step, actual=2.3 + step)
    assert monitor.lag_seconds == pytest.approx(0.3 - 0.21 * 0.7**3)
    assert monitor.lag_seconds > 0.2
    # Back to on-time samples, it decays: 10 samples (0.5 s at 50 ms) bring it under 10 ms.
    for step in range(10):
        monitor.record(expected=10.0 + step, actual=10.0 + step)
    assert monitor.lag_seconds < 0.01
    # A sleep that woke early counts as no lag, never negative.
    monitor.record(expected=30.0, actual=29.0)
    assert monitor.lag_seconds >= 0.0


@pytest.mark.parametrize(
    "bad",
    [
        {"max_in_flight_low": 10, "max_in_flight_normal": 5},
        {"max_in_flight_normal": 300, "max_in_flight_high": 200},
        {"max_lag_low_ms": 600, "max_lag_normal_ms": 500},
        {"per_ip": "lots"},
        {"per_hot_resource": "10 per fortnight"},
    ],
    ids=["low-above-normal", "normal-above-hard-cap", "lag-order", "ip-notation", "hot-notation"],
)
def test_admission_settings_refuse_inconsistent_bounds(bad: dict[str, object]) -> None:
    with pytest.raises(SettingsError, match="IRONCART_ADMISSION"):
        load_settings(admission=bad)


def test_headers_show_the_tightest_limit() -> None:
    ip = Usage(limit=100, remaining=40, reset_seconds=30, allowed=True)
    user = Usage(limit=10, remaining=3, reset_seconds=50, allowed=True)
    sku = Usage(limit=5, remaining=3, reset_seconds=1, allowed=True)
    assert headers_for([ip, user, sku]) == [
        (b"ratelimit-limit", b"10"),
        (b"ratelimit-remaining", b"3"),
        (b"ratelimit-reset", b"50"),
    ]
    assert headers_for([]) == []


def test_a_refusal_waits_for_the_last_exceeded_limit_to_reset() -> None:
    usages = [
        Usage(limit=100, remaining=0, reset_seconds=40, allowed=False),
        Usage(limit=10, remaining=0, reset_seconds=7, allowed=False),
        Usage(limit=1000, remaining=900, reset_seconds=3000, allowed=True),
    ]
    error = refusal(usages)
    assert error.retry_after_seconds == 40
    assert error.code == "ironcart.rate_limited"


@pytest.mark.anyio
async def test_fixed_windows_are_aligned_to_the_clock() -> None:
    limiter = RateLimiter.in_process()
    limit = Limit("unit-window", "2/minute")
    key = uuid.uuid4().hex
    first = await limiter.consume(limit, key, now=120.0)  # the window [120, 180)
    second = await limiter.consume(limit, key, now=150.5)
    third = await limiter.consume(limit, key, now=179.9)
    next_window = await limiter.consume(limit, key, now=180.0)
    assert first == Usage(limit=2, remaining=1, reset_seconds=60, allowed=True)
    assert second == Usage(limit=2, remaining=0, reset_seconds=30, allowed=True)
    assert third == Usage(limit=2, remaining=0, reset_seconds=1, allowed=False)
    assert next_window == Usage(limit=2, remaining=1, reset_seconds=60, allowed=True)
