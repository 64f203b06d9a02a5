"""The real sandbox PSP process, and a webhook receiver, for tests over HTTP.

    async with receiving_webhooks() as receiver, running_psp(tmp_path, webhook_url=receiver.url) as psp:
        async with psp.client() as client:
            await client.post("/v1/payments", json=..., headers={"Idempotency-Key": "k1"})
        [event] = await receiver.wait_for(1)

`running_psp()` starts `ironcart sandbox-psp` on a free 127.0.0.1 port with its store in
`tmp_path` (so a second `running_psp(tmp_path)` is a restart on the same data), waits for
`/_sandbox/health` and always stops the process at the end: SIGTERM, then SIGKILL.
The receiver is a raw asyncio HTTP/1.1 server that records every delivery and answers the
statuses queued in `answers` (then 200).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from tests.support.server import IRONCART, STARTUP_TIMEOUT_SECONDS, ServerProcess, free_port

DEFAULT_SECRET = "whsec_sandbox_test"
DEFAULT_API_KEY = "sk_test_sandbox_psp"
SIGNATURE_TOLERANCE_SECONDS = 300


@dataclass
class PspProcess:
    """One running `ironcart sandbox-psp`."""

    server: ServerProcess
    api_key: str
    secret: str
    store: Path

    @property
    def url(self) -> str:
        return self.server.base_url

    @property
    def pid(self) -> int:
        return self.server.pid

    def shop_env(self) -> dict[str, str]:
        """The settings that make an IronCart process use this PSP (URL, key, webhook secret)."""
        return {
            "IRONCART_PAYMENTS__PSP_URL": self.url,
            "IRONCART_PAYMENTS__PSP_API_KEY": self.api_key,
            "IRONCART_PAYMENTS__WEBHOOK_SECRET": self.secret,
        }

    def client(self, *, timeout: float = 10.0) -> httpx.AsyncClient:
        """An HTTP client for this PSP, authenticated with its api key."""
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=timeout,
        )

    async def stop(self) -> int:
        return await self.server.stop()


async def _wait_for_health(server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=server.base_url, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"sandbox-psp exited with status {server.process.returncode}; "
                    f"stderr:\n{server.stderr_text()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/_sandbox/health")).status_code == 200:
                    return
            await anyio.sleep(0.05)
    raise TimeoutError(f"sandbox-psp not healthy in {timeout} s; stderr:\n{server.stderr_text()}")


@asynccontextmanager
async def running_psp(
    tmp_path: Path,
    *,
    webhook_url: str | None = None,
    secret: str = DEFAULT_SECRET,
    api_key: str = DEFAULT_API_KEY,
    startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
    env: Mapping[str, str] | None = None,
    log_level: str | None = None,
) -> AsyncIterator[PspProcess]:
    """Start `ironcart sandbox-psp` (store: tmp_path/sandbox-psp.db); always stop it.
    `env`: extra environment (e.g. tracing); `log_level`: its `--log-level`."""
    port = free_port()
    store = tmp_path / "sandbox-psp.db"
    command = [
        str(IRONCART), "sandbox-psp", "--host", "127.0.0.1", "--port", str(port),
        "--store", str(store), "--api-key", api_key, "--webhook-secret", secret,
    ]  # fmt: skip
    if webhook_url is not None:
        command += ["--webhook-url", webhook_url]
    if log_level is not None:
        command += ["--log-level", log_level]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IRONCART_")}
    environment.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    stderr_path = tmp_path / f"sandbox-psp-{port}.stderr.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = ServerProcess(process=process, port=port, env=environment, stderr_path=stderr_path)
    try:
        await _wait_for_health(server, startup_timeout)
        yield PspProcess(server=server, api_key=api_key, secret=secret, store=store)
    finally:
        with anyio.CancelScope(shield=True):
            await server.stop()


@dataclass(frozen=True)
class Delivery:
    """One webhook POST as received, and the status it was answered with."""

    headers: dict[str, str]
    body: bytes
    answered: int
    at: float

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event

    def signed_with(self, secret: str, *, now: float | None = None) -> bool:
        """`Sandbox-Signature: t=..,v1=..` is HMAC-SHA256(secret, "<t>.<body>") and t is recent."""
        parts = dict(part.split("=", 1) for part in self.headers["sandbox-signature"].split(","))
        timestamp = int(parts["t"])
        expected = hmac.new(
            secret.encode(), f"{timestamp}.".encode() + self.body, hashlib.sha256
        ).hexdigest()
        age = (time.time() if now is None else now) - timestamp
        recent = abs(age) <= SIGNATURE_TOLERANCE_SECONDS
        return recent and hmac.compare_digest(expected, parts["v1"])


@dataclass
class WebhookReceiver:
    port: int = 0
    answers: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/psp"

    @property
    def accepted(self) -> list[Delivery]:
        return [delivery for delivery in self.deliveries if 200 <= delivery.answered < 300]

    async def wait_for(self, count: int, *, timeout: float = 5.0) -> list[Delivery]:
        """The accepted deliveries, once there are at least `count` of them."""
        async with self._arrived:
            with anyio.fail_after(timeout):
                await self._arrived.wait_for(lambda: len(self.accepted) >= count)
        return self.accepted

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                lines = head.split("\r\n")[1:-2]
                headers = {
                    name.strip().lower(): value.strip()
                    for name, value in (line.split(":", 1) for line in lines)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status = self.answers.pop(0) if self.answers else 200
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
                async with self._arrived:
                    self.deliveries.append(Delivery(headers, body, status, time.monotonic()))
                    self._arrived.notify_all()
        writer.close()


@asynccontextmanager
async def receiving_webhooks() -> AsyncIterator[WebhookReceiver]:
    """A webhook receiver on a free 127.0.0.1 port, for the duration of the block."""
    receiver = WebhookReceiver()
    connections: set[asyncio.Task[Any]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await receiver.handle(reader, writer)
        finally:
            connections.discard(task)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
