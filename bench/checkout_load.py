"""The checkout load generator of `make bench` (cases checkout and checkout-hot).

Each buyer (one customer account, one keep-alive HTTP/1.1 connection to 127.0.0.1) loops over
the whole purchase, one request at a time:

    POST /api/v1/carts                    the customer's open cart (a new one after a checkout)
    POST /api/v1/carts/{id}/items         one unit of a random SKU of the list
    POST /api/v1/orders                   {"cart_id": ...} with a fresh Idempotency-Key

until the measured window ends. Only what completes inside the window counts: the paid orders
(201) per second, the latency of the order request and of the whole flow (both of flows that
ended in a paid order), the answers by route and status. A flow cut by the end of the window is
finished (bounded) and not counted. Before the window, every buyer's open cart is emptied.

A lean client: raw HTTP/1.1 on asyncio streams (uvloop when installed), no HTTP library, so
that it leaves the CPU to the server; it reports its own CPU time over the window.

    python bench/checkout_load.py --base-url URL --buyers FILE --skus FILE --duration S
        --output FILE [--timeout 30]

--buyers: one bearer token a line; --skus: one SKU a line. The result is JSON in --output.
"""

# ruff: noqa: T201 - a command-line tool

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ADDRESS = {
    "name": "Bench Buyer",
    "line1": "1 Load Street",
    "city": "London",
    "postal_code": "EC1A 1BB",
    "country": "GB",
}
GRACE_SECONDS = 30.0  # at most this long after the window to let in-flight flows finish


class ProtocolError(Exception):
    """An answer this client cannot read (or a closed connection)."""


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects after an error or `Connection: close`."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._host_header = f"Host: {host}:{port}\r\n".encode()

    async def request(
        self, method: str, path: str, headers: bytes, body: bytes = b""
    ) -> tuple[int, bytes]:
        try:
            return await asyncio.wait_for(self._exchange(method, path, headers, body), self.timeout)
        except (OSError, TimeoutError, ProtocolError, asyncio.IncompleteReadError):
            self.close()
            raise

    async def _exchange(
        self, method: str, path: str, headers: bytes, body: bytes
    ) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None  # noqa: S101
        head = (
            f"{method} {path} HTTP/1.1\r\n".encode()
            + self._host_header
            + headers
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        self._writer.write(head + body)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        payload = await (self._chunked() if chunked else self._reader.readexactly(length))
        if close:
            self.close()
        return status, payload

    async def _chunked(self) -> bytes:
        assert self._reader is not None  # noqa: S101
        parts = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass
class Tally:
    """What the buyers saw inside the window."""

    start: float = 0.0
    end: float = 0.0
    paid: int = 0
    requests: int = 0
    order_ms: list[float] = field(default_factory=list)
    flow_ms: list[float] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)  # "route status" -> count
    socket_errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def inside(self, moment: float) -> bool:
        return self.start <= moment <= self.end

    def note(self, route: str, status: int, body: bytes, finished: float) -> None:
        if not self.inside(finished):
            return
        self.requests += 1
        self.answers[f"{route} {status}"] += 1
        if status >= 300 and len(self.error_samples) < 5:
            self.error_samples.append(f"{route} {status}: {body[:300].decode(errors='replace')}")


class Buyer:
    def __init__(
        self, connection: Connection, token: str, skus: list[str], tally: Tally, seed: int
    ) -> None:
        self.http = connection
        self.tally = tally
        self.skus = skus
        self.random = random.Random(seed)  # noqa: S311 - load, not security
        self.auth = f"Authorization: Bearer {token}\r\n".encode()
        self.json = self.auth + b"Content-Type: application/json\r\n"

    async def open_cart(self) -> dict[str, Any]:
        status, body = await self.http.request("POST", "/api/v1/carts", self.auth)
        if status not in (200, 201):
            raise ProtocolError(f"POST /api/v1/carts answered {status}: {body[:300]!r}")
        cart: dict[str, Any] = json.loads(body)
        return cart

    async def empty_cart(self) -> None:
        """Before the window: the open cart left by an earlier run loses its lines."""
        cart = await self.open_cart()
        for line in cart.get("lines", []):
            sku = urllib.parse.quote(line["sku"], safe="")
            await self.http.request("DELETE", f"/api/v1/carts/{cart['id']}/items/{sku}", self.auth)

    async def run(self, stop_at: float) -> None:
        while time.perf_counter() < stop_at:
            try:
                await self.flow()
            except (
                OSError,
                TimeoutError,
                ProtocolError,
                asyncio.IncompleteReadError,
                ValueError,  # an answer that is not the JSON expected
                KeyError,
            ) as error:
                now = time.perf_counter()
                if self.tally.inside(now):
                    self.tally.socket_errors += 1
                    if len(self.tally.error_samples) < 5:
                        self.tally.error_samples.append(f"socket: {type(error).__name__} {error}")
                await asyncio.sleep(0.05)

    async def flow(self) -> None:
        tally = self.tally
        began = time.perf_counter()
        status, body = await self.http.request("POST", "/api/v1/carts", self.auth)
        tally.note("POST /carts", status, body, time.perf_counter())
        if status not in (200, 201):
            return
        cart_id = json.loads(body)["id"]
        sku = self.skus[self.random.randrange(len(self.skus))]
        add = json.dumps({"sku": sku, "quantity": 1}).encode()
        status, body = await self.http.request(
            "POST", f"/api/v1/carts/{cart_id}/items", self.json, add
        )
        tally.note("POST /carts/{id}/items", status, body, time.perf_counter())
        if status != 200:
            return
        order = json.dumps(
            {
                "cart_id": cart_id,
                "shipping_address": ADDRESS,
                "shipping_method": "standard",
                "payment": {"card_token": "tok_visa"},
            }
        ).encode()
        key = f"Idempotency-Key: {uuid.uuid4()}\r\n".encode()
        sent = time.perf_counter()
        status, body = await self.http.request("POST", "/api/v1/orders", self.json + key, order)
        done = time.perf_counter()
        tally.note("POST /orders", status, body, done)
        if status == 201 and tally.inside(done):
            tally.paid += 1
            tally.order_ms.append((done - sent) * 1000)
            tally.flow_ms.append((done - began) * 1000)
        elif status != 201:
            # The line stays in the open cart: take it out so that every order has one line.
            path = f"/api/v1/carts/{cart_id}/items/{urllib.parse.quote(sku, safe='')}"
            await self.http.request("DELETE", path, self.auth)


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main_async(
    args: argparse.Namespace, tokens: list[str], skus: list[str]
) -> dict[str, Any]:
    url = urllib.parse.urlsplit(args.base_url)
    tally = Tally()
    buyers = [
        Buyer(Connection("127.0.0.1", url.port or 80, args.timeout), token, skus, tally, seed)
        for seed, token in enumerate(tokens, start=args.seed)
    ]
    await asyncio.gather(*(buyer.empty_cart() for buyer in buyers))
    cpu_before = _cpu_seconds()
    tally.start = time.perf_counter()
    tally.end = tally.start + args.duration
    print("window open", flush=True)  # the harness measures CPU use from here
    tasks = [asyncio.create_task(buyer.run(tally.end)) for buyer in buyers]
    await asyncio.sleep(args.duration)
    cpu_window = _cpu_seconds() - cpu_before
    _done, late = await asyncio.wait(tasks, timeout=GRACE_SECONDS)
    for task in late:
        task.cancel()
    for buyer in buyers:
        buyer.http.close()
    return {
        "duration_s": args.duration,
        "buyers": len(buyers),
        "skus": len(skus),
        "paid": tally.paid,
        "orders_per_s": tally.paid / args.duration,
        "requests": tally.requests,
        "requests_per_s": tally.requests / args.duration,
        "order_p50_ms": percentile(tally.order_ms, 0.50),
        "order_p99_ms": percentile(tally.order_ms, 0.99),
        "flow_p50_ms": percentile(tally.flow_ms, 0.50),
        "flow_p99_ms": percentile(tally.flow_ms, 0.99),
        "answers": dict(sorted(tally.answers.items())),
        "non2xx": sum(n for k, n in tally.answers.items() if not k.endswith((" 200", " 201"))),
        "socket_errors": tally.socket_errors,
        "error_samples": tally.error_samples,
        "cpu_seconds": cpu_window,
        "cpu_cores": cpu_window / args.duration,
        "unfinished_after_grace": len(late),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--buyers", required=True, help="file: one bearer token a line")
    parser.add_argument("--skus", required=True, help="file: one SKU a line")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    if urllib.parse.urlsplit(args.base_url).hostname != "127.0.0.1":
        raise SystemExit("checkout_load.py sends traffic to 127.0.0.1 only")
    tokens = Path(args.buyers).read_text().split()
    skus = Path(args.skus).read_text().split()
    if not tokens or not skus:
        raise SystemExit("no buyers or no SKUs")
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main_async(args, tokens, skus))
    else:
        result = uvloop.run(main_async(args, tokens, skus))
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "answers"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
