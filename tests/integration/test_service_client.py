"""The HTTP ports against the real app served over real HTTP (uvicorn on a free port) on
PostgreSQL: errors come back as the very errors the in-process port raises (TCC fence
refusals included), internal routes refuse callers without a token (401) or without the
scope (403), and the client-credentials token is fetched once, refreshed near its expiry
and once after a 401."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ironcart.app import create_app
from ironcart.inventory.client import HttpInventoryClient, InProcessInventoryClient
from ironcart.inventory.domain import InsufficientStock
from ironcart.platform.http.service import (
    ClientCredentialsTokens,
    ServiceCallFailed,
    ServiceClient,
    TokenFetcher,
    http_client,
    token_endpoint,
)
from ironcart.platform.resilience import Policy, PolicyConfig
from ironcart.platform.settings import ServiceEndpoint
from ironcart.platform.txn.fence import FenceConflict, Suspended
from tests.support.app import settings_for
from tests.support.services import serving

pytestmark = pytest.mark.anyio


@dataclass
class Stage:
    app: FastAPI
    url: str
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def client_credentials(self, *scopes: str) -> tuple[str, str]:
        identity = self.app.state.container.identity
        created: tuple[str, str] = await identity.create_client(
            name=f"test-{uuid.uuid4().hex[:8]}", scopes=frozenset(scopes)
        )
        return created

    async def fetcher(self, *scopes: str) -> TokenFetcher:
        client_id, secret = await self.client_credentials(*scopes)
        http = http_client(ServiceEndpoint(url=self.url))
        self.closers.append(http.aclose)
        return token_endpoint(http, _policy("identity"), client_id=client_id, client_secret=secret)

    async def stocked(self, units: int) -> str:
        inventory = self.app.state.container.inventory
        sku = f"SVC-{uuid.uuid4().hex[:10]}"
        code = f"wh-{uuid.uuid4().hex[:8]}"
        await inventory.create_warehouse(code=code, name="Main", priority=1)
        await inventory.receive(sku=sku, warehouse=code, quantity=units)
        return sku


@pytest.fixture
async def stage(postgres_url: str) -> AsyncIterator[Stage]:
    app = create_app(settings_for(postgres_url))
    async with app.router.lifespan_context(app), serving(app) as url:
        stage = Stage(app, url)
        try:
            yield stage
        finally:
            for close in stage.closers:
                await close()


def _policy(name: str) -> Policy:
    return Policy(f"test-{name}-{uuid.uuid4().hex[:6]}", PolicyConfig(max_attempts=3))


def _counting(fetch: TokenFetcher, calls: list[str]) -> TokenFetcher:
    async def counted() -> tuple[str, int]:
        token = await fetch()
        calls.append(token[0])
        return token

    return counted


async def _inventory_over_http(stage: Stage, tokens: ClientCredentialsTokens) -> ServiceClient:
    endpoint = ServiceEndpoint(url=stage.url)
    client = ServiceClient("inventory", endpoint, tokens=tokens, policy=_policy("inventory"))
    stage.closers.append(client.aclose)
    return client


async def _raised(call: Callable[[], Awaitable[Any]]) -> BaseException:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the type is the assertion
        await call()
    return caught.value


async def test_inventory_errors_cross_http_as_the_same_errors(stage: Stage) -> None:
    tokens = ClientCredentialsTokens(await stage.fetcher("service:inventory"))
    service = await _inventory_over_http(stage, tokens)
    remote = HttpInventoryClient(service)
    local = InProcessInventoryClient(stage.app.state.container.inventory)
    sku = await stage.stocked(3)

    held = await remote.reserve(sku=sku, quantity=2, owner="cart-1", ttl_seconds=600)
    over_http = await _raised(lambda: remote.check_available(lines=[(sku, 5)]))
    in_process = await _raised(lambda: local.check_available(lines=[(sku, 5)]))

    assert (held.sku, held.quantity, held.owner) == (sku, 2, "cart-1")
    assert held.expires_at.tzinfo is not None
    assert await remote.availability([sku]) == {sku: 1}
    assert type(over_http) is type(in_process) is InsufficientStock
    assert isinstance(over_http, InsufficientStock)
    assert isinstance(in_process, InsufficientStock)
    assert (over_http.detail, over_http.extra) == (in_process.detail, in_process.extra)
    assert over_http.sku == sku


async def test_tcc_fence_refusals_cross_http_with_their_type(stage: Stage) -> None:
    tokens = ClientCredentialsTokens(await stage.fetcher("service:inventory"))
    service = await _inventory_over_http(stage, tokens)
    remote = HttpInventoryClient(service)
    sku = await stage.stocked(4)
    xid = uuid.uuid4().hex

    await remote.cancel_reservations(xid=xid)  # the cancel overtook its try: empty rollback
    late_try = await _raised(lambda: remote.try_reserve(xid=xid, lines=[(sku, 1)], ttl_seconds=60))
    confirm = await _raised(lambda: remote.confirm_reservations(xid=xid))

    assert type(late_try) is Suspended
    assert type(confirm) is FenceConflict
    assert await remote.availability([sku]) == {sku: 4}  # the late try held nothing


@pytest.mark.parametrize(
    ("scopes", "status"),
    [pytest.param(None, 401, id="no-token"), pytest.param(("service:catalog",), 403, id="scope")],
)
async def test_internal_routes_need_the_service_scope(
    stage: Stage, scopes: tuple[str, ...] | None, status: int
) -> None:
    headers = {}
    if scopes is not None:
        token, _ = await (await stage.fetcher(*scopes))()
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(base_url=stage.url) as client:
        refused = await client.post(
            "/internal/v1/inventory/availability", json={"skus": ["A"]}, headers=headers
        )
        allowed_elsewhere = await client.post(
            "/internal/v1/catalog/variants/lookup", json={"skus": ["A"]}, headers=headers
        )

    assert refused.status_code == status
    assert refused.headers["content-type"] == "application/problem+json"
    assert allowed_elsewhere.status_code == (200 if scopes else 401)


async def test_a_port_without_the_scope_fails_as_a_deployment_fault(stage: Stage) -> None:
    tokens = ClientCredentialsTokens(await stage.fetcher("service:catalog"))
    service = await _inventory_over_http(stage, tokens)

    refused = await _raised(lambda: HttpInventoryClient(service).availability(["A"]))

    assert type(refused) is ServiceCallFailed  # a 503 of ours, never the caller's own 403


async def test_the_token_is_fetched_once_and_again_near_expiry(stage: Stage) -> None:
    fetched: list[str] = []
    now = [1000.0]
    ttl = stage.app.state.container.settings.identity.access_token_ttl_seconds
    fetch = _counting(await stage.fetcher("service:inventory"), fetched)
    tokens = ClientCredentialsTokens(fetch, refresh_margin_seconds=30, clock=lambda: now[0])
    remote = HttpInventoryClient(await _inventory_over_http(stage, tokens))

    await asyncio.gather(*(remote.availability(["A"]) for _ in range(8)))
    now[0] += ttl - 31
    await remote.availability(["A"])
    fetched_before_margin = len(fetched)
    now[0] += 2  # 29 s before expiry: inside the margin
    await remote.availability(["A"])

    assert fetched_before_margin == 1
    assert len(fetched) == 2


async def test_a_refused_token_is_replaced_once_and_the_call_made_again(stage: Stage) -> None:
    real = await stage.fetcher("service:inventory")
    fetched: list[str] = []

    async def first_a_forged_token() -> tuple[str, int]:
        return ("forged.token.value", 900) if not fetched else await real()

    tokens = ClientCredentialsTokens(_counting(first_a_forged_token, fetched))
    remote = HttpInventoryClient(await _inventory_over_http(stage, tokens))

    assert await remote.availability(["A"]) == {"A": 0}
    assert fetched[0] == "forged.token.value"
    assert len(fetched) == 2
