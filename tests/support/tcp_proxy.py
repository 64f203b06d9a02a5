"""A TCP proxy that tests can cut and restore, to take a real server "away" and back.

async with TcpProxy("127.0.0.1", 5432) as proxy:
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/db"
    await proxy.cut()      # open connections are aborted, new ones refused
    await proxy.restore()  # listening again on the same port
    proxy.stall()          # connections accepted and kept, but no byte goes through
    await proxy.restore()  # traffic flows again
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType
from typing import Self

CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[object]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        """Listen on a free port (chosen once: `restore()` listens on the same one)."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        self.port = int(sockname[1])

    async def cut(self) -> None:
        """Stop listening (new connections are refused) and abort every open connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()  # `_accept` ends quietly when cancelled
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        """Listen again on the same port, and let stalled traffic flow again."""
        await self.start()
        self._flowing.set()

    def stall(self) -> None:
        """Black-hole the traffic: connections stay open (and new ones are accepted) but no
        byte goes through until `restore()`, like a network partition without resets."""
        self._flowing.clear()

    async def aclose(self) -> None:
        await self.cut()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()
            upstream_reader, upstream = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            self._writers.add(upstream)
            _set_nodelay(writer)
            _set_nodelay(upstream)
            await asyncio.gather(self._pump(reader, upstream), self._pump(upstream_reader, writer))
        except (OSError, asyncio.CancelledError):
            # Target unreachable, or cut: end quietly. The handler task must not finish
            # cancelled, or asyncio's stream machinery logs the cancellation as an error.
            pass
        finally:
            for stream in (writer, upstream):
                if stream is not None:
                    self._writers.discard(stream)
                    stream.transport.abort()
            if task is not None:
                self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy bytes one way until end of stream, then half-close the other side."""
        try:
            while data := await reader.read(CHUNK):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            writer.transport.abort()


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
