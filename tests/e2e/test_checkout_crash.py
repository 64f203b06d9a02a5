"""Kill -9 at each step of checkout, restart, and prove the order ends all-or-nothing.

A real `ironcart serve` on PostgreSQL and a real sandbox PSP process. The server is told
to SIGKILL itself at one step of the TCC checkout (`IRONCART_ORDERING__CRASH_POINTS`,
refused in production) — after the stock was reserved, after the payment was authorized,
right after the commit decision, or between two confirms. Then it is restarted on the
same port; its recovery loop finds the global transaction and drives it to its end:

- killed before the decision -> the order is cancelled, the stock released, the
  authorization (if the PSP made one) voided, nothing captured;
- killed after the decision -> the order is paid, the stock sold, exactly one capture.

A replay of the same Idempotency-Key then answers with the order as recovery left it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import text

from ironcart.platform.database import create_engine
from tests.support.psp import running_psp
from tests.support.server import free_port, migrate_and_seed, running_server, server_environment

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CUSTOMER = "customer@ironcart.example"
STAFF = "staff@ironcart.example"
DEMO_PASSWORD = "ironcart-demo-password"
RECOVERY = {
    "IRONCART_ORDERING__TXN_IN_DOUBT_SECONDS": "2",
    "IRONCART_ORDERING__RECOVERY_INTERVAL_SECONDS": "0.3",
    "IRONCART_ORDERING__IDEMPOTENCY_STALE_SECONDS": "2",
}


@dataclass
class Stage:
    database_url: str
    tmp_path: Path
    port: int
    env: dict[str, str]
    psp: Any


@pytest.fixture
async def stage(postgres_url: str, tmp_path: Path) -> AsyncIterator[Stage]:
    port = free_port()
    webhook = f"http://127.0.0.1:{port}/api/v1/payments/webhooks/sandbox"
    async with running_psp(tmp_path, webhook_url=webhook) as psp:
        env = server_environment(
            postgres_url,
            {
                **RECOVERY,
                **psp.shop_env(),
            },
        )
        await migrate_and_seed(env)
        yield Stage(postgres_url, tmp_path, port, env, psp)


async def _token(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    response = await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": DEMO_PASSWORD},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def _sku(client: httpx.AsyncClient) -> str:
    page = await client.get("/api/v1/products", params={"limit": 1, "in_stock": "true"})
    assert page.status_code == 200, page.text
    product = await client.get(f"/api/v1/products/{page.json()['items'][0]['id']}")
    sku: str = product.json()["variants"][0]["sku"]
    return sku


async def _stock(database_url: str, sku: str) -> tuple[int, int, int]:
    """(on_hand, reserved, active reservations) straight from inventory's tables."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            on_hand, reserved = (
                await connection.execute(
                    text(
                        "SELECT COALESCE(SUM(on_hand), 0), COALESCE(SUM(reserved), 0)"
                        " FROM inventory_stock_levels WHERE sku = :sku"
                    ),
                    {"sku": sku},
                )
            ).one()
            active = await connection.scalar(
                text(
                    "SELECT COUNT(*) FROM inventory_reservations"
                    " WHERE sku = :sku AND status = 'active'"
                ),
                {"sku": sku},
            )
            open_txns = await connection.scalar(
                text(
                    "SELECT COUNT(*) FROM txn_transactions"
                    " WHERE state NOT IN ('confirmed', 'cancelled')"
                )
            )
    finally:
        await engine.dispose()
    assert open_txns == 0, f"{open_txns} global transactions still open"
    return int(on_hand), int(reserved), int(active or 0)


async def _psp_payments(psp: Any, order_id: str) -> list[dict[str, Any]]:
    """The PSP's payments for this order (found by the idempotency keys of its operations)."""
    async with httpx.AsyncClient(base_url=psp.url) as client:
        headers = {"Authorization": f"Bearer {psp.api_key}"}
        payments = await client.get("/_sandbox/payments", headers=headers)
        ledger = await client.get("/_sandbox/ledger", headers=headers)
    entries = [e for e in ledger.json()["data"] if e["idempotency_key"].startswith(order_id)]
    ids = {e["payment_id"] for e in entries}
    captures = [e for e in entries if e["operation"] == "capture"]
    assert len(captures) <= 1, f"two captures for one order: {captures}"
    return [p for p in payments.json()["data"] if p["id"] in ids]


async def _settle(
    client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str]
) -> tuple[httpx.Response, dict[str, Any]]:
    """Replay the checkout until recovery has decided its order; the replay and the order.

    While the order is in flight the replay waits (409 in progress); then it answers 201
    with the paid order, or 409 `checkout_aborted` when recovery cancelled it.
    """
    with anyio.fail_after(45):
        while True:
            response = await client.post("/api/v1/orders", json=body, headers=headers)
            assert response.status_code in {201, 409}, response.text
            code = response.json().get("type", "")
            if response.status_code == 201 or code.endswith("checkout_aborted"):
                break
            await anyio.sleep(0.3)
    mine = await client.get("/api/v1/orders", headers=headers)
    orders = mine.json()["items"]
    assert len(orders) == 1, orders
    detail = await client.get(f"/api/v1/orders/{orders[0]['id']}", headers=headers)
    return response, dict(detail.json())


def _without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "request_id"}


@pytest.mark.parametrize(
    ("crash_point", "outcome"),
    [
        ("after_try:inventory", "cancelled"),
        ("after_try:payment", "cancelled"),
        ("after_decision", "paid"),
        ("after_confirm:inventory", "paid"),
        ("after_confirm:payment", "paid"),
    ],
)
async def test_a_checkout_killed_at_any_step_ends_all_or_nothing(
    stage: Stage, crash_point: str, outcome: str
) -> None:
    order_body = {
        "lines": [],
        "shipping_address": {
            "name": "Grace Hopper",
            "line1": "1 Navy Way",
            "city": "Arlington",
            "postal_code": "22202",
            "country": "US",
        },
        "shipping_method": "standard",
        "payment": {"card_token": "tok_visa"},
    }
    crashing = {**stage.env, "IRONCART_ORDERING__CRASH_POINTS": f'["{crash_point}"]'}
    async with running_server(
        stage.database_url, stage.tmp_path, env=crashing, port=stage.port
    ) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            customer = await _token(client, CUSTOMER)
            sku = await _sku(client)
            before = await _stock(stage.database_url, sku)
            order_body["lines"] = [{"sku": sku, "quantity": 1}]
            headers = {**customer, "Idempotency-Key": str(uuid.uuid4())}
            with pytest.raises(httpx.TransportError):
                await client.post("/api/v1/orders", json=order_body, headers=headers)
        assert await server.wait(10) == -9, server.stderr_text()

    async with (
        running_server(
            stage.database_url, stage.tmp_path, env=stage.env, port=stage.port
        ) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as client,
    ):
        headers["Authorization"] = (await _token(client, CUSTOMER))["Authorization"]
        replay, order = await _settle(client, order_body, headers)
        again = await client.post("/api/v1/orders", json=order_body, headers=headers)

    assert order["status"] == outcome
    assert again.status_code == replay.status_code  # the settled answer is stored
    assert _without_request_id(again.json()) == _without_request_id(replay.json())
    on_hand, reserved, active = await _stock(stage.database_url, sku)
    assert reserved == before[1]
    assert active == 0
    payments = await _psp_payments(stage.psp, order["id"])
    if outcome == "paid":
        assert replay.status_code == 201
        assert replay.json()["id"] == order["id"]
        assert on_hand == before[0] - 1
        assert [p["status"] for p in payments] == ["captured"]
        assert [t["to"] for t in order["history"]] == ["awaiting_payment", "paid"]
    else:
        assert replay.status_code == 409
        assert on_hand == before[0]
        assert all(p["status"] in {"voided", "declined"} for p in payments), payments
        assert order["history"][-1]["to"] == "cancelled"
