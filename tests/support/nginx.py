"""A real nginx for tests: installed when missing, run on a generated config, stopped by pid.

`require_nginx()` finds the binary or installs the Debian package with
deploy/install-nginx.sh; when neither works it raises `ServerUnavailable` (a failure in CI,
a skip elsewhere, through tests.conftest.unavailable). `running_nginx()` starts nginx in the
foreground on a config from `ironcart.deployment.nginx`, waits for its /healthz, and always
stops it (SIGTERM, then SIGKILL). `echo_upstreams()` stands real HTTP servers in for the
service instances: each answers every request with its own name and what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from ironcart.deployment.nginx import NginxOptions, prepare_prefix, render_config
from tests.support.databases import ServerUnavailable

INSTALLER = Path(__file__).resolve().parents[2] / "deploy" / "install-nginx.sh"
INSTALL_TIMEOUT_SECONDS = 300.0
STARTUP_TIMEOUT_SECONDS = 10.0


def _find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").is_file():
        found = "/usr/sbin/nginx"
    return found


def require_nginx() -> str:
    """The nginx binary, installed with deploy/install-nginx.sh if it is missing."""
    found = _find_nginx()
    if found is not None:
        return found
    try:
        result = subprocess.run(
            [str(INSTALLER)], capture_output=True, timeout=INSTALL_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ServerUnavailable(
            f"nginx: not installed and {INSTALLER.name} failed: {error}"
        ) from error
    found = _find_nginx()
    if found is None:
        output = (result.stdout + result.stderr).decode(errors="replace")[-2000:]
        raise ServerUnavailable(f"nginx: not installed and {INSTALLER.name} failed: {output}")
    return found


def check_config(nginx: str, config: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on a config file (never raises on a failed check)."""
    return subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def write_config(
    pools: Mapping[str, Sequence[str]], options: NginxOptions, name: str = "nginx.conf"
) -> Path:
    """Render the config into its prefix (directories created) and return its path."""
    prepare_prefix(options.prefix)
    path = options.prefix / name
    path.write_text(render_config(pools, options), encoding="utf-8")
    return path


@dataclass
class NginxProcess:
    """A foreground nginx master (its workers are its children)."""

    process: subprocess.Popen[bytes]
    port: int
    prefix: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> list[dict[str, object]]:
        """The JSON lines of the access log written so far."""
        path = self.prefix / "logs" / "access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]

    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text("utf-8", errors="replace") if path.exists() else ""

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (fast shutdown of master and workers), SIGKILL if it lingers."""
        for signum in (signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is None:
                self.process.send_signal(signum)
            deadline = time.monotonic() + timeout
            while self.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.process.poll() is not None:
                return


@asynccontextmanager
async def running_nginx(
    nginx: str, config: Path, options: NginxOptions, port: int
) -> AsyncIterator[NginxProcess]:
    """Start nginx in the foreground on `config`, wait for its /healthz, always stop it."""
    with (options.prefix / "nginx.stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [nginx, "-p", str(options.prefix), "-c", str(config), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = NginxProcess(process=process, port=port, prefix=options.prefix)
    try:
        await _wait_until_healthy(server)
        yield server
    finally:
        await server.stop()


async def _wait_until_healthy(server: NginxProcess) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    async with httpx.AsyncClient(base_url=server.base_url, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                stderr = (server.prefix / "nginx.stderr.log").read_text(errors="replace")
                raise RuntimeError(f"nginx exited: {stderr}\n{server.error_log()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise TimeoutError(
        f"nginx was not healthy in {STARTUP_TIMEOUT_SECONDS} s: {server.error_log()}"
    )


@asynccontextmanager
async def echo_upstreams(names: Sequence[str]) -> AsyncIterator[dict[str, int]]:
    """One HTTP/1.1 server per name on a free port: name -> port. Each answers 200 with JSON
    `{"upstream", "method", "target", "headers"}` (keep-alive, as a service instance)."""
    servers: list[asyncio.Server] = []
    ports: dict[str, int] = {}
    try:
        for name in names:
            server = await asyncio.start_server(_echo_handler(name), "127.0.0.1", 0)
            servers.append(server)
            ports[name] = server.sockets[0].getsockname()[1]
        yield ports
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


def _echo_handler(
    name: str,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await _read_request(reader)) is not None:
                method, target, headers = request
                body = json.dumps(
                    {"upstream": name, "method": method, "target": target, "headers": headers}
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"X-Request-ID: echo-{name}\r\n".encode()
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return handle


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str]] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return method, target, headers
