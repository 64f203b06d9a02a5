"""The provider client (PSP, carrier) under a policy, through a scripted transport (STYLE §14):
what is retried, what the breaker stops, and what callers get when no answer came."""

from __future__ import annotations

import httpx
import pytest

from ironcart.platform.http.provider import ProviderCallFailed, ProviderClient
from ironcart.platform.resilience import (
    BreakerConfig,
    BreakerState,
    CircuitOpen,
    DeadlineExceeded,
    Policy,
    PolicyConfig,
    deadline_scope,
)

pytestmark = pytest.mark.anyio

CONFIG = PolicyConfig(
    attempt_timeout_seconds=1.0,
    deadline_seconds=5.0,
    max_attempts=3,
    backoff_initial_seconds=0.001,
    backoff_max_seconds=0.002,
    retry_budget_floor_per_second=100.0,
    breaker=BreakerConfig(minimum_calls=100, consecutive_failures=3),
)


class Provider:
    """Answers every request with `status`; counts what reached it."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        return httpx.Response(self.status, json={"error": {"code": "boom", "message": "boom"}})


def _client(provider: Provider, policy: Policy | None = None) -> ProviderClient:
    return ProviderClient(
        base_url="http://psp.test",
        api_key="sk_test",
        dependency="psp",
        max_attempts=3,
        backoff_initial_seconds=0.001,
        backoff_max_seconds=0.002,
        transport=httpx.MockTransport(provider),
        policy=policy,
    )


async def test_a_keyed_call_is_retried_then_fails_chained_from_the_policy_error() -> None:
    provider = Provider(503)
    client = _client(provider, Policy("psp", CONFIG))
    with pytest.raises(ProviderCallFailed) as failed:
        await client.call("POST", "/v1/payments", {"amount": 1}, idempotency_key="k1")

    assert provider.requests == ["POST /v1/payments"] * 3
    assert failed.value.__cause__ is not None
    assert "resilience" in type(failed.value.__cause__).__module__


async def test_a_post_without_a_key_is_never_retried() -> None:
    provider = Provider(503)
    with pytest.raises(ProviderCallFailed):
        await _client(provider, Policy("psp", CONFIG)).call("POST", "/v1/payments", {})

    assert provider.requests == ["POST /v1/payments"]


async def test_an_open_breaker_makes_no_request_and_callers_see_no_answer() -> None:
    provider = Provider(503)
    client = _client(provider, Policy("psp", CONFIG))
    with pytest.raises(ProviderCallFailed):
        await client.call("GET", "/v1/payments/p1")  # three failures in a row: open
    assert client.policy.breaker.state is BreakerState.OPEN
    with pytest.raises(ProviderCallFailed) as refused:
        await client.call("GET", "/v1/payments/p1")

    assert len(provider.requests) == 3
    assert isinstance(refused.value.__cause__, CircuitOpen)


async def test_a_business_answer_is_returned_and_keeps_the_breaker_closed() -> None:
    provider = Provider(404)
    client = _client(provider, Policy("psp", CONFIG))
    answers = [(await client.call("GET", "/v1/payments/nope")).status_code for _ in range(5)]

    assert answers == [404] * 5
    assert client.policy.breaker.state is BreakerState.CLOSED


async def test_without_a_policy_it_retries_but_never_opens_a_breaker() -> None:
    provider = Provider(500)
    client = _client(provider)
    for _ in range(10):
        with pytest.raises(ProviderCallFailed):
            await client.call("POST", "/v1/payments", {}, idempotency_key="k")

    assert len(provider.requests) == 30
    assert client.policy.breaker.state is BreakerState.CLOSED


async def test_no_request_leaves_when_the_deadline_is_spent() -> None:
    provider = Provider(200)
    client = _client(provider, Policy("psp", CONFIG))
    with deadline_scope(0.0), pytest.raises(ProviderCallFailed) as refused:
        await client.call("GET", "/v1/payments/p1")

    assert provider.requests == []
    assert isinstance(refused.value.__cause__, DeadlineExceeded)
