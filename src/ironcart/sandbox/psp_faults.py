"""Fault injection: what `PUT /_sandbox/faults` sets, and the dice rolled per call and per webhook.

Faults live in memory (a restart clears them). A `seed` makes the rolls repeatable.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from typing import Any

from ironcart.sandbox.psp_domain import InvalidRequest

_RATES = (
    "error_rate",
    "latency_rate",
    "timeout_rate",
    "webhook_drop_rate",
    "webhook_duplicate_rate",
)
_MS = ("latency_ms", "timeout_ms", "webhook_delay_ms")
_MAX_MS = 600_000
DEFAULT_TIMEOUT_MS = 30_000


@dataclass(frozen=True, slots=True)
class Faults:
    error_rate: float = 0.0
    latency_ms: int = 0
    latency_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    webhook_drop_rate: float = 0.0
    webhook_duplicate_rate: float = 0.0
    webhook_reorder: bool = False
    webhook_delay_ms: int = 0
    seed: int | None = None

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> Faults:
        """Every field optional; `latency_ms` without `latency_rate` slows every call."""
        unknown = set(payload) - {field.name for field in fields(cls)}
        if unknown:
            raise InvalidRequest("invalid_request", f"unknown fault(s): {sorted(unknown)}")
        rate = {name: _number(name, payload.get(name, 0.0), float, 1.0) for name in _RATES}
        ms = {
            name: int(_number(name, payload[name], int, _MAX_MS)) for name in _MS if name in payload
        }
        reorder = payload.get("webhook_reorder", False)
        if not isinstance(reorder, bool):
            raise InvalidRequest("invalid_request", "webhook_reorder must be a boolean")
        seed = payload.get("seed")
        if seed is not None and type(seed) is not int:
            raise InvalidRequest("invalid_request", "seed must be an integer or null")
        latency_ms = ms.get("latency_ms", 0)
        latency_rate = rate["latency_rate"] if "latency_rate" in payload else float(latency_ms > 0)
        return cls(
            error_rate=rate["error_rate"],
            latency_ms=latency_ms,
            latency_rate=latency_rate,
            timeout_rate=rate["timeout_rate"],
            timeout_ms=ms.get("timeout_ms", DEFAULT_TIMEOUT_MS),
            webhook_drop_rate=rate["webhook_drop_rate"],
            webhook_duplicate_rate=rate["webhook_duplicate_rate"],
            webhook_reorder=reorder,
            webhook_delay_ms=ms.get("webhook_delay_ms", 0),
            seed=seed,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _number(name: str, value: Any, kind: type, high: float) -> float:
    numeric = type(value) is int or (kind is float and type(value) is float)
    if not numeric or not 0 <= value <= high:
        raise InvalidRequest("invalid_request", f"{name} must be a number in [0, {high}]")
    return float(value)


@dataclass(frozen=True, slots=True)
class CallFaults:
    error: bool = False
    latency_seconds: float = 0.0
    timeout_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class WebhookFaults:
    drop: bool = False
    duplicate: bool = False
    hold: bool = False
    delay_seconds: float = 0.0


NO_CALL_FAULTS = CallFaults()
NO_WEBHOOK_FAULTS = WebhookFaults()


class FaultInjector:
    def __init__(self) -> None:
        self.faults = Faults()
        self._random = random.Random()  # noqa: S311 - a simulation, not cryptography

    def set(self, faults: Faults) -> None:
        self.faults = faults
        self._random = random.Random(faults.seed)  # noqa: S311 - a simulation

    def roll_call(self) -> CallFaults:
        """For one `/v1` call: a 500 first, else a sleep before and/or after processing."""
        faults = self.faults
        if not (faults.error_rate or faults.latency_rate or faults.timeout_rate):
            return NO_CALL_FAULTS
        if self._chance(faults.error_rate):
            return CallFaults(error=True)
        latency = faults.latency_ms / 1000 if self._chance(faults.latency_rate) else 0.0
        timeout = faults.timeout_ms / 1000 if self._chance(faults.timeout_rate) else 0.0
        return CallFaults(latency_seconds=latency, timeout_seconds=timeout)

    def roll_webhook(self) -> WebhookFaults:
        faults = self.faults
        if self._chance(faults.webhook_drop_rate):
            return WebhookFaults(drop=True)
        duplicate = self._chance(faults.webhook_duplicate_rate)
        if not (duplicate or faults.webhook_reorder or faults.webhook_delay_ms):
            return NO_WEBHOOK_FAULTS
        return WebhookFaults(
            duplicate=duplicate,
            hold=faults.webhook_reorder,
            delay_seconds=faults.webhook_delay_ms / 1000,
        )

    def _chance(self, rate: float) -> bool:
        return rate > 0 and (rate >= 1 or self._random.random() < rate)
