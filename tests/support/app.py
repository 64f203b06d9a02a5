"""Run the real ASGI app in-process (lifespan included) behind an httpx client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from ironcart.app import create_app
from ironcart.platform.settings import Settings, load_settings
from ironcart.shipping.seed import seed_zones
from tests.support.http_wiring import OVER_HTTP, contexts_over_http

DEMO_PASSWORD = "a-long-enough-passphrase"


def settings_for(database_url: str, **overrides: Any) -> Settings:
    return load_settings(database_url=database_url, environment="test", **overrides)


@asynccontextmanager
async def running_app(
    settings: Settings, *, shipping_zones: bool = False
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app in this process; `shipping_zones`: the demo zones `ironcart seed` creates (GB,
    EU, rest of world), which checkout quotes shipping from. With IRONCART_TEST_WIRING=http
    every context also runs as its own app over loopback HTTP, and this app's ports call them
    (tests/support/http_wiring.py); `app.state.contexts` holds those apps by context."""
    async with AsyncExitStack() as stack:
        contexts: dict[str, FastAPI] = {}
        if OVER_HTTP:
            settings, contexts = await stack.enter_async_context(contexts_over_http(settings))
        app = create_app(settings)
        app.state.contexts = contexts
        await stack.enter_async_context(app.router.lifespan_context(app))
        if shipping_zones:
            await seed_zones(app.state.container.shipping, currency=settings.catalog.currency)
        # Each app gets its own client address, so per-IP limits shared in Redis never collide.
        transport = httpx.ASGITransport(app=app, client=(f"test-{uuid.uuid4().hex[:12]}", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


async def register_and_login(
    client: httpx.AsyncClient, email: str, password: str = DEMO_PASSWORD
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/auth/register", json={"email": email, "password": password, "name": "Test User"}
    )
    assert response.status_code == 201, response.text
    token = await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": password},
    )
    assert token.status_code == 200, token.text
    body: dict[str, Any] = token.json()
    return body
