"""Operational endpoints: liveness, readiness, metrics and the circuit breakers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import orjson
import structlog
from fastapi import APIRouter, Request
from starlette.responses import Response

from ironcart.platform.http.problems import problem
from ironcart.platform.observability import render_metrics
from ironcart.platform.resilience import Policy, registered_policies

ReadinessCheck = Callable[[], Awaitable[None]]

_log = structlog.get_logger("ironcart.ops")
router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> Response:
    """The process is alive and its event loop answers."""
    return Response(b'{"status":"ok"}', media_type="application/json")


_abandoned: set[asyncio.Task[None]] = set()


def _forget(task: asyncio.Task[None]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a late failure of an abandoned probe is not an error


async def _run_check(
    name: str, check: ReadinessCheck, limit_seconds: float
) -> tuple[str, str | None]:
    # Not wait_for: cancelling a check stuck on a dead socket can itself hang (closing the
    # pooled connection); the probe answers on time and the cancelled task finishes later.
    task = asyncio.ensure_future(check())
    done, _pending = await asyncio.wait({task}, timeout=limit_seconds)
    if not done:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_forget)
        return name, "timed out"
    error = task.exception()
    if error is not None:
        _log.warning("readiness_check_failed", dependency=name, error=type(error).__name__)
        return name, type(error).__name__
    return name, None


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Every dependency answers within the timeout: 200, else 503 naming the failing ones."""
    checks: Mapping[str, ReadinessCheck] = request.app.state.readiness_checks
    timeout: float = request.app.state.readiness_timeout
    results = await asyncio.gather(*(_run_check(n, c, timeout) for n, c in checks.items()))
    failing = {name: reason for name, reason in results if reason is not None}
    if failing:
        return problem(
            503,
            "not_ready",
            title="Not ready",
            detail="Dependencies are unreachable: " + ", ".join(sorted(failing)) + ".",
            headers={"Retry-After": "5"},
            checks={n: (failing.get(n) or "ok") for n in checks},
        )
    body = {"status": "ok", "checks": dict.fromkeys(checks, "ok")}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/metrics")
async def metrics() -> Response:
    body, content_type = render_metrics()
    return Response(body, media_type=content_type)


@router.get("/ops/breakers")
async def breakers() -> Response:
    """Each outbound dependency's breaker and bulkhead as this process sees them."""
    body = {name: _describe(policy) for name, policy in registered_policies().items()}
    return Response(orjson.dumps({"dependencies": body}), media_type="application/json")


def _describe(policy: Policy) -> dict[str, object]:
    snapshot = policy.breaker.snapshot()
    until = snapshot.seconds_until_half_open
    return {
        "state": snapshot.state.name.lower(),
        "calls": snapshot.calls,
        "failures": snapshot.failures,
        "slow": snapshot.slow,
        "seconds_until_half_open": None if until is None else round(until, 3),
        "window_seconds": policy.config.breaker.window_seconds,
        "attempts_made": policy.attempts_made,
        "in_flight": policy.bulkhead.in_flight,
        "waiting": policy.bulkhead.waiting,
        "max_concurrent": policy.bulkhead.max_concurrent,
    }
