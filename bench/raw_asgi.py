"""The database-read ceiling: a bare ASGI app (no framework), one asyncpg primary-key SELECT.

GET /items/<id> -> the row of `bench.items` as JSON (404 if absent). GET /healthz -> ok.
Each worker process opens its own asyncpg pool in the ASGI lifespan (BENCH_RAW_DSN,
BENCH_RAW_POOL_SIZE). Served by uvicorn or granian: `bench/run.py` starts it.
"""

from __future__ import annotations

import os
from typing import Any

import asyncpg
import orjson

DSN = os.environ.get("BENCH_RAW_DSN", "postgresql://postgres@127.0.0.1:5432/ironcart_bench")
POOL_SIZE = int(os.environ.get("BENCH_RAW_POOL_SIZE", "10"))
QUERY = "SELECT id, sku, name, price_cents, stock, created_at FROM bench.items WHERE id = $1"

_JSON = [(b"content-type", b"application/json")]
_NOT_FOUND = b'{"title":"Not found","status":404}'
_pool: asyncpg.Pool | None = None


async def _lifespan(receive: Any, send: Any) -> None:
    global _pool
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                _pool = await asyncpg.create_pool(DSN, min_size=POOL_SIZE, max_size=POOL_SIZE)
            except Exception as error:  # noqa: BLE001 - reported to the server, which exits
                await send({"type": "lifespan.startup.failed", "message": repr(error)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _pool is not None:
                await _pool.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if path == "/healthz":
        await _respond(send, 200, b'{"status":"ok"}')
        return
    prefix, _, ident = path.rpartition("/")
    if prefix != "/items" or not ident.isdigit() or _pool is None:
        await _respond(send, 404, _NOT_FOUND)
        return
    row = await _pool.fetchrow(QUERY, int(ident))
    if row is None:
        await _respond(send, 404, _NOT_FOUND)
        return
    await _respond(send, 200, orjson.dumps(dict(row)))
