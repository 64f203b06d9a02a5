"""`ironcart sandbox-carrier`: the carrier IronCart ships with in tests and demos, over HTTP.

The contract is docs/sandbox-carrier.md. This module is the HTTP edge (Starlette): the
shared pieces (authentication, errors, idempotency, webhook delivery, JSON) come from
`sandbox.common`, the per-call faults from `psp_faults`, the use cases from
`carrier_service`, the SQLite file from `carrier_store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ironcart.platform.tracing import trace_sandbox
from ironcart.sandbox.carrier_service import CarrierService
from ironcart.sandbox.carrier_store import SqlCarrierStore
from ironcart.sandbox.common import (
    InjectedFault,
    SandboxError,
    WebhookDispatcher,
    authenticate,
    cancel,
    idempotency_key_of,
    json_object,
    on_http_error,
    on_sandbox_error,
    respond,
    respond_json,
    serve_app,
)
from ironcart.sandbox.psp_faults import FaultInjector, Faults
from ironcart.sandbox.psp_transport import KeepAliveTransport

logger = logging.getLogger("ironcart.sandbox.carrier")
REPLAYED = {"Idempotent-Replayed": "true"}
MAX_BODY_BYTES = 64 * 1024
WEBHOOK_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class CarrierConfig:
    store_path: Path
    api_key: str
    webhook_secret: str
    webhook_url: str | None = None
    base_url: str = "http://127.0.0.1:8791"
    auto_advance_seconds: float | None = None
    webhook_first_backoff_seconds: float = 0.5


class CarrierApi:
    """The routes; `create_app` wires them into a Starlette app."""

    def __init__(self, config: CarrierConfig) -> None:
        self._config = config
        self._bearer = f"Bearer {config.api_key}".encode()
        self.store = SqlCarrierStore(config.store_path)
        self.faults = FaultInjector()
        self.webhooks: WebhookDispatcher | None = None
        self.service = CarrierService(
            self.store,
            account=hashlib.sha256(config.api_key.encode()).hexdigest()[:16],
            base_url=config.base_url,
            webhooks_enabled=config.webhook_url is not None,
            on_events=self._wake_webhooks,
            flush=self._flush,
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.store.close)
            if self._config.webhook_url is not None:
                transport = KeepAliveTransport(timeout=WEBHOOK_TIMEOUT_SECONDS)
                client = httpx.AsyncClient(transport=transport, timeout=WEBHOOK_TIMEOUT_SECONDS)
                stack.push_async_callback(client.aclose)
                self.webhooks = WebhookDispatcher(
                    self.store,
                    client,
                    url=self._config.webhook_url,
                    secret=self._config.webhook_secret,
                    first_backoff_seconds=self._config.webhook_first_backoff_seconds,
                    logger=logger,
                )
                stack.push_async_callback(cancel, asyncio.create_task(self.webhooks.run()))
            if self._config.auto_advance_seconds:
                task = asyncio.create_task(self._auto_advance(self._config.auto_advance_seconds))
                stack.push_async_callback(cancel, task)
            yield

    def routes(self) -> list[Route]:
        return [
            Route("/v1/shipments", self.create_shipment, methods=["POST"]),
            Route("/v1/shipments/{shipment_id}", self.get_shipment),
            Route("/v1/shipments/{shipment_id}/label", self.get_label),
            Route("/_sandbox/shipments/{shipment_id}/advance", self.advance, methods=["POST"]),
            Route("/_sandbox/faults", self.get_faults),
            Route("/_sandbox/faults", self.put_faults, methods=["PUT"]),
            Route("/_sandbox/faults", self.reset_faults, methods=["DELETE"]),
            Route("/_sandbox/webhooks", self.sandbox_webhooks),
            Route("/_sandbox/webhooks/flush", self.flush_webhooks, methods=["POST"]),
            Route("/_sandbox/health", self.health),
        ]

    async def create_shipment(self, request: Request) -> Response:
        authenticate(request, self._bearer)
        call = self.faults.roll_call()
        if call.error:
            raise InjectedFault("internal_error", "injected fault (sandbox error_rate)")
        key = idempotency_key_of(request.headers.get("idempotency-key"))
        payload = await json_object(request)
        response, replayed = await self.service.create(
            key=key, payload=payload, latency_seconds=call.latency_seconds
        )
        if call.timeout_seconds:
            await asyncio.sleep(call.timeout_seconds)  # processed; the answer is what is late
        return respond(response, REPLAYED if replayed else None)

    async def get_shipment(self, request: Request) -> Response:
        authenticate(request, self._bearer)
        return respond_json(200, self.service.get(request.path_params["shipment_id"]))

    async def get_label(self, request: Request) -> Response:
        authenticate(request, self._bearer)
        label = self.service.label(request.path_params["shipment_id"])
        return Response(label, media_type="text/plain; charset=utf-8")

    async def advance(self, request: Request) -> Response:
        authenticate(request, self._bearer)
        payload = await json_object(request)
        return respond_json(200, self.service.advance(request.path_params["shipment_id"], payload))

    async def get_faults(self, request: Request) -> Response:
        authenticate(request, self._bearer)
        return respond_json(200, self.faults.faults.to_json())

    async def put_faults(self, request: Request) -> Response:
        authenticate(request, self._bearer)
        self.faults.set(Faults.parse(await json_object(request)))
        return respond_json(200, self.faults.faults.to_json())

    async def reset_faults(self, request: Request) -> Response:
        authenticate(request, self._bearer)
        self.faults.set(Faults())
        return respond_json(200, self.faults.faults.to_json())

    async def sandbox_webhooks(self, request: Request) -> Response:
        authenticate(request, self._bearer)
        return respond_json(200, {"data": self.service.webhook_events()})

    async def flush_webhooks(self, request: Request) -> Response:
        authenticate(request, self._bearer)
        return respond_json(200, {"flushed": self._flush()})

    async def health(self, _request: Request) -> Response:
        return respond_json(200, {"status": "ok"})

    async def _auto_advance(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.service.auto_advance()  # a shipment that cannot move is skipped, logged

    def _flush(self) -> int:
        return self.webhooks.flush() if self.webhooks is not None else 0

    def _wake_webhooks(self) -> None:
        if self.webhooks is not None:
            self.webhooks.wake()


def create_app(config: CarrierConfig) -> Starlette:
    api = CarrierApi(config)
    return Starlette(
        routes=api.routes(),
        lifespan=api.lifespan,
        exception_handlers={SandboxError: on_sandbox_error, HTTPException: on_http_error},
        max_body_size=MAX_BODY_BYTES,
    )


def serve(config: CarrierConfig, *, host: str, port: int, log_level: str) -> None:
    """Run the sandbox carrier on one uvicorn worker until SIGINT/SIGTERM."""
    app = trace_sandbox(create_app(config), service="sandbox-carrier")  # when IRONCART_TRACING__*
    serve_app(app, host=host, port=port, log_level=log_level)
