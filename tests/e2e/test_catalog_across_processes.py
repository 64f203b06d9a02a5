"""Two real server processes on one PostgreSQL and one Redis: no stale price survives 1 s."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.catalog import product_payload
from tests.support.server import run_cli, running_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
PASSWORD = "a-long-enough-passphrase"


async def test_staff_price_change_reaches_the_other_process_within_one_second(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = {"IRONCART_REDIS_URL": redis_url}
    async with (
        running_server(postgres_url, tmp_path, env=env) as first,
        running_server(postgres_url, tmp_path, env=env) as second,
    ):
        email = f"staff-{uuid.uuid4().hex[:8]}@example.com"
        created_user = await run_cli(
            "user",
            "create",
            "--email",
            email,
            "--password",
            PASSWORD,
            "--role",
            "staff",
            env=first.env,
        )
        assert created_user.returncode == 0
        sku = f"X-{uuid.uuid4().hex[:8]}"
        async with (
            httpx.AsyncClient(base_url=first.base_url) as writer,
            httpx.AsyncClient(base_url=second.base_url) as reader,
        ):
            token = await writer.post(
                "/api/v1/auth/token",
                data={"grant_type": "password", "username": email, "password": PASSWORD},
            )
            staff = {"Authorization": f"Bearer {token.json()['access_token']}"}
            product = await writer.post(
                "/api/v1/products",
                json=product_payload("Cross Lamp", sku=sku, price="20.00"),
                headers=staff,
            )
            url = f"/api/v1/products/{product.json()['id']}"
            for _ in range(5):
                assert (await reader.get(url)).json()["price"]["min"]["amount"] == "20.00"
            lags = []
            for round_number, price in enumerate(("21.00", "22.00", "23.00"), start=1):
                changed = await writer.patch(
                    f"/api/v1/variants/{sku}",
                    json={"price": {"amount": price, "currency": "USD"}},
                    headers={**staff, "If-Match": f'"v{round_number}"'},
                )
                assert changed.status_code == 200, changed.text
                started = time.monotonic()
                while (await reader.get(url)).json()["price"]["min"]["amount"] != price:
                    assert time.monotonic() - started < 1.0, "stale price after 1 s"
                    await asyncio.sleep(0.01)
                lags.append(time.monotonic() - started)
    assert max(lags) < 1.0
