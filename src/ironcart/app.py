"""Builds the ASGI application for all contexts or for one service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from ironcart.bootstrap import bootstrap
from ironcart.cart.api import router as cart_router
from ironcart.catalog.api import ProductPageFastPath
from ironcart.catalog.api import router as catalog_router
from ironcart.identity.api import router as identity_router
from ironcart.inventory.api import router as inventory_router
from ironcart.ordering.api import router as ordering_router
from ironcart.payments.api import router as payments_router
from ironcart.platform.http.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from ironcart.platform.http.ops import router as ops_router
from ironcart.platform.http.problems import install_problem_handlers
from ironcart.platform.settings import Settings
from ironcart.shipping.api import router as shipping_router
from ironcart.worker import run_background_jobs

SERVICES: dict[str, list[APIRouter]] = {
    "identity": [identity_router],
    "catalog": [catalog_router],
    "inventory": [inventory_router],
    "cart": [cart_router],
    "ordering": [ordering_router],
    "payments": [payments_router],
    "shipping": [shipping_router],
}


def create_app(settings: Settings, *, service: str = "all") -> FastAPI:
    """The app serving `service` ("all" or one context); connections open in the lifespan."""
    if service != "all" and service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; choose all or one of {sorted(SERVICES)}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        container = bootstrap(settings)
        app.state.container = container
        app.state.token_verifier = container.token_verifier
        app.state.readiness_checks = container.readiness_checks
        app.state.readiness_timeout = settings.server.readiness_timeout_seconds
        await container.start()
        stop = asyncio.Event()
        jobs = (
            asyncio.create_task(run_background_jobs(container, stop))
            if settings.server.background_jobs
            else None
        )
        try:
            yield
        finally:
            stop.set()
            if jobs is not None:
                await _finish(jobs, settings.server.graceful_shutdown_seconds)
            await container.aclose()

    app = FastAPI(
        title="IronCart",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    install_problem_handlers(app)
    app.include_router(ops_router)
    selected = SERVICES if service == "all" else {service: SERVICES[service]}
    for routers in selected.values():
        for router in routers:
            app.include_router(router)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.server.max_body_bytes)
    if "catalog" in selected:
        app.add_middleware(ProductPageFastPath)
    app.add_middleware(RequestContextMiddleware)
    return app


async def _finish(jobs: asyncio.Task[None], grace_seconds: float) -> None:
    """Let the background jobs finish their round (the relay its batch), then cancel them."""
    try:
        await asyncio.wait_for(asyncio.shield(jobs), grace_seconds)
    except TimeoutError:
        jobs.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await jobs
