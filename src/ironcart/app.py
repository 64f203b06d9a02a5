"""Builds the ASGI application for all contexts or for one service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from ironcart.bootstrap import bootstrap
from ironcart.cart.api import router as cart_router
from ironcart.cart.internal_api import router as cart_internal
from ironcart.catalog.api import ProductPageFastPath
from ironcart.catalog.api import router as catalog_router
from ironcart.catalog.internal_api import router as catalog_internal
from ironcart.identity.api import router as identity_router
from ironcart.inventory.api import router as inventory_router
from ironcart.inventory.internal_api import router as inventory_internal
from ironcart.ordering.api import router as ordering_router
from ironcart.ordering.internal_api import router as ordering_internal
from ironcart.payments.api import router as payments_router
from ironcart.payments.internal_api import router as payments_internal
from ironcart.platform.http.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from ironcart.platform.http.ops import router as ops_router
from ironcart.platform.http.problems import install_problem_handlers
from ironcart.platform.resilience.deadline import DeadlineMiddleware
from ironcart.platform.resilience.ratelimits import RateLimitMiddleware
from ironcart.platform.resilience.shedding import LoadSheddingMiddleware
from ironcart.platform.settings import Settings
from ironcart.platform.tracing import add_tracing_middleware, configure_tracing, shutdown_tracing
from ironcart.shipping.api import router as shipping_router
from ironcart.shipping.internal_api import router as shipping_internal
from ironcart.worker import run_background_jobs

SERVICES: dict[str, list[APIRouter]] = {
    "identity": [identity_router],
    "catalog": [catalog_router, catalog_internal],
    "inventory": [inventory_router, inventory_internal],
    "cart": [cart_router, cart_internal],
    "ordering": [ordering_router, ordering_internal],
    "payments": [payments_router, payments_internal],
    "shipping": [shipping_router, shipping_internal],
}


def create_app(settings: Settings, *, service: str = "all") -> FastAPI:
    """The app serving `service` ("all" or one context); connections open in the lifespan."""
    if service != "all" and service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; choose all or one of {sorted(SERVICES)}")
    tracer_provider = configure_tracing(settings, service=service)  # None: tracing is off
    own_contexts = None if service == "all" else {service}  # whose background jobs it runs

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
            asyncio.create_task(run_background_jobs(container, stop, contexts=own_contexts))
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
            shutdown_tracing(tracer_provider)

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
    app.add_middleware(
        DeadlineMiddleware,
        default_seconds=settings.resilience.request_deadline_seconds,
        routes=settings.resilience.route_deadlines,
    )
    if "catalog" in selected:
        app.add_middleware(ProductPageFastPath)
    # Admission control, outside the fast path so that it guards cached reads too: shedding
    # first (no I/O), then the rate limits (a counter in Redis).
    if settings.admission.rate_limits_enabled:
        app.add_middleware(RateLimitMiddleware, settings=settings.admission)
    if settings.admission.shedding_enabled:
        app.add_middleware(LoadSheddingMiddleware, settings=settings.admission)
    app.add_middleware(RequestContextMiddleware)
    app.state.tracer_provider = tracer_provider
    if tracer_provider is not None:  # outermost: the server span covers all of the above
        add_tracing_middleware(app, tracer_provider)
    return app


async def _finish(jobs: asyncio.Task[None], grace_seconds: float) -> None:
    """Let the background jobs finish their round (the relay its batch), then cancel them."""
    try:
        await asyncio.wait_for(asyncio.shield(jobs), grace_seconds)
    except TimeoutError:
        jobs.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await jobs
