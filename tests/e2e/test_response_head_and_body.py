"""A server process killed between a response's head and its body sends nothing at all.

A real uvicorn process runs an ASGI app that SIGKILLs its own process right after sending
`http.response.start`, before the body. With `serve`'s protocol the client (nginx, in
production) receives no byte, so nginx may pass an idempotent request to another instance
and answers a POST with its own clean 502. With uvicorn's stock protocol the head is already
on the wire: the client gets a status and a Content-Length, then a closed connection. Both
are run here, so the test shows the difference and cannot pass on a stock server.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from ironcart.platform.http.server_protocol import UVICORN_HTTP
from tests.support.server import free_port

pytestmark = pytest.mark.e2e

APP = textwrap.dedent(
    """
    import os, signal, sys
    import uvicorn

    async def app(scope, receive, send):
        assert scope["type"] == "http"
        body = b'{"ok":true}'
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            for _ in range(3):
                await send({"type": "http.response.body", "body": body + b"\\n",
                            "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        if scope["path"] == "/die":
            os.kill(os.getpid(), signal.SIGKILL)
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http=sys.argv[2],
                lifespan="off", log_level="warning")
    """
)


@contextmanager
def _server(http: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", APP, str(port), http])
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15.0
        while True:
            try:
                httpx.get(f"{base_url}/ready", timeout=1.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield base_url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10.0)


def _die(base_url: str) -> str:
    with pytest.raises(httpx.RemoteProtocolError) as raised:
        httpx.get(f"{base_url}/die", timeout=5.0)
    return str(raised.value)


def test_killed_between_head_and_body_sends_nothing() -> None:
    with _server(UVICORN_HTTP) as base_url:
        assert httpx.get(f"{base_url}/ok").json() == {"ok": True}
        streamed = httpx.get(f"{base_url}/stream")
        assert streamed.text == '{"ok":true}\n' * 3  # a held head still goes out with the body
        head = httpx.head(f"{base_url}/ok", timeout=5.0)  # a head with no body write after it
        assert (head.status_code, head.headers["content-length"]) == (200, "11")
        closing = httpx.get(f"{base_url}/ok", headers={"Connection": "close"})
        assert closing.json() == {"ok": True}
        assert _die(base_url) == "Server disconnected without sending a response."


def test_stock_protocol_sends_a_head_without_its_body() -> None:
    with _server("httptools") as base_url:
        assert "peer closed connection without sending complete message body" in _die(base_url)
