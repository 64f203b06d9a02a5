"""nginx in front of two `ironcart serve --service cart` processes on one PostgreSQL: one is
SIGKILLed under load, and no client can tell, except for the POSTs it was executing.

20 concurrent clients mix POST /api/v1/carts (creates an anonymous cart: not idempotent) and
GET /api/v1/carts/{id} (idempotent) through nginx for 10 s; one instance is killed after 3 s.

- Every GET succeeds: nginx passes a GET that failed on the dead instance to the live one.
- A POST fails only if it was in flight on the killed instance: nginx does not replay it (it
  may have been executed) and answers its own 502 problem+json at once, never a hang or a
  reset connection. Every such failure ends inside the detection window, [kill, kill +
  fail_timeout]: a POST that reaches nginx later is sent to the live instance, or to the dead
  one, refused there before any byte of it arrived, and then passed on.
- After the window everything succeeds, and every cart answered 201 is in the database.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from ironcart.deployment.nginx import NginxOptions
from tests.conftest import unavailable
from tests.support.databases import ServerUnavailable
from tests.support.nginx import NginxProcess, require_nginx, running_nginx, write_config
from tests.support.server import ServerProcess, free_port, running_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CLIENTS = 20
LOAD_SECONDS = 10.0
KILL_AFTER_SECONDS = 3.0
FAIL_TIMEOUT_SECONDS = 2.0
REQUEST_TIMEOUT_SECONDS = 8.0  # a "hang" is anything slower: httpx raises, the test fails
GET_SHARE = 0.6
SERVER_ENV = {
    # The instances' own admission control would answer 429/503 to this load from one IP on a
    # shared machine; this test is about the edge, so they only serve.
    "IRONCART_ADMISSION__RATE_LIMITS_ENABLED": "false",
    "IRONCART_ADMISSION__SHEDDING_ENABLED": "false",
    "IRONCART_SERVER__BACKGROUND_JOBS": "false",
}


@dataclass(frozen=True)
class Outcome:
    method: str
    started: float
    ended: float
    status: int | None = None
    content_type: str = ""
    error: str | None = None
    cart: tuple[str, str] | None = None  # a POST's new cart: (id, token)


@dataclass
class Load:
    """What every client saw, and the carts answered 201 (id, token)."""

    outcomes: list[Outcome]
    created: list[tuple[str, str]]
    kill_at: float = 0.0


@pytest.fixture
def nginx() -> str:
    try:
        return require_nginx()
    except ServerUnavailable as error:
        unavailable(error)
        raise AssertionError("unreachable") from error  # unavailable() fails or skips


@pytest.fixture
async def two_carts_behind_nginx(
    nginx: str, postgres_url: str, tmp_path: Path
) -> AsyncIterator[tuple[NginxProcess, ServerProcess, ServerProcess]]:
    async with AsyncExitStack() as stack:
        first, second = await _start_both(stack, postgres_url, tmp_path)
        port = free_port()
        options = NginxOptions(
            prefix=tmp_path / "nginx",
            listen=f"127.0.0.1:{port}",
            user="root",  # tmp_path is root's: workers as nobody could not write temp files
            worker_processes=1,
            max_fails=1,
            fail_timeout_seconds=FAIL_TIMEOUT_SECONDS,
        )
        pools = {"cart": (f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}")}
        config = write_config(pools, options)
        async with running_nginx(nginx, config, options, port) as edge:
            yield edge, first, second


async def _start_both(
    stack: AsyncExitStack, database_url: str, log_dir: Path
) -> tuple[ServerProcess, ServerProcess]:
    """Both instances at once (the fixture's database is migrated already). Both attempts end
    before any error is raised, so whatever started is in `stack` and gets stopped."""
    started = await asyncio.gather(
        *(
            stack.enter_async_context(
                running_server(
                    database_url,
                    log_dir,
                    env=SERVER_ENV,
                    serve_args=("--service", "cart"),
                    migrate=False,
                )
            )
            for _ in range(2)
        ),
        return_exceptions=True,
    )
    for result in started:
        if isinstance(result, BaseException):
            raise result
    first, second = started
    assert isinstance(first, ServerProcess)
    assert isinstance(second, ServerProcess)
    return first, second


async def _request(client: httpx.AsyncClient, method: str, url: str, **kwargs: object) -> Outcome:
    started = time.monotonic()
    try:
        response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as error:
        return Outcome(method, started, time.monotonic(), error=repr(error))
    ended = time.monotonic()
    cart = None
    if method == "POST" and response.status_code == 201:
        cart = (response.json()["id"], response.json()["token"])
    content_type = response.headers.get("content-type", "")
    return Outcome(method, started, ended, response.status_code, content_type, cart=cart)


async def _client(client: httpx.AsyncClient, load: Load, stop_at: float, seed: int) -> None:
    """One client: GET a cart made earlier (with its token) or POST a new one, until stop_at."""
    rng = random.Random(seed)
    while time.monotonic() < stop_at:
        if load.created and rng.random() < GET_SHARE:
            cart_id, token = rng.choice(load.created)
            outcome = await _request(
                client, "GET", f"/api/v1/carts/{cart_id}", headers={"X-Cart-Token": token}
            )
        else:
            outcome = await _request(client, "POST", "/api/v1/carts")
            if outcome.cart is not None:
                load.created.append(outcome.cart)
        load.outcomes.append(outcome)


async def _load_and_kill(edge: NginxProcess, victim: ServerProcess) -> Load:
    load = Load(outcomes=[], created=[])
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(
        base_url=edge.base_url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits
    ) as client:
        stop_at = time.monotonic() + LOAD_SECONDS
        clients = [asyncio.create_task(_client(client, load, stop_at, n)) for n in range(CLIENTS)]
        await asyncio.sleep(KILL_AFTER_SECONDS)
        load.kill_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        await asyncio.gather(*clients)
    assert await victim.wait(5.0) == -signal.SIGKILL
    return load


async def _carts_in_database(database_url: str, ids: list[str]) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        found: int = await connection.fetchval(
            "SELECT count(*) FROM cart_carts WHERE id = ANY($1::varchar[])", ids
        )
    finally:
        await connection.close()
    return found


async def test_killing_one_instance_under_load_fails_no_get_and_only_in_flight_posts(
    two_carts_behind_nginx: tuple[NginxProcess, ServerProcess, ServerProcess], postgres_url: str
) -> None:
    edge, victim, survivor = two_carts_behind_nginx

    load = await _load_and_kill(edge, victim)

    window_end = load.kill_at + FAIL_TIMEOUT_SECONDS
    gets = [o for o in load.outcomes if o.method == "GET"]
    posts = [o for o in load.outcomes if o.method == "POST"]
    assert [o.error for o in load.outcomes if o.error] == []  # no hang, no reset, no timeout
    assert len(gets) > 50, len(gets)  # enough load to mean something, on a shared machine
    assert len(posts) > 50, len(posts)
    assert {o.status for o in gets} == {200}
    failed = [o for o in posts if o.status != 201]
    assert {o.status for o in failed} <= {502, 503, 504}
    assert {o.content_type for o in failed} <= {"application/problem+json"}
    assert [o for o in failed if not load.kill_at <= o.ended <= window_end] == []
    after_window = [o for o in load.outcomes if o.started > window_end]
    assert len(after_window) > 20
    assert {o.status for o in after_window} == {200, 201}
    ids = [cart_id for cart_id, _token in load.created]
    assert len(ids) == len(set(ids)) == len([o for o in posts if o.status == 201])
    assert await _carts_in_database(postgres_url, ids) == len(ids)
    _assert_nginx_failed_over(edge, victim, survivor, load)


def _assert_nginx_failed_over(
    edge: NginxProcess, victim: ServerProcess, survivor: ServerProcess, load: Load
) -> None:
    """The access log shows both instances serving, then requests passed from dead to live."""
    dead, alive = f"127.0.0.1:{victim.port}", f"127.0.0.1:{survivor.port}"
    upstreams = [str(line["upstream_addr"]) for line in edge.access_log()]
    assert len(upstreams) == len(load.outcomes)
    assert upstreams.count(dead) > 10
    assert upstreams.count(alive) > 10
    assert any(addresses.startswith(f"{dead}, {alive}") for addresses in upstreams)
