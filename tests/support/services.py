"""Serve an ASGI app over real HTTP in this process, and run contexts as separate services.

`serving(app)` runs uvicorn on a free 127.0.0.1 port inside the test's event loop (the
app's lifespan is the caller's business: uvicorn's is off) and stops it at the end.
`running_services(...)` starts one `ironcart serve --service <context>` process per
context, in parallel, each told where the others are (`IRONCART_SERVICES__*__URL`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from tests.support.server import STOP_TIMEOUT_SECONDS, ServerProcess, free_port, running_server

CONTEXTS = ("identity", "catalog", "inventory", "cart", "payments", "shipping", "ordering")


class _TestServer(uvicorn.Server):
    """uvicorn, minus its SIGINT/SIGTERM handlers: the test stops it, and servers that start
    and stop in any order would otherwise restore each other's handlers over pytest's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def serving(app: ASGIApp, *, sock: socket.socket | None = None) -> AsyncIterator[str]:
    """`app` on http://127.0.0.1:<free port> until the block ends; yields the base URL.
    `sock`: a socket bound already (its port known before the app is built); closed at the end."""
    port = free_port() if sock is None else int(sock.getsockname()[1])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_config=None, access_log=False
    )
    server = _TestServer(config)
    task = asyncio.create_task(server.serve(sockets=None if sock is None else [sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        if sock is not None:
            sock.close()


def service_urls(ports: Mapping[str, int]) -> dict[str, str]:
    """The `IRONCART_SERVICES__<CONTEXT>__URL` variables for services on these ports."""
    return {
        f"IRONCART_SERVICES__{name.upper()}__URL": f"http://127.0.0.1:{port}"
        for name, port in ports.items()
    }


@asynccontextmanager
async def running_services(
    database_url: str,
    log_dir: Path,
    *,
    env: Mapping[str, str],
    contexts: Sequence[str] = CONTEXTS,
    ports: Mapping[str, int] | None = None,
) -> AsyncIterator[dict[str, ServerProcess]]:
    """One `ironcart serve --service <context>` per context (the database migrated already),
    started in parallel; each knows every other one's URL. All are stopped at the end.
    `ports`: where some contexts must listen (e.g. the PSP's webhook target)."""
    ports = {name: (ports or {}).get(name) or free_port() for name in contexts}
    async with AsyncExitStack() as stack:

        async def start(name: str) -> tuple[str, ServerProcess]:
            others = {other: port for other, port in ports.items() if other != name}
            server = await stack.enter_async_context(
                running_server(
                    database_url,
                    log_dir,
                    env={**env, **service_urls(others)},
                    serve_args=("--service", name),
                    port=ports[name],
                    migrate=False,
                    startup_timeout=60.0,
                )
            )
            return name, server

        # Every start is awaited before a failure is raised, so the stack stops them all.
        started = await asyncio.gather(*(start(name) for name in contexts), return_exceptions=True)
        servers = dict(outcome for outcome in started if not isinstance(outcome, BaseException))
        try:
            for outcome in started:
                if isinstance(outcome, BaseException):
                    raise outcome
            yield servers
        finally:  # all drain at once; the stack then finds them ended (or kills them)
            for server in servers.values():
                server.send_signal(signal.SIGTERM)
            await asyncio.gather(
                *(server.wait(STOP_TIMEOUT_SECONDS) for server in servers.values())
            )
