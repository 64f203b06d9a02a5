"""Run the real `ironcart serve` process on a free 127.0.0.1 port, for end-to-end tests.

`running_server()` migrates the database with `ironcart migrate` (same environment),
starts the server, waits for `/healthz`, and always stops the process when the block
ends: SIGTERM, then SIGKILL if it has not exited in time. The server's stderr (JSON
log lines) goes to a file so that tests can assert on it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

IRONCART = Path(sys.executable).with_name("ironcart")
STARTUP_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    """A port nobody listens on right now (the kernel's choice for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_environment(database_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment minus any `IRONCART_*` of the caller, plus the test settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("IRONCART_")}
    env.update(
        {
            "IRONCART_DATABASE_URL": database_url,
            "IRONCART_ENVIRONMENT": "test",
            "IRONCART_LOG_JSON": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


async def run_cli(
    *args: str, env: Mapping[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[bytes]:
    """Run `ironcart <args>` to completion; never raises on a non-zero exit status."""
    with anyio.fail_after(timeout):
        return await anyio.run_process(
            [str(IRONCART), *args], env=dict(env), check=False, stdin=subprocess.DEVNULL
        )


async def migrate_and_seed(env: Mapping[str, str], *, products: int = 3) -> None:
    """`ironcart migrate`, then `ironcart seed --products N` (demo accounts and a catalog)."""
    for args in (("migrate",), ("seed", "--products", str(products))):
        result = await run_cli(*args, env=env, timeout=120)
        assert result.returncode == 0, output_of(result)


def output_of(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stdout or b"").decode() + (result.stderr or b"").decode()


@dataclass
class ServerProcess:
    """One running `ironcart serve`; `stop()` is idempotent."""

    process: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    stderr_path: Path
    returncode: int | None = field(default=None, init=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The server's stderr lines that are JSON objects (all of them, when LOG_JSON=true)."""
        records: list[dict[str, Any]] = []
        for line in self.stderr_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    async def wait_for_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """The log records matching `predicate`, waiting for at least one to be written."""
        deadline = time.monotonic() + timeout
        while True:
            matching = [record for record in self.log_records() if predicate(record)]
            if matching or time.monotonic() > deadline:
                return matching
            await anyio.sleep(0.05)

    def send_signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signum)

    async def wait(self, timeout: float) -> int | None:
        """The exit status once the process has ended, or None if it is still running."""
        deadline = time.monotonic() + timeout
        while (code := self.process.poll()) is None and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        if code is not None:
            self.returncode = code
        return code

    async def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit status."""
        self.send_signal(signal.SIGTERM)
        code = await self.wait(timeout)
        if code is None:
            self.send_signal(signal.SIGKILL)
            code = await self.wait(timeout)
        if code is None:  # pragma: no cover - a process that survives SIGKILL
            code = self.process.wait(timeout)
        self.returncode = code
        return code


async def _wait_until_healthy(server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"ironcart serve exited with status {server.process.returncode} "
                    f"before it was healthy; stderr:\n{server.stderr_text()}"
                )
            try:
                response = await client.get("/healthz")
            except httpx.TransportError as error:
                last_error = repr(error)
            else:
                if response.status_code == 200:
                    return
                last_error = f"/healthz answered {response.status_code}"
            await anyio.sleep(0.1)
    raise TimeoutError(
        f"ironcart serve was not healthy within {timeout} s ({last_error}); "
        f"stderr:\n{server.stderr_text()}"
    )


@asynccontextmanager
async def running_server(
    database_url: str,
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    serve_args: Sequence[str] = (),
    startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
    port: int | None = None,
    migrate: bool = True,
) -> AsyncIterator[ServerProcess]:
    """Migrate, start `ironcart serve --port <free>`, wait for /healthz; always stop at the end.

    `port` reuses a known port (a restart in a crash test); by default a free one is chosen.
    `migrate=False`: the test migrated the database(s) already (restarts, a second process).
    """
    environment = server_environment(database_url, env)
    migrated = await run_cli("migrate", env=environment) if migrate else None
    if migrated is not None and migrated.returncode != 0:
        raise RuntimeError(f"ironcart migrate failed:\n{output_of(migrated)}")
    port = port or free_port()
    stderr_path = log_dir / f"ironcart-serve-{port}.stderr.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [str(IRONCART), "serve", "--host", "127.0.0.1", "--port", str(port), *serve_args],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = ServerProcess(process=process, port=port, env=environment, stderr_path=stderr_path)
    try:
        await _wait_until_healthy(server, startup_timeout)
        yield server
    finally:
        # Shielded, so that a cancelled or failed test still never leaves the process behind.
        with anyio.CancelScope(shield=True):
            await server.stop()
