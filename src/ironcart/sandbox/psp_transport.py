"""A lean httpx transport for the webhooks: HTTP/1.1 on kept-alive asyncio connections.

Why: at the benchmark's rate (~400 webhooks/s) the default httpcore transport costs 1-3 ms of
CPU per request on our machines (more with more connections), so the sandbox fell behind
and took the CPU from its API. This one costs ~0.1 ms. It speaks only what a webhook needs:
plain `http://`, a request with a body, a response with Content-Length, chunked or read-to-close
body. Anything else (`https://`) goes through the default transport.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress

import httpx

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
MAX_HEAD_BYTES = 64 * 1024
NO_BODY_STATUSES = frozenset({204, 304})


class _StaleConnection(Exception):
    """A kept-alive connection the server had closed: nothing was received, send again."""


class KeepAliveTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, timeout: float, max_idle_per_host: int = 32) -> None:
        self._timeout = timeout
        self._max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        self._fallback: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            if self._fallback is None:
                self._fallback = httpx.AsyncHTTPTransport()
            return await self._fallback.handle_async_request(request)
        payload = _serialize(request, await request.aread())
        origin = (request.url.host, request.url.port or 80)
        try:
            async with asyncio.timeout(self._timeout):
                return await self._exchange(request, origin, payload)
        except TimeoutError:
            raise httpx.ReadTimeout("webhook receiver did not answer", request=request) from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            raise httpx.ReadError(repr(error), request=request) from None
        except ValueError as error:
            raise httpx.RemoteProtocolError(repr(error), request=request) from None

    async def _exchange(
        self, request: httpx.Request, origin: tuple[str, int], payload: bytes
    ) -> httpx.Response:
        idle = self._idle.setdefault(origin, [])
        while idle:  # a kept-alive connection, unless the server has closed them all
            connection = idle.pop()
            with suppress(_StaleConnection):
                return await self._send(request, origin, connection, payload, reused=True)
        try:
            connection = await asyncio.open_connection(*origin)
        except OSError as error:
            raise httpx.ConnectError(repr(error), request=request) from None
        return await self._send(request, origin, connection, payload, reused=False)

    async def _send(
        self,
        request: httpx.Request,
        origin: tuple[str, int],
        connection: Connection,
        payload: bytes,
        *,
        reused: bool,
    ) -> httpx.Response:
        reader, writer = connection
        try:
            writer.write(payload)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status, headers, keep_alive = _parse_head(head)
            body, closed = await _read_body(reader, status, headers)
        except BaseException as error:
            writer.close()
            if reused and isinstance(error, (OSError, asyncio.IncompleteReadError)):
                raise _StaleConnection from error
            raise
        if keep_alive and not closed and len(self._idle[origin]) < self._max_idle:
            self._idle[origin].append(connection)
        else:
            writer.close()
        return httpx.Response(status, headers=list(headers.items()), content=body, request=request)

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for _reader, writer in connections:
                writer.close()
        self._idle.clear()
        if self._fallback is not None:
            await self._fallback.aclose()


def _serialize(request: httpx.Request, body: bytes) -> bytes:
    target = request.url.raw_path
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), target)]
    lines += [b"%s: %s" % (name, value) for name, value in request.headers.raw]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """(status, lower-cased headers, whether the server keeps the connection open)."""
    status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x answer: {status_line!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if not status.isdigit() or int(status) < 200:  # no Expect: 100-continue is ever sent
        raise ValueError(f"unexpected status line {status_line!r}")
    closing = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
    return int(status), headers, not closing


async def _read_body(
    reader: asyncio.StreamReader, status: int, headers: dict[str, str]
) -> tuple[bytes, bool]:
    """The body, and whether it ended with the connection (which then cannot be reused)."""
    if status in NO_BODY_STATUSES:
        return b"", False
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunks(reader), False
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"])), False
    return await reader.read(), True


async def _read_chunks(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
        pass
    return b"".join(chunks)
