"""The integration suite's other wirings: every context as its own app over loopback HTTP.

With `IRONCART_TEST_WIRING=http`, `running_app` (tests/support/app.py) first starts one
`create_app(..., service=<context>)` per context, each with its own container (engines,
pools, caches, bus) and its lifespan entered, served by uvicorn on 127.0.0.1 in the test's
event loop, all on the test's database; then hands the test an "all" app whose every
cross-context port is the HTTP client of those apps (`IRONCART_SERVICES__<CONTEXT>__URL`
in production). Each app authenticates with one service client created on that database
beforehand (what `ironcart client create --scope service:<context> ...` does). Only the
"all" app runs the background jobs (relay, recovery, expiry), as one worker would.

With `IRONCART_TEST_WIRING=processes` each context's app runs in a process of its own
instead: a child forked from tests/support/fork_server.py (IronCart imported once; the
child builds its app from the same settings and serves it with uvicorn as `ironcart serve`
does), stopped by its pid when the test ends. Only the app under test stays in this process.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ironcart.app import create_app
from ironcart.bootstrap import bootstrap
from ironcart.platform.settings import Settings
from tests.support.services import CONTEXTS, serving

WIRINGS = {
    "in-process": "in-process (every context in the app under test)",
    "http": "http (every context its own app over loopback HTTP; the app under test calls them)",
    "processes": "processes (every context its own OS process over loopback HTTP; the app "
    "under test calls them)",
}
WIRING = os.environ.get("IRONCART_TEST_WIRING", "in-process")
if WIRING not in WIRINGS:
    raise RuntimeError(f"IRONCART_TEST_WIRING={WIRING!r}: choose one of {sorted(WIRINGS)}")
OVER_HTTP = WIRING in {"http", "processes"}
IN_PROCESSES = WIRING == "processes"
ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 30.0
STOP_SECONDS = 10.0
# Each context's own pool (and as many again in overflow): eight pools on the test's
# database, two xdist workers and other suites on one PostgreSQL (max_connections=100).
CONTEXT_POOL_SIZE = 4
CHECKOUT_QUEUE = 60.0
PATIENCE = {
    "slow_call_seconds": 60.0,
    "attempt_timeout_seconds": 30.0,
    "deadline_seconds": 60.0,
    # A crowd test's 200 buyers call through one bulkhead per dependency: queue, not refuse.
    "queue_seconds": 30.0,
}


@asynccontextmanager
async def contexts_over_http(
    settings: Settings,
) -> AsyncIterator[tuple[Settings, dict[str, FastAPI]]]:
    """Each context's app serving on its own port until the block ends; yields the settings
    of an "all" app whose ports call them, and those apps by context."""
    # XA checkout sells stock in a branch on inventory's database: the settings refuse an
    # inventory URL there (as in production), so inventory stays in-process for XA.
    names = [name for name in CONTEXTS if name != "inventory" or settings.checkout_txn != "xa"]
    if IN_PROCESSES:
        async with _contexts_in_processes(settings, names) as wired:
            yield wired, {}
        return
    sockets = {name: _bound_socket() for name in names}
    urls = {name: f"http://127.0.0.1:{sock.getsockname()[1]}" for name, sock in sockets.items()}
    credentials = await _service_client(settings)
    async with AsyncExitStack() as stack:
        for sock in sockets.values():
            stack.callback(sock.close)
        apps: dict[str, FastAPI] = {}
        for name in names:
            own = _wired(settings, urls, credentials, without=name, background_jobs=False)
            apps[name] = app = create_app(own, service=name)
            await stack.enter_async_context(app.router.lifespan_context(app))
        await _serve_all(stack, [serving(apps[name], sock=sockets[name]) for name in names])
        yield _wired(settings, urls, credentials), apps


def _bound_socket() -> socket.socket:
    """A socket on a free loopback port (uvicorn listens on it): the URL is known up front."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def _service_client(settings: Settings) -> dict[str, str]:
    """A service client allowed every context's internal API, and the first signing key."""
    container = bootstrap(settings)
    try:
        await container.identity.ensure_signing_key()
        scopes = frozenset(f"service:{name}" for name in CONTEXTS)
        client_id, secret = await container.identity.create_client(
            name="test-wiring", scopes=scopes
        )
    finally:
        await container.aclose()
    return {"service_client_id": client_id, "service_client_secret": secret}


def _wired(
    settings: Settings,
    urls: Mapping[str, str],
    credentials: Mapping[str, str],
    *,
    without: str | None = None,
    background_jobs: bool | None = None,
) -> Settings:
    """`settings` calling the other contexts at `urls` (validated as `load_settings` would)."""
    values: dict[str, Any] = settings.model_dump()
    values["services"] = {
        name: {"read_timeout_seconds": PATIENCE["attempt_timeout_seconds"], "url": url}
        for name, url in urls.items()
        if name != without
    }
    values.update(credentials)
    values["resilience"] = _patient_with(urls, values["resilience"])
    if "checkout_queue_seconds" not in settings.ordering.model_fields_set:
        # A checkout makes six calls to services served by this same event loop: a crowd
        # drains several times slower than in one app, and would outwait the default queue.
        values["ordering"] = {**values["ordering"], "checkout_queue_seconds": CHECKOUT_QUEUE}
    if background_jobs is not None:  # a context's own app
        values["server"] = {**values["server"], "background_jobs": background_jobs}
        values["database_pool_size"] = min(values["database_pool_size"], CONTEXT_POOL_SIZE)
        # Event-loop lag is the shedding signal, and these apps share the test's loop: its
        # lag measures the test process, not the service (the app under test still sheds).
        values["admission"] = {**values["admission"], "shedding_enabled": False}
    return Settings.model_validate(values)


def _patient_with(urls: Mapping[str, str], resilience: dict[str, Any]) -> dict[str, Any]:
    """Calls to the contexts judged on failures, not on time (where the test sets nothing):
    eight apps share this event loop, and two cores with whatever else the machine runs, so
    a call's latency measures the machine, not the callee. Errors still open the breakers."""
    dependencies = dict(resilience["dependencies"])
    for name in urls:
        overrides = dict(dependencies.get(name, {}))
        for key, seconds in PATIENCE.items():
            if overrides.get(key) is None:
                overrides[key] = seconds
        dependencies[name] = overrides
    return {**resilience, "dependencies": dependencies}


async def _serve_all(
    stack: AsyncExitStack, servers: list[AbstractAsyncContextManager[str]]
) -> None:
    """Start the servers together; the stack stops them together (uvicorn polls its exit
    flag every 0.1 s: one after another, seven would add most of a second)."""
    started = await asyncio.gather(
        *(server.__aenter__() for server in servers), return_exceptions=True
    )
    running = [s for s, outcome in zip(servers, started, strict=True) if isinstance(outcome, str)]

    async def stop() -> None:
        await asyncio.gather(*(server.__aexit__(None, None, None) for server in running))

    stack.push_async_callback(stop)
    for outcome in started:
        if isinstance(outcome, BaseException):
            raise outcome


@asynccontextmanager
async def _contexts_in_processes(settings: Settings, names: list[str]) -> AsyncIterator[Settings]:
    """Each context forked into its own process; yields the settings of the app under test."""
    ports = {name: _free_port() for name in names}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    credentials = await _service_client(settings)
    logs = Path(tempfile.mkdtemp(prefix="ironcart-services-"))
    pids: dict[str, int] = {}
    try:
        for name in names:
            own = _wired(settings, urls, credentials, without=name, background_jobs=False)
            pids[name] = _fork_server().fork(name, ports[name], own, logs / f"{name}.log")
        await asyncio.gather(*(_healthy(name, ports[name], pids[name], logs) for name in names))
        yield _wired(settings, urls, credentials)
    finally:
        await asyncio.gather(*(_stop(pid) for pid in pids.values()))
        shutil.rmtree(logs, ignore_errors=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _healthy(name: str, port: int, pid: int, logs: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        with contextlib.suppress(OSError):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        if not _alive(pid) or time.monotonic() > deadline:
            path = logs / f"{name}.log"
            log = path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"
            raise RuntimeError(f"service {name} (pid {pid}) did not start:\n{log}")
        await asyncio.sleep(0.02)


async def _stop(pid: int) -> None:
    """SIGTERM (uvicorn drains), SIGKILL if it lingers; the fork server reaps it."""
    for signum, seconds in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, STOP_SECONDS)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + seconds
        while _alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if not _alive(pid):
            return


class _ForkServer:
    """tests/support/fork_server.py, started on first use; ends with this process."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fork_server"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        atexit.register(self.close)

    def fork(self, service: str, port: int, settings: Settings, log: Path) -> int:
        """A child serving `service` on `port`; its pid (answered once it is forked)."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        request = {
            "service": service,
            "port": port,
            "settings": settings.model_dump(mode="json"),
            "log": str(log),
        }
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        answer = self._process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the fork server exited ({self._process.poll()})")
        pid: int = json.loads(answer)["pid"]
        return pid

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)


_server: _ForkServer | None = None


def _fork_server() -> _ForkServer:
    global _server  # one per test process, started on first use
    if _server is None or _server._process.poll() is not None:
        _server = _ForkServer()
    return _server
