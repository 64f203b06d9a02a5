"""Payments frozen: it accepts connections and never answers, while 50 clients shop.

Two stages, each behind a TCP proxy (tests/support/tcp_proxy.py) that the test stalls:
`psp`, a real `ironcart serve` on PostgreSQL whose payments context calls the real sandbox
PSP through the proxy; and `payments-service`, the payments context as a service of its own
(`ironcart serve --service payments`, calling the PSP directly), which the shop (`serve`,
every other context) calls through the proxy with client-credentials tokens. 40 clients
browse (a product page, the listing) and 10 also check out, first for a few seconds with
payments healthy (the reference), then while the proxy stalls for FREEZE seconds (8 under
`make test`, 30 under `make chaos`). Then, for the shop's breaker of what is frozen (`psp`
or `payments`):

- browsing keeps answering, as fast as with the PSP healthy: p99 < 100 ms asserted with
  IRONCART_CHAOS_STRICT=1 (`make chaos`, a quiet machine); otherwise (`make test`: three
  workers share two cores) < max(1 s, twice the healthy p99), and the numbers are printed;
- every checkout answers with a 503 application/problem+json and Retry-After, within 2 s
  (strict); otherwise within the PSP's worst case before its breaker opens (the authorize
  call's 1.5 s deadline + a 1 s attempt of the cancel's read) + 1.5 x the slowest healthy
  checkout under the same load (the database work, slow on shared cores);
- the breaker opens, and while it is open no call passes (GET /ops/breakers:
  `attempts_made` does not move); after `restore()` it closes by itself within one window
  and a checkout succeeds again;
- nothing is lost or half-made: the requests the proxy held are delivered late (a real
  partition does that too: the orphan authorizations are voided on their webhooks), and
  once recovery has run every order is paid with one capture, or cancelled with nothing
  captured and every authorization voided; no stock stays reserved; no global transaction
  is left open; no call to what was frozen is in flight or waiting for a slot.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import text

from ironcart.platform.database import create_engine
from ironcart.platform.settings import PaymentsSettings
from tests.support.psp import PspProcess, running_psp
from tests.support.server import (
    ServerProcess,
    free_port,
    migrate_and_seed,
    output_of,
    run_cli,
    running_server,
    server_environment,
)
from tests.support.tcp_proxy import TcpProxy

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.e2e,
    pytest.mark.chaos,
    pytest.mark.usefixtures("quiet_httpx"),
]

FREEZE_SECONDS = float(os.environ.get("IRONCART_CHAOS_FREEZE_SECONDS", "8"))
HEALTHY_SECONDS = 4.0  # the same load before the freeze: the reference
STRICT = os.environ.get("IRONCART_CHAOS_STRICT") == "1"
BROWSE_P99_SECONDS = 0.1 if STRICT else 1.0
CHECKOUT_SECONDS = 2.0
# The most a checkout can wait on the frozen PSP before its breaker has seen enough failures:
# the authorize call's deadline, then one attempt of the cancel's read.
PSP_WORST_SECONDS = (
    PaymentsSettings().call_deadline_seconds + PaymentsSettings().request_timeout_seconds
)
BROWSERS, BUYERS = 40, 10
CHECKOUT_EVERY_SECONDS = 3.0  # per buyer: ~3 checkouts a second in all
THINK_SECONDS = 0.5  # between two pages: ~150 pages a second in all
CUSTOMER = "customer@ironcart.example"
STAFF = "staff@ironcart.example"
DEMO_PASSWORD = "ironcart-demo-password"
ADDRESS = {
    "name": "Alan Turing",
    "line1": "Bletchley Park",
    "city": "Milton Keynes",
    "postal_code": "MK3 6EB",
    "country": "GB",
}
# The shop's policy for calls to the payments service: a call carries the service's own PSP
# call (at most the PSP's 1.5 s deadline), and a checkout must fail within 2 s when the
# service is frozen: one attempt, no time for a second.
PAYMENTS_SERVICE_POLICY = {
    "IRONCART_RESILIENCE__DEPENDENCIES__PAYMENTS__ATTEMPT_TIMEOUT_SECONDS": "1.6",
    "IRONCART_RESILIENCE__DEPENDENCIES__PAYMENTS__DEADLINE_SECONDS": "1.7",
}
SETTINGS = {
    # In doubt after 2 s, recovery every 0.5 s: the test need not wait a minute.
    "IRONCART_ORDERING__TXN_IN_DOUBT_SECONDS": "2",
    "IRONCART_ORDERING__RECOVERY_INTERVAL_SECONDS": "0.5",
    "IRONCART_PAYMENTS__RECONCILE_AFTER_SECONDS": "5",
    # Every client comes from 127.0.0.1: a per-IP limit would measure the test, not the shop.
    "IRONCART_ADMISSION__RATE_LIMITS_ENABLED": "false",
}


@dataclass
class Stage:
    server: ServerProcess
    psp: PspProcess
    proxy: TcpProxy
    database_url: str
    frozen: str  # the dependency behind the proxy, as the shop's breakers name it


@dataclass
class Shop:
    customer: dict[str, str]
    product_id: str
    sku: str


@dataclass
class Record:
    browse: list[float] = field(default_factory=list)
    browse_by_page: dict[str, list[float]] = field(default_factory=dict)
    browse_failures: list[str] = field(default_factory=list)
    checkouts: list[tuple[httpx.Response, float]] = field(default_factory=list)
    breakers: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def quiet_httpx() -> Iterator[None]:
    """No log record per request of the 50 clients: formatting them costs the CPU we measure."""
    logger = logging.getLogger("httpx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture(params=["psp", "payments-service"])
async def stage(
    request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path
) -> AsyncIterator[Stage]:
    """The shop and the sandbox PSP, with the proxy in front of what the test freezes: the
    PSP itself (`psp`: the shop's payments context calls it through the proxy), or the
    payments context run as a service of its own (`payments-service`: the shop, every other
    context, calls it through the proxy; it calls the PSP directly)."""
    port = free_port()
    webhook = f"http://127.0.0.1:{port}/api/v1/payments/webhooks/sandbox"
    async with running_psp(tmp_path, webhook_url=webhook) as psp:
        env = server_environment(
            postgres_url,
            {
                **SETTINGS,
                **psp.shop_env(),
            },
        )
        await migrate_and_seed(env)
        if request.param == "psp":
            async with TcpProxy("127.0.0.1", psp.server.port) as proxy:
                env["IRONCART_PAYMENTS__PSP_URL"] = f"http://127.0.0.1:{proxy.port}"
                async with running_server(postgres_url, tmp_path, env=env, port=port) as server:
                    yield Stage(server, psp, proxy, postgres_url, "psp")
            return
        env.update(await _service_client(env))
        async with (
            running_server(
                postgres_url, tmp_path, env=env, serve_args=("--service", "payments"), migrate=False
            ) as payments,
            TcpProxy("127.0.0.1", payments.port) as proxy,
        ):
            env.update(PAYMENTS_SERVICE_POLICY)
            env["IRONCART_SERVICES__PAYMENTS__URL"] = f"http://127.0.0.1:{proxy.port}"
            async with running_server(
                postgres_url, tmp_path, env=env, port=port, migrate=False
            ) as server:
                yield Stage(server, psp, proxy, postgres_url, "payments")


async def _service_client(env: dict[str, str]) -> dict[str, str]:
    """A client-credentials client allowed the payments service's internal API."""
    result = await run_cli(
        "client", "create", "--name", "shop", "--scope", "service:payments", env=env
    )
    assert result.returncode == 0, output_of(result)
    values = dict(line.split("=", 1) for line in result.stdout.decode().splitlines() if "=" in line)
    return {
        "IRONCART_SERVICE_CLIENT_ID": values["client_id"],
        "IRONCART_SERVICE_CLIENT_SECRET": values["client_secret"],
    }


async def _token(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    response = await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": DEMO_PASSWORD},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def _shop(client: httpx.AsyncClient) -> Shop:
    """The demo customer, and a product with stock enough for every checkout of the test."""
    page = await client.get("/api/v1/products", params={"limit": 1, "in_stock": "true"})
    assert page.status_code == 200, page.text
    product_id = page.json()["items"][0]["id"]
    sku = (await client.get(f"/api/v1/products/{product_id}")).json()["variants"][0]["sku"]
    staff = await _token(client, STAFF)
    stock = await client.get(f"/api/v1/inventory/{sku}", headers=staff)
    warehouse = stock.json()["levels"][0]["warehouse"]
    body = {"warehouse": warehouse, "delta": 100_000, "reason": "payments-frozen chaos test"}
    added = await client.post(f"/api/v1/inventory/{sku}/adjustments", json=body, headers=staff)
    assert added.status_code == 200, added.text
    return Shop(await _token(client, CUSTOMER), product_id, sku)


async def _checkout(client: httpx.AsyncClient, shop: Shop) -> tuple[httpx.Response, float]:
    body = {
        "lines": [{"sku": shop.sku, "quantity": 1}],
        "shipping_address": ADDRESS,
        "shipping_method": "standard",
        "payment": {"card_token": "tok_visa"},
    }
    headers = {**shop.customer, "Idempotency-Key": str(uuid.uuid4())}
    started = time.monotonic()
    response = await client.post("/api/v1/orders", json=body, headers=headers)
    return response, time.monotonic() - started


async def _breaker(client: httpx.AsyncClient, dependency: str) -> dict[str, Any]:
    """The shop's breaker of `dependency` (`psp`, or `payments`: the service), from /ops."""
    response = await client.get("/ops/breakers")
    assert response.status_code == 200, response.text
    breaker: dict[str, Any] = response.json()["dependencies"][dependency]
    return breaker


async def _browse(client: httpx.AsyncClient, shop: Shop, record: Record) -> None:
    for path, params in (
        (f"/api/v1/products/{shop.product_id}", None),
        ("/api/v1/products", {"limit": 20}),
    ):
        started = time.monotonic()
        try:
            response = await client.get(path, params=params)
        except httpx.HTTPError as error:
            record.browse_failures.append(f"{path}: {error!r}")
            continue
        elapsed = time.monotonic() - started
        record.browse.append(elapsed)
        record.browse_by_page.setdefault("listing" if params else "product", []).append(elapsed)
        if response.status_code != 200:
            record.browse_failures.append(f"{path}: {response.status_code} {response.text}")


async def _shopper(
    client: httpx.AsyncClient, shop: Shop, record: Record, until: float, *, buys: bool
) -> None:
    # Shoppers arrive and buyers start at random moments, as customers do: 50 first pages in
    # the same millisecond would measure a queue the test made, not the shop.
    next_checkout = time.monotonic() + random.uniform(0, CHECKOUT_EVERY_SECONDS)
    await anyio.sleep(random.uniform(0, THINK_SECONDS))
    while time.monotonic() < until:
        await _browse(client, shop, record)
        if buys and time.monotonic() >= next_checkout:
            record.checkouts.append(await _checkout(client, shop))
            next_checkout = time.monotonic() + CHECKOUT_EVERY_SECONDS
        await anyio.sleep(THINK_SECONDS)  # a shopper reads the page


async def _watch(client: httpx.AsyncClient, record: Record, until: float, dependency: str) -> None:
    while time.monotonic() < until:
        record.breakers.append(await _breaker(client, dependency))
        await anyio.sleep(0.1)


async def _shopping(
    client: httpx.AsyncClient, shop: Shop, seconds: float, dependency: str
) -> Record:
    """50 clients (BUYERS of them also checking out) and a breaker watcher, for `seconds`."""
    record = Record()
    until = time.monotonic() + seconds
    async with anyio.create_task_group() as group:
        for number in range(BROWSERS + BUYERS):
            group.start_soon(partial(_shopper, client, shop, record, until, buys=number < BUYERS))
        group.start_soon(_watch, client, record, until, dependency)
    return record


def _p50(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2]


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _assert_nothing_passed_while_open(samples: list[dict[str, Any]]) -> None:
    """Two samples in the same open period (the wait shrinking): no attempt made between."""
    assert any(s["state"] == "open" for s in samples), samples[-5:]
    pairs = [
        (a, b)
        for a, b in itertools.pairwise(samples)
        if a["state"] == b["state"] == "open"
        and b["seconds_until_half_open"] < a["seconds_until_half_open"]
    ]
    assert pairs, "the breaker was never seen open twice in a row"
    for before, after in pairs:
        assert after["attempts_made"] == before["attempts_made"], (before, after)


async def _until(
    check: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.5
) -> float:
    """Seconds until `check()` held; fails the test after `timeout`."""
    started = time.monotonic()
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(interval)
    return time.monotonic() - started


_BOOKS = text(
    "SELECT (SELECT COALESCE(SUM(on_hand), 0) FROM inventory_stock_levels WHERE sku = :sku),"
    " (SELECT COALESCE(SUM(reserved), 0) FROM inventory_stock_levels WHERE sku = :sku),"
    " (SELECT COUNT(*) FROM inventory_reservations WHERE sku = :sku AND status = 'active'),"
    " (SELECT COUNT(*) FROM txn_transactions WHERE state NOT IN ('confirmed', 'cancelled'))"
)


async def _stock(database_url: str, sku: str) -> tuple[int, int, int, int]:
    """(on_hand, reserved, active reservations, open global transactions)."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            row = (await connection.execute(_BOOKS, {"sku": sku})).one()
    finally:
        await engine.dispose()
    on_hand, reserved, active, open_txns = (int(value) for value in row)
    return on_hand, reserved, active, open_txns


async def _orders(client: httpx.AsyncClient, shop: Shop) -> list[dict[str, Any]]:
    orders: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/orders", params=params, headers=shop.customer)).json()
        orders += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return orders


async def _psp_books(psp: PspProcess) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The PSP's ledger entries and its payments by id (asked directly, not via the proxy)."""
    async with httpx.AsyncClient(base_url=psp.url, timeout=10) as client:
        headers = {"Authorization": f"Bearer {psp.api_key}"}
        ledger = (await client.get("/_sandbox/ledger", headers=headers)).json()["data"]
        payments = (await client.get("/_sandbox/payments", headers=headers)).json()["data"]
    return ledger, {payment["id"]: payment for payment in payments}


def _unsettled(
    orders: list[dict[str, Any]], ledger: list[dict[str, Any]], payments: dict[str, Any]
) -> list[str]:
    """What is still wrong in the books: the empty list once everything is settled."""
    problems: list[str] = []
    for order in orders:
        mine = [e for e in ledger if e["idempotency_key"].startswith(order["id"])]
        captures = [e for e in mine if e["operation"] == "capture"]
        held = {e["payment_id"] for e in mine if e["operation"] == "authorize"}
        if order["status"] == "paid" and len(captures) != 1:
            problems.append(f"paid order {order['id']} has {len(captures)} captures")
        elif order["status"] != "paid" and order["status"] != "cancelled":
            problems.append(f"order {order['id']} is still {order['status']}")
        elif order["status"] == "cancelled" and (
            captures or any(payments[p]["status"] != "voided" for p in held)
        ):
            problems.append(f"cancelled order {order['id']} holds money: {mine}")
    return problems


def _slowest(record: Record) -> float:
    return max((elapsed for _, elapsed in record.checkouts), default=0.0)


def _report(healthy: Record, frozen: Record) -> None:
    for name, record in (("healthy", healthy), ("frozen", frozen)):
        slowest = _slowest(record)
        print(  # noqa: T201 - the numbers the acceptance asks for, in the test output
            f"\n{name}: {len(record.browse)} browse requests, p99"
            f" {_p99(record.browse) * 1000:.0f} ms; {len(record.checkouts)} checkouts,"
            f" slowest {slowest * 1000:.0f} ms; p50/p99 by page: "
            + ", ".join(
                f"{page} {_p50(times) * 1000:.0f}/{_p99(times) * 1000:.0f} ms"
                for page, times in sorted(record.browse_by_page.items())
            )
        )


def _check_frozen(frozen: Record, healthy: Record) -> None:
    """Browsing as fast as before the freeze; every checkout a quick, clean 503."""
    browse_bound, checkout_bound = BROWSE_P99_SECONDS, CHECKOUT_SECONDS
    if not STRICT:  # shared cores: the same load without a freeze sets the scale too
        browse_bound = max(browse_bound, 2 * _p99(healthy.browse))
        checkout_bound = max(checkout_bound, PSP_WORST_SECONDS + 1.5 * _slowest(healthy))
    assert frozen.browse_failures == []
    assert _p99(frozen.browse) < browse_bound
    assert len(frozen.checkouts) >= BUYERS
    for response, elapsed in frozen.checkouts:
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "retry-after" in response.headers, response.text
        assert elapsed < checkout_bound, f"a checkout took {elapsed:.2f} s"
    _assert_nothing_passed_while_open(frozen.breakers)


async def test_a_frozen_payments_dependency_costs_browsing_nothing_and_loses_no_order(
    stage: Stage,
) -> None:
    # One keep-alive connection per client, as 50 separate shoppers would have.
    limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
    async with httpx.AsyncClient(
        base_url=stage.server.base_url, timeout=30, limits=limits
    ) as client:
        shop = await _shop(client)
        on_hand_before, _, _, _ = await _stock(stage.database_url, shop.sku)
        healthy = await _shopping(client, shop, HEALTHY_SECONDS, stage.frozen)
        assert healthy.browse_failures == []
        assert {response.status_code for response, _ in healthy.checkouts} == {201}

        stage.proxy.stall()
        frozen = await _shopping(client, shop, FREEZE_SECONDS, stage.frozen)
        _report(healthy, frozen)
        _check_frozen(frozen, healthy)

        # The PSP comes back (and gets the requests the proxy held): the breaker closes by
        # itself within a window, and checkout works again.
        await stage.proxy.restore()

        async def closed() -> bool:
            await _checkout(client, shop)  # customers keep coming: some are the probes
            state: str = (await _breaker(client, stage.frozen))["state"]
            return state == "closed"

        window = (await _breaker(client, stage.frozen))["window_seconds"]
        took = await _until(closed, timeout=window)
        print(f"closed {took:.1f} s after {stage.frozen} came back")  # noqa: T201
        again, _ = await _checkout(client, shop)
        assert again.status_code == 201, again.text

        async def settled() -> bool:
            *_, open_txns = await _stock(stage.database_url, shop.sku)
            ledger, payments = await _psp_books(stage.psp)
            return open_txns == 0 and not _unsettled(await _orders(client, shop), ledger, payments)

        await _until(settled, timeout=60 + FREEZE_SECONDS * 2)
        orders = await _orders(client, shop)
        breaker = await _breaker(client, stage.frozen)

    # Nothing lost or half-made: the paid orders took their stock, the others none.
    paid = {order["id"] for order in orders if order["status"] == "paid"}
    on_hand, reserved, active, open_txns = await _stock(stage.database_url, shop.sku)
    assert {response.json()["id"] for response, _ in healthy.checkouts} <= paid
    assert again.json()["id"] in paid
    assert (reserved, active, open_txns) == (0, 0, 0)
    assert on_hand == on_hand_before - len(paid)
    assert (breaker["in_flight"], breaker["waiting"]) == (0, 0)  # no worker left blocked
