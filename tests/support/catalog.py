"""Helpers for catalog tests: a staff token, product payloads."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fastapi import FastAPI

from tests.support.app import DEMO_PASSWORD


async def staff_headers(app: FastAPI, client: httpx.AsyncClient) -> dict[str, str]:
    email = f"staff-{uuid.uuid4().hex[:8]}@example.com"
    await app.state.container.identity.create_user(
        email=email, password=DEMO_PASSWORD, name="Staff", roles=["staff"]
    )
    token = await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": DEMO_PASSWORD},
    )
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def product_payload(
    name: str,
    *,
    price: str = "19.99",
    sku: str | None = None,
    published: bool = True,
    category: str | None = None,
    description: str = "",
    attributes: dict[str, str] | None = None,
    currency: str = "USD",
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description or f"{name} for everyday use.",
        "published": published,
        "category": category,
        "attributes": attributes or {},
        "images": ["https://img.example.com/a.jpg"],
        "variants": [
            {
                "sku": sku or f"SKU-{uuid.uuid4().hex[:10]}",
                "name": "Default",
                "price": {"amount": price, "currency": currency},
                "weight_grams": 500,
            }
        ],
    }
