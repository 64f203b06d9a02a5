"""Helpers for checkout tests: products with stock, customers, staff, order payloads."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fastapi import FastAPI

from tests.support.app import register_and_login
from tests.support.catalog import product_payload, staff_headers

__all__ = ["address", "customer", "order_payload", "paid_order", "staffer", "stocked_product"]


async def stocked_product(
    app: FastAPI,
    client: httpx.AsyncClient,
    staff: dict[str, str],
    *,
    units: int,
    price: str = "10.00",
    warehouses: int = 1,
) -> str:
    """A published product with one variant and `units` in stock, spread over warehouses."""
    sku = f"SKU-{uuid.uuid4().hex[:10]}"
    payload = product_payload(f"Product {sku}", price=price, sku=sku)
    response = await client.post("/api/v1/products", json=payload, headers=staff)
    assert response.status_code == 201, response.text
    inventory = app.state.container.inventory
    share, rest = divmod(units, warehouses)
    for index in range(warehouses):
        code = f"wh-{uuid.uuid4().hex[:8]}"
        await inventory.create_warehouse(code=code, name=f"Warehouse {index}", priority=1)
        quantity = share + (rest if index == 0 else 0)
        if quantity:
            await inventory.receive(sku=sku, warehouse=code, quantity=quantity)
    return sku


async def customer(client: httpx.AsyncClient) -> dict[str, str]:
    tokens = await register_and_login(client, f"buyer-{uuid.uuid4().hex[:10]}@example.com")
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def staffer(app: FastAPI, client: httpx.AsyncClient) -> dict[str, str]:
    return await staff_headers(app, client)


def address() -> dict[str, str]:
    return {
        "name": "Ada Lovelace",
        "line1": "12 St James's Square",
        "city": "London",
        "postal_code": "SW1Y 4JH",
        "country": "GB",
    }


def order_payload(
    lines: list[tuple[str, int]] | None = None,
    *,
    cart_id: str | None = None,
    card_token: str = "tok_visa",  # noqa: S107 - a sandbox card token, not a secret
    shipping_method: str = "standard",
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "shipping_address": address(),
        "shipping_method": shipping_method,
        "payment": {"card_token": card_token},
    }
    if cart_id is not None:
        body["cart_id"] = cart_id
    else:
        body["lines"] = [{"sku": sku, "quantity": quantity} for sku, quantity in lines or []]
    return body


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def paid_order(
    client: httpx.AsyncClient,
    buyer: dict[str, str],
    lines: list[tuple[str, int]],
    *,
    shipping_method: str = "standard",
) -> dict[str, Any]:
    """A real checkout: `buyer` orders `lines` through `POST /api/v1/orders`; the paid order.

    `client` may be the in-process app's or one to a real `ironcart serve` (needs a PSP).
    """
    body = order_payload(lines, shipping_method=shipping_method)
    response = await client.post("/api/v1/orders", json=body, headers={**buyer, **key()})
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    assert order["status"] == "paid", order
    return order
