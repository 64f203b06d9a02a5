"""The real sandbox carrier process, for tests over HTTP (like tests/support/psp.py).

`running_carrier()` starts `ironcart sandbox-carrier` on a free 127.0.0.1 port with its
store in `tmp_path` (optionally posting its webhooks to `webhook_url`, or moving every
shipment on by itself every `auto_advance_seconds`), waits for `/_sandbox/health` and
always stops the process at the end.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from tests.support.server import IRONCART, STARTUP_TIMEOUT_SECONDS, ServerProcess, free_port

DEFAULT_SECRET = "whsec_sandbox_carrier_test"
DEFAULT_API_KEY = "ck_test_sandbox_carrier"


@dataclass
class CarrierProcess:
    server: ServerProcess
    api_key: str
    secret: str

    @property
    def url(self) -> str:
        return self.server.base_url

    def client(self, *, timeout: float = 10.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=timeout
        )

    async def advance(self, shipment_id: str, **body: Any) -> dict[str, Any]:
        """Report the steps to `status` (with faults: duplicate, reorder, drop, delay_ms)."""
        async with self.client() as client:
            response = await client.post(f"/_sandbox/shipments/{shipment_id}/advance", json=body)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


async def _wait_for_health(server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=server.base_url, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"sandbox-carrier exited with status {server.process.returncode}; "
                    f"stderr:\n{server.stderr_text()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/_sandbox/health")).status_code == 200:
                    return
            await anyio.sleep(0.05)
    raise TimeoutError(f"sandbox-carrier not healthy in {timeout} s:\n{server.stderr_text()}")


@asynccontextmanager
async def running_carrier(
    tmp_path: Path,
    *,
    webhook_url: str | None = None,
    secret: str = DEFAULT_SECRET,
    api_key: str = DEFAULT_API_KEY,
    port: int | None = None,
    auto_advance_seconds: float | None = None,
) -> AsyncIterator[CarrierProcess]:
    """Start `ironcart sandbox-carrier` (store: tmp_path/sandbox-carrier.db); always stop it."""
    port = port or free_port()
    command = [
        str(IRONCART), "sandbox-carrier", "--host", "127.0.0.1", "--port", str(port),
        "--store", str(tmp_path / "sandbox-carrier.db"), "--api-key", api_key,
        "--webhook-secret", secret,
    ]  # fmt: skip
    if webhook_url is not None:
        command += ["--webhook-url", webhook_url]
    if auto_advance_seconds is not None:
        command += ["--auto-advance-seconds", str(auto_advance_seconds)]
    env = {key: value for key, value in os.environ.items() if not key.startswith("IRONCART_")}
    env["PYTHONUNBUFFERED"] = "1"
    stderr_path = tmp_path / f"sandbox-carrier-{port}.stderr.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )
    server = ServerProcess(process=process, port=port, env=env, stderr_path=stderr_path)
    try:
        await _wait_for_health(server, STARTUP_TIMEOUT_SECONDS)
        yield CarrierProcess(server=server, api_key=api_key, secret=secret)
    finally:
        with anyio.CancelScope(shield=True):
            await server.stop()
