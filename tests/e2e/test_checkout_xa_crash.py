"""Kill -9 between the phases of an XA checkout, restart, and prove each order all-or-nothing.

A real `ironcart serve` in XA mode (`IRONCART_CHECKOUT_TXN=xa`) with orders in one
database and inventory in another — two databases on the session's PostgreSQL test
instance, or two on MariaDB — and a real sandbox PSP process. The server SIGKILLs itself
(`IRONCART_XA__CRASH_POINTS`, refused in production) in one checkout at each point:

- after_prepare: both branches prepared, no decision -> rolled back: no order, no sale,
  the authorization voided, the replay answers 409 `checkout_aborted`;
- after_decision: decided, nothing committed -> committed: order and sale, captured, paid;
- after_first_commit: the orders branch committed, inventory's still prepared -> same.

Then one server without crash points: within 60 s no prepared transaction of the test's
gid prefix is left (`pg_prepared_xacts` / `XA RECOVER`), and for each checkout the order
exists iff its stock was sold, and it is paid iff its payment was captured (else voided).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.support.databases import ServerUnavailable
from tests.support.pg_instance import PgInstance
from tests.support.psp import running_psp
from tests.support.server import free_port, output_of, run_cli, running_server, server_environment
from tests.support.xa_shop import (
    BACKENDS,
    database_pair,
    on_hand,
    prepared,
    psp_view,
    rows,
    sold_units,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CUSTOMER = "customer@ironcart.example"
DEMO_PASSWORD = "ironcart-demo-password"
CRASHES = {"after_prepare": "aborted", "after_decision": "paid", "after_first_commit": "paid"}
ORDER_BODY: dict[str, Any] = {
    "shipping_address": {
        "name": "Grace Hopper",
        "line1": "1 Navy Way",
        "city": "London",
        "postal_code": "SW1A 1AA",
        "country": "GB",
    },
    "shipping_method": "standard",
    "payment": {"card_token": "tok_visa"},
}


async def _payments_followed_up(psp: Any, timeout: float = 30.0) -> dict[str, str]:
    """Each payment's status by order id, once no authorization is left undecided."""
    deadline = time.monotonic() + timeout
    while True:
        _, payments = await psp_view(psp)
        if "authorized" not in payments.values() or time.monotonic() > deadline:
            return payments
        await anyio.sleep(0.2)


@dataclass
class Crash:
    point: str
    body: dict[str, Any]
    headers: dict[str, str]


async def _token(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": CUSTOMER, "password": DEMO_PASSWORD},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def _sku(inventory_url: str) -> str:
    """A seeded SKU with stock for every crash."""
    found = await rows(
        inventory_url,
        "SELECT sku FROM inventory_stock_levels GROUP BY sku"
        " HAVING SUM(on_hand - reserved) >= :units ORDER BY sku",
        units=len(CRASHES) + 1,
    )
    return str(found[0][0])


async def _replay(client: httpx.AsyncClient, crash: Crash) -> httpx.Response:
    """Replay the crashed checkout's key until recovery decided it (201 or 409 aborted)."""
    with anyio.fail_after(45):
        while True:
            response = await client.post("/api/v1/orders", json=crash.body, headers=crash.headers)
            assert response.status_code in {201, 409}, response.text
            code = response.json().get("type", "")
            if response.status_code == 201 or code.endswith("checkout_aborted"):
                return response
            await anyio.sleep(0.3)


async def _order_of_key(orders_url: str, key: str) -> tuple[str, str | None, str]:
    """(order id the key names, its status or None if no order, the XA gid of the checkout)."""
    [(order_id,)] = await rows(
        orders_url,
        "SELECT order_id FROM ordering_idempotency_keys WHERE idempotency_key = :key",
        key=key,
    )
    status = await rows(
        orders_url, "SELECT status FROM ordering_orders WHERE id = :id", id=order_id
    )
    [(gid,)] = await rows(
        orders_url, "SELECT gid FROM txn_xa_log WHERE reference = :id", id=order_id
    )
    return str(order_id), (str(status[0][0]) if status else None), str(gid)


async def _nothing_prepared(orders_url: str, inventory_url: str, prefix: str) -> float:
    """Seconds until neither database has a prepared transaction of `prefix` (at most 60)."""
    started = time.monotonic()
    with anyio.fail_after(60):
        while await prepared(orders_url, prefix) or await prepared(inventory_url, prefix):
            await anyio.sleep(0.2)
    return time.monotonic() - started


@pytest.mark.parametrize("backend", BACKENDS)
async def test_xa_checkouts_killed_between_the_phases_end_all_or_nothing(
    backend: str, pg_test_instance: PgInstance | ServerUnavailable, tmp_path: Path
) -> None:
    prefix = f"e{uuid.uuid4().hex[:8]}"
    port = free_port()
    async with (
        database_pair(backend, pg_test_instance, migrated=False) as (orders_url, inventory_url),
        running_psp(tmp_path) as psp,
    ):
        env = server_environment(
            orders_url,
            {
                "IRONCART_CHECKOUT_TXN": "xa",
                "IRONCART_INVENTORY_DATABASE_URL": inventory_url,
                "IRONCART_XA__GID_PREFIX": prefix,
                "IRONCART_XA__IN_DOUBT_SECONDS": "2",
                "IRONCART_XA__RECOVERY_INTERVAL_SECONDS": "0.3",
                "IRONCART_ORDERING__IDEMPOTENCY_STALE_SECONDS": "2",
                "IRONCART_DATABASE_POOL_SIZE": "5",
                **psp.shop_env(),
            },
        )
        # One `ironcart migrate` brings both databases to the same head.
        migrated = await run_cli("migrate", env=env, timeout=120)
        assert migrated.returncode == 0, output_of(migrated)
        assert b"inventory database is up to date" in migrated.stdout
        heads = [
            await rows(url, "SELECT version_num FROM alembic_version")
            for url in (orders_url, inventory_url)
        ]
        assert heads[0] == heads[1] != []
        seeded = await run_cli("seed", "--products", "3", env=env, timeout=120)
        assert seeded.returncode == 0, output_of(seeded)
        sku = await _sku(inventory_url)
        before = await on_hand(inventory_url, sku)
        crashes = []
        for point in CRASHES:
            crashing = {**env, "IRONCART_XA__CRASH_POINTS": f'["{point}"]'}
            async with running_server(
                orders_url, tmp_path, env=crashing, port=port, migrate=False
            ) as server:
                async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                    crash = Crash(
                        point,
                        {**ORDER_BODY, "lines": [{"sku": sku, "quantity": 1}]},
                        {**await _token(client), "Idempotency-Key": str(uuid.uuid4())},
                    )
                    with pytest.raises(httpx.TransportError):
                        await client.post("/api/v1/orders", json=crash.body, headers=crash.headers)
                assert await server.wait(10) == -9, server.stderr_text()
            crashes.append(crash)

        async with running_server(
            orders_url, tmp_path, env=env, port=port, migrate=False
        ) as server:
            waited = await _nothing_prepared(orders_url, inventory_url, prefix)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                token = await _token(client)
                replays = {}
                for crash in crashes:
                    crash.headers["Authorization"] = token["Authorization"]
                    replays[crash.point] = await _replay(client, crash)
            # The capture or void that follows each decision is the recovery job's next
            # step: read the PSP once none is left pending, while the server still runs.
            payments = await _payments_followed_up(psp)

        assert waited < 60
        sold = 0
        for crash in crashes:
            order_id, status, gid = await _order_of_key(
                orders_url, crash.headers["Idempotency-Key"]
            )
            replay = replays[crash.point]
            units = await sold_units(inventory_url, gid)
            if CRASHES[crash.point] == "paid":
                assert (status, units, payments[order_id]) == ("paid", 1, "captured"), crash.point
                assert replay.status_code == 201
                assert replay.json()["id"] == order_id
                assert [t["to"] for t in replay.json()["history"]] == ["awaiting_payment", "paid"]
            else:
                assert (status, units, payments[order_id]) == (None, 0, "voided"), crash.point
                assert replay.status_code == 409
            sold += units
        assert await on_hand(inventory_url, sku) == (before[0] - sold, before[1])
        assert await prepared(orders_url, prefix) == []
        assert await prepared(inventory_url, prefix) == []
