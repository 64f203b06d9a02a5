"""uvicorn's httptools protocol, sending a response's head and body in one write.

uvicorn writes the status line and headers when the app sends `http.response.start`, and the
body in a second write. A process killed between the two leaves a proxy with a head and no
body: nginx has already passed the head on, so it can neither retry the request on another
instance nor answer its own 502, and the client sees a truncated response. Holding the head
until the body's write (or the end of the event-loop tick, for a response the app streams or
that has no body) means a killed instance either sent a whole response or nothing at all, and
nginx handles "nothing" (see deploy/nginx/README.md). It also saves a syscall per response.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_RESPONSE_HEAD = b"HTTP/1."


class HeadHoldingTransport:
    """A transport whose writes of a response head wait for the next write or loop tick.

    Everything else is the wrapped transport's: flow control, buffer limits and extra info.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held = b""
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held:
            data = self._take_held() + bytes(data)
        elif bytes(data[: len(_RESPONSE_HEAD)]) == _RESPONSE_HEAD:
            self._held = bytes(data)
            self._flush_handle = self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def writelines(self, lines: list[bytes]) -> None:
        self.write(b"".join(lines))

    def flush(self) -> None:
        """Write a held head now (the body did not follow in the same tick)."""
        if self._held and not self._transport.is_closing():
            self._transport.write(self._take_held())
        self._held = b""

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._take_held()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held)

    def _take_held(self) -> bytes:
        held, self._held = self._held, b""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        return held

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeadHoldingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `HeadHoldingTransport` (`serve` uses this one)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        holding = HeadHoldingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, holding))


UVICORN_HTTP = f"{__name__}:{HeadHoldingHttpToolsProtocol.__name__}"
