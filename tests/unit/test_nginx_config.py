"""The generated nginx config: its directives, `nginx -t`, and its routing table through a real
nginx in front of one echo server per context (every route of every context's router must
reach that context's pool; internal and operations paths must not be reachable)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from fastapi.routing import APIRoute

from ironcart.app import SERVICES
from ironcart.cli import main
from ironcart.deployment.nginx import (
    ALL_POOL,
    CONTEXT_ROUTES,
    InvalidNginxSpec,
    NginxOptions,
    parse_instances,
    render_config,
    routed_contexts,
)
from tests.conftest import unavailable
from tests.support.databases import ServerUnavailable
from tests.support.nginx import (
    NginxProcess,
    check_config,
    echo_upstreams,
    require_nginx,
    running_nginx,
    write_config,
)
from tests.support.server import free_port

TWO_CARTS = {"cart": ("127.0.0.1:8001", "127.0.0.1:8002"), "all": ("127.0.0.1:8000",)}


@pytest.fixture(scope="module")
def nginx() -> str:
    try:
        return require_nginx()
    except ServerUnavailable as error:
        unavailable(error)
        raise AssertionError("unreachable") from error  # unavailable() fails or skips


def _options(tmp_path: Path, **overrides: object) -> NginxOptions:
    return NginxOptions(prefix=tmp_path / "nginx", user="root", worker_processes=1, **overrides)  # type: ignore[arg-type]


def _directives(config: str, name: str) -> list[str]:
    """Every `name ...;` directive of the config, without comments."""
    lines = (line.split("#", 1)[0].strip() for line in config.splitlines())
    return [line for line in lines if line.startswith(f"{name} ") and line.endswith(";")]


# parsing ---------------------------------------------------------------------------------


def test_instances_are_parsed_into_pools() -> None:
    pools = parse_instances(
        ["cart=127.0.0.1:8001, 127.0.0.1:8002", "all=app:8000", "cart=[::1]:8003"]
    )

    assert pools == {
        "cart": ("127.0.0.1:8001", "127.0.0.1:8002", "[::1]:8003"),
        "all": ("app:8000",),
    }


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        pytest.param(["cart"], "expected <context>=", id="no-equals"),
        pytest.param(["kitchen=127.0.0.1:1"], "unknown pool 'kitchen'", id="unknown-pool"),
        pytest.param(["cart="], "pool 'cart' has no instances", id="empty-pool"),
        pytest.param(["cart=127.0.0.1"], "is not host:port", id="no-port"),
        pytest.param(["cart=127.0.0.1:70000"], "is not host:port", id="port-out-of-range"),
        pytest.param(["cart=1.2.3.4:80;evil"], "is not host:port", id="directive-injection"),
        pytest.param([], "no instances given", id="no-pools"),
    ],
)
def test_a_bad_pool_is_refused(tmp_path: Path, specs: list[str], message: str) -> None:
    with pytest.raises(InvalidNginxSpec, match=re.escape(message)):
        render_config(parse_instances(specs), _options(tmp_path))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"listen": "0.0.0.0:80 default"}, "listen address", id="listen"),
        pytest.param({"user": "root; daemon off"}, "is not a user name", id="user"),
        pytest.param({"prefix": Path("relative")}, "absolute plain path", id="prefix"),
        pytest.param({"fail_timeout_seconds": 0}, "must be positive", id="duration"),
    ],
)
def test_a_bad_option_is_refused(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    options = {"prefix": tmp_path, **overrides}
    with pytest.raises(InvalidNginxSpec, match=re.escape(message)):
        render_config(TWO_CARTS, NginxOptions(**options))  # type: ignore[arg-type]


# directives ------------------------------------------------------------------------------


def test_contexts_without_a_pool_fall_back_to_all() -> None:
    assert routed_contexts(TWO_CARTS) == {
        context: "cart" if context == "cart" else ALL_POOL for context in CONTEXT_ROUTES
    }
    assert routed_contexts({"cart": ("127.0.0.1:8001",)}) == {"cart": "cart"}


def test_pools_are_least_connection_upstreams_with_passive_checks_and_keepalive(
    tmp_path: Path,
) -> None:
    config = render_config(TWO_CARTS, _options(tmp_path, max_fails=3, fail_timeout_seconds=2.5))

    assert [line.strip() for line in config.splitlines()].count("least_conn;") == 2
    assert _directives(config, "server") == [
        "server 127.0.0.1:8001 max_fails=3 fail_timeout=2500ms;",
        "server 127.0.0.1:8002 max_fails=3 fail_timeout=2500ms;",
        "server 127.0.0.1:8000 max_fails=3 fail_timeout=2500ms;",
    ]
    assert _directives(config, "keepalive") == ["keepalive 32;", "keepalive 32;"]
    assert _directives(config, "keepalive_timeout") == [
        "keepalive_timeout 65s;",
        "keepalive_timeout 4s;",
        "keepalive_timeout 4s;",
    ]
    assert _directives(config, "proxy_http_version") == ["proxy_http_version 1.1;"]
    assert 'proxy_set_header Connection "";' in config


def test_only_requests_that_never_reached_an_instance_are_retried_unless_idempotent(
    tmp_path: Path,
) -> None:
    config = render_config(TWO_CARTS, _options(tmp_path))

    assert _directives(config, "proxy_next_upstream") == [
        "proxy_next_upstream error timeout http_502 http_504;"
    ]
    assert "non_idempotent" not in " ".join(_directives(config, "proxy_next_upstream"))
    assert _directives(config, "proxy_next_upstream_tries") == ["proxy_next_upstream_tries 2;"]
    assert _directives(config, "proxy_intercept_errors") == []  # the app's errors pass through


def test_limits_and_timeouts_are_rendered(tmp_path: Path) -> None:
    options = _options(
        tmp_path,
        client_max_body_bytes=2 * 1024 * 1024,
        connect_timeout_seconds=0.5,
        read_timeout_seconds=15,
        requests_per_second_per_ip=20,
        max_in_flight_per_instance=16,
    )
    config = render_config(TWO_CARTS, options)

    assert _directives(config, "client_max_body_size") == ["client_max_body_size 2m;"]
    assert _directives(config, "proxy_connect_timeout") == ["proxy_connect_timeout 500ms;"]
    assert _directives(config, "proxy_read_timeout") == ["proxy_read_timeout 15s;"]
    assert _directives(config, "limit_req_zone") == [
        "limit_req_zone $binary_remote_addr zone=ironcart_per_ip:10m rate=20r/s;"
    ]
    assert _directives(config, "limit_req_status") == ["limit_req_status 429;"]
    assert _directives(config, "limit_conn_zone") == [
        "limit_conn_zone $ironcart_pool zone=ironcart_in_flight:1m;"
    ]
    assert _directives(config, "limit_conn_status") == ["limit_conn_status 503;"]
    # Per pool, scaled by its instances: two carts share 32, the `all` pool has 16.
    assert set(_directives(config, "limit_conn")) == {
        "limit_conn ironcart_in_flight 32;",
        "limit_conn ironcart_in_flight 16;",
    }
    assert _directives(config, "set").count("set $ironcart_pool cart;") == 2  # "= P" and "P/"


def test_no_in_flight_limit_unless_asked(tmp_path: Path) -> None:
    config = render_config(TWO_CARTS, _options(tmp_path))

    assert _directives(config, "limit_conn_zone") == _directives(config, "limit_conn") == []


def test_everything_nginx_writes_is_under_its_prefix(tmp_path: Path) -> None:
    options = _options(tmp_path)
    config = render_config(TWO_CARTS, options)

    found = re.findall(r"^\s*(?:pid|error_log|access_log|\w+_temp_path) (\S+?)[ ;]", config, re.M)
    paths = [path for path in found if path != "off"]
    assert len(paths) == 8
    assert all(path.startswith(f"{options.prefix}/") for path in paths), paths


# nginx -t --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pools",
    [
        pytest.param({"all": ("127.0.0.1:8000",)}, id="all-only"),
        pytest.param(TWO_CARTS, id="two-carts-and-all"),
        pytest.param({"cart": ("127.0.0.1:8001",)}, id="cart-only"),
        pytest.param(
            {context: (f"127.0.0.1:{8001 + n}",) for n, context in enumerate(CONTEXT_ROUTES)},
            id="every-context",
        ),
    ],
)
def test_generated_config_passes_nginx_t(
    nginx: str, tmp_path: Path, pools: Mapping[str, tuple[str, ...]]
) -> None:
    options = _options(tmp_path, requests_per_second_per_ip=100, max_in_flight_per_instance=8)
    config = write_config(pools, options)

    checked = check_config(nginx, config, tmp_path / "nginx")

    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


def test_the_example_in_deploy_passes_nginx_t(nginx: str, tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "ironcart.conf"
    # The example names /var/lib/ironcart/nginx: point it at a scratch prefix for the check.
    prefix = tmp_path / "prefix"
    for name in ("logs", "tmp"):
        (prefix / name).mkdir(parents=True)
    copy = tmp_path / "ironcart.conf"
    copy.write_text(example.read_text().replace("/var/lib/ironcart/nginx", str(prefix)))

    checked = check_config(nginx, copy, prefix)

    assert checked.returncode == 0, checked.stderr


def test_the_cli_writes_a_config_that_passes_nginx_t(nginx: str, tmp_path: Path) -> None:
    output, prefix = tmp_path / "edge.conf", tmp_path / "edge"
    arguments = ["deploy", "nginx", "--instances", "cart=127.0.0.1:8001,127.0.0.1:8002"]
    arguments += ["--instances", "all=127.0.0.1:8000", "--listen", "127.0.0.1:8080"]
    arguments += ["--prefix", str(prefix), "--output", str(output), "--fail-timeout", "3"]

    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 0, result.output
    assert f"nginx -t -p {prefix} -c {output}" in result.output
    assert "server 127.0.0.1:8002 max_fails=2 fail_timeout=3s;" in output.read_text()
    assert sorted(path.name for path in prefix.iterdir()) == ["logs", "tmp"]
    assert check_config(nginx, output, prefix).returncode == 0


def test_the_cli_refuses_an_unknown_pool_and_writes_nothing(tmp_path: Path) -> None:
    output = tmp_path / "edge.conf"
    arguments = ["deploy", "nginx", "--instances", "kitchen=127.0.0.1:1", "--output", str(output)]

    result = CliRunner().invoke(main, [*arguments, "--prefix", str(tmp_path / "edge")])

    assert result.exit_code == 1
    assert "unknown pool 'kitchen'" in result.output
    assert not output.exists()
    assert not (tmp_path / "edge").exists()


# routing through a real nginx --------------------------------------------------------------


@pytest.fixture
async def routed_nginx(nginx: str, tmp_path: Path) -> AsyncIterator[NginxProcess]:
    """nginx with one echo server per context as its pool, and no `all` pool."""
    async with echo_upstreams(list(CONTEXT_ROUTES)) as ports:
        pools = {context: (f"127.0.0.1:{port}",) for context, port in ports.items()}
        port = free_port()
        options = _options(tmp_path, listen=f"127.0.0.1:{port}", client_max_body_bytes=4096)
        config = write_config(pools, options)
        async with running_nginx(nginx, config, options, port) as server:
            yield server


def _every_route() -> list[tuple[str, str, str]]:
    """(context, method, concrete path) for every route of every context's router."""
    routes: list[tuple[str, str, str]] = []
    for context, routers in SERVICES.items():
        for router in routers:
            for route in router.routes:
                assert isinstance(route, APIRoute)
                path = re.sub(r"\{[^}]+\}", "x-1", route.path)
                routes.extend((context, method, path) for method in sorted(route.methods or ()))
    return routes


@pytest.mark.anyio
async def test_every_route_of_every_context_reaches_its_pool(routed_nginx: NginxProcess) -> None:
    routes = [route for route in _every_route() if not route[2].startswith("/internal/")]
    assert len(routes) > 40  # the table is checked against the real routers, all of them
    async with httpx.AsyncClient(base_url=routed_nginx.base_url, timeout=5) as client:
        for context, method, path in routes:
            response = await client.request(
                method, path, content=b"{}" if method != "GET" else None
            )

            assert response.status_code == 200, (context, method, path, response.text)
            assert response.json()["upstream"] == context, (method, path)
            assert response.json()["target"] == path


@pytest.mark.anyio
async def test_no_internal_route_of_any_context_is_reachable_through_the_edge(
    routed_nginx: NginxProcess,
) -> None:
    internal = [route for route in _every_route() if route[2].startswith("/internal/")]
    assert internal  # the service-to-service routers are part of SERVICES
    async with httpx.AsyncClient(base_url=routed_nginx.base_url, timeout=5) as client:
        for _context, method, path in internal:
            response = await client.request(
                method, path, content=b"{}" if method != "GET" else None
            )

            assert response.status_code == 404, (method, path)
            assert response.headers["content-type"] == "application/problem+json"
    assert not [line for line in routed_nginx.access_log() if line["upstream_addr"]]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/internal/v1/stock/reserve", id="internal"),
        pytest.param("/metrics", id="metrics"),
        pytest.param("/readyz", id="readyz"),
        pytest.param("/api/v1/cartsX", id="prefix-lookalike"),
        pytest.param("/api/v1/nothing", id="unknown"),
        pytest.param("/docs", id="docs-without-all-pool"),
    ],
)
async def test_paths_no_context_serves_publicly_are_problem_404s(
    routed_nginx: NginxProcess, path: str
) -> None:
    async with httpx.AsyncClient(base_url=routed_nginx.base_url, timeout=5) as client:
        response = await client.get(path, headers={"X-Request-ID": "rid-404"})

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "urn:ironcart:problem:not_found",
        "title": "Not Found",
        "status": 404,
        "detail": "No such resource.",
        "request_id": "rid-404",
    }
    assert response.headers["x-request-id"] == "rid-404"


@pytest.mark.anyio
async def test_request_id_and_forwarding_headers_reach_the_instance_and_come_back(
    routed_nginx: NginxProcess,
) -> None:
    async with httpx.AsyncClient(base_url=routed_nginx.base_url, timeout=5) as client:
        given = await client.get("/api/v1/carts/c1", headers={"X-Request-ID": "abc-123"})
        made = await client.get("/api/v1/carts/c1", headers={"X-Request-ID": "bad id;drop"})

    seen = given.json()["headers"]
    assert seen["x-request-id"] == "abc-123"
    assert seen["x-real-ip"] == "127.0.0.1"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert "connection" not in seen  # keepalive to the upstream: no "Connection: close"
    assert given.headers.get_list("x-request-id") == ["abc-123"]  # the instance's is hidden
    replaced = made.json()["headers"]["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)  # nginx's $request_id
    assert made.headers.get_list("x-request-id") == [replaced]
    logged = [line for line in routed_nginx.access_log() if line["request_id"] == "abc-123"]
    assert logged[0]["uri"] == "/api/v1/carts/c1"
    assert logged[0]["status"] == 200


@pytest.mark.anyio
async def test_a_body_over_the_limit_is_a_problem_413(routed_nginx: NginxProcess) -> None:
    async with httpx.AsyncClient(base_url=routed_nginx.base_url, timeout=5) as client:
        response = await client.post("/api/v1/carts", content=b"x" * 8192)

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:ironcart:problem:content_too_large"
    assert response.json()["request_id"] == response.headers["x-request-id"]


@pytest.mark.anyio
async def test_no_live_instance_is_a_problem_502_with_retry_after(
    nginx: str, tmp_path: Path
) -> None:
    port = free_port()
    options = _options(tmp_path, listen=f"127.0.0.1:{port}")
    config = write_config({"cart": (f"127.0.0.1:{free_port()}",)}, options)  # nobody listens
    async with (
        running_nginx(nginx, config, options, port) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=5) as client,
    ):
        response = await client.post("/api/v1/carts", headers={"X-Request-ID": "rid-502"})

    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert response.json()["type"] == "urn:ironcart:problem:bad_gateway"
    assert response.json()["request_id"] == "rid-502"


@pytest.mark.anyio
async def test_a_pool_over_its_in_flight_limit_gets_503_at_once_and_other_pools_do_not(
    nginx: str, tmp_path: Path
) -> None:
    """One cart instance that holds every request until released, limit 3: of 5 concurrent
    requests 3 reach it and 2 get nginx's 503 at once; catalog (its own pool) still answers."""
    release = asyncio.Event()
    arrived: list[str] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.append("request")
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()

    holding = await asyncio.start_server(hold, "127.0.0.1", 0)
    cart_port = holding.sockets[0].getsockname()[1]
    try:
        async with echo_upstreams(["catalog"]) as ports:
            port = free_port()
            options = _options(tmp_path, listen=f"127.0.0.1:{port}", max_in_flight_per_instance=3)
            pools = {
                "cart": (f"127.0.0.1:{cart_port}",),
                "catalog": (f"127.0.0.1:{ports['catalog']}",),
            }
            config = write_config(pools, options)
            async with (
                running_nginx(nginx, config, options, port) as server,
                httpx.AsyncClient(base_url=server.base_url, timeout=10) as client,
            ):
                held = [asyncio.create_task(client.get(f"/api/v1/carts/c{n}")) for n in range(3)]
                while len(arrived) < 3:
                    await asyncio.sleep(0.01)
                refused = [await client.get("/api/v1/carts/c9") for _ in range(2)]
                other_pool = await client.get("/api/v1/products")
                release.set()
                answered = await asyncio.gather(*held)
    finally:
        holding.close()
        await holding.wait_closed()

    assert [response.status_code for response in refused] == [503, 503]
    assert {response.headers["content-type"] for response in refused} == {
        "application/problem+json"
    }
    assert {response.headers["retry-after"] for response in refused} == {"1"}
    assert refused[0].json()["type"] == "urn:ironcart:problem:unavailable"
    assert other_pool.status_code == 200
    assert [response.status_code for response in answered] == [200, 200, 200]
    assert len(arrived) == 3  # the refused ones never reached the instance
