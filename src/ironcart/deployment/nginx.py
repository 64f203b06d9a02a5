"""The nginx edge: which public paths each context serves, and the config that routes them.

`render_config(pools, options)` fills `nginx.conf.template` (a package resource) with one
`upstream` per pool of instances and the locations of `CONTEXT_ROUTES`. A context with no pool
of its own is served by the `all` pool (instances running `ironcart serve --service all`) when
there is one, and is left unrouted (404 problem+json) otherwise.

Errors: `InvalidNginxSpec` (a `ValueError`) for an unknown context, a malformed instance or
listen address, or a pool that is named but empty.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

ALL_POOL = "all"
UPSTREAM_PREFIX = "ironcart_"
PREFIX_DIRECTORIES = ("logs", "tmp")
_ADDRESS = re.compile(
    r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(?P<port>\d{1,5})$"
)
_MIB = 1024 * 1024


class InvalidNginxSpec(ValueError):
    """A pool, instance, listen address or option the config cannot be generated from."""


@dataclass(frozen=True)
class ContextRoutes:
    """The public paths of one context, as nginx locations.

    Each of `collections` (e.g. `/api/v1/carts`) gives `location = P` and `location P/`, so
    `/api/v1/cartsX` is nobody's. `exact` paths are matched whole. `patterns` are regex
    locations: nginx checks them after the longest prefix, so they carve sub-paths out of
    another context's collection (a shipment of an order belongs to shipping, not ordering).
    """

    collections: tuple[str, ...] = ()
    exact: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()


# Mirrors the routers in each context's api.py (tests/unit/test_nginx_config.py checks every
# route of ironcart.app.SERVICES against it through a real nginx).
CONTEXT_ROUTES: Mapping[str, ContextRoutes] = {
    "identity": ContextRoutes(
        collections=("/api/v1/auth", "/api/v1/me"), exact=("/.well-known/jwks.json",)
    ),
    "catalog": ContextRoutes(
        collections=(
            "/api/v1/products",
            "/api/v1/variants",
            "/api/v1/categories",
            "/api/v1/collections",
        )
    ),
    "inventory": ContextRoutes(collections=("/api/v1/inventory", "/api/v1/warehouses")),
    "cart": ContextRoutes(collections=("/api/v1/carts",)),
    "ordering": ContextRoutes(collections=("/api/v1/orders", "/api/v1/staff/orders")),
    "payments": ContextRoutes(collections=("/api/v1/payments",)),
    "shipping": ContextRoutes(
        collections=("/api/v1/shipping", "/api/v1/shipments"),
        patterns=("^/api/v1/orders/[^/]+/shipments(?:/|$)",),
    ),
}


@dataclass(frozen=True)
class Problem:
    """One of nginx's own error answers, sent as RFC 9457 problem+json."""

    status: int
    code: str
    title: str
    detail: str
    retry_after_seconds: int | None = None


# The `type` and fields match platform/http/problems.py, so a client parses one error shape.
PROBLEMS: tuple[Problem, ...] = (
    Problem(404, "not_found", "Not Found", "No such resource."),
    Problem(413, "content_too_large", "Content Too Large", "The request body is too large."),
    Problem(429, "rate_limited", "Too Many Requests", "Slow down and retry later.", 1),
    Problem(500, "internal_error", "Internal Server Error", "The edge server failed."),
    Problem(
        502,
        "bad_gateway",
        "Bad Gateway",
        "The service instance failed while answering; retry with the same Idempotency-Key.",
        1,
    ),
    Problem(
        503,
        "unavailable",
        "Service Unavailable",
        "The service is at capacity or has no instance available; retry later.",
        1,
    ),
    Problem(504, "gateway_timeout", "Gateway Timeout", "The service instance did not answer.", 1),
)


@dataclass(frozen=True)
class NginxOptions:
    """Where nginx keeps its files, where it listens, and its limits and timeouts."""

    prefix: Path
    listen: str = "127.0.0.1:8080"
    user: str | None = None  # workers' user; None keeps nginx's default (nobody when root)
    worker_processes: int | None = None  # None: one per core
    worker_connections: int = 4096
    max_fails: int = 2
    fail_timeout_seconds: float = 5.0
    keepalive_connections: int = 32
    # Below uvicorn's 5 s keep-alive, so nginx never reuses a connection the app is closing
    # (that race would fail a POST nginx may not retry).
    keepalive_timeout_seconds: float = 4.0
    connect_timeout_seconds: float = 1.0
    send_timeout_seconds: float = 30.0
    read_timeout_seconds: float = 30.0
    next_upstream_tries: int = 2
    next_upstream_timeout_seconds: float = 10.0
    client_max_body_bytes: int = _MIB  # as the app's IRONCART_SERVER__MAX_BODY_BYTES
    client_body_timeout_seconds: float = 10.0
    client_header_timeout_seconds: float = 10.0
    requests_per_second_per_ip: int | None = None  # None: rate limits are the app's alone
    rate_limit_burst: int = 50
    # Requests each instance of a pool is sent at once; the pool's excess gets nginx's 503
    # (Retry-After) at once. None: the apps' own load shedding alone.
    max_in_flight_per_instance: int | None = None


def parse_instances(specs: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """`["catalog=h:p,h:p", "all=h:p"]` -> `{"catalog": ("h:p", "h:p"), "all": ("h:p",)}`."""
    pools: dict[str, list[str]] = {}
    for spec in specs:
        name, separator, addresses = spec.partition("=")
        if not separator:
            raise InvalidNginxSpec(f"{spec!r}: expected <context>=<host:port>[,<host:port>...]")
        instances = [address.strip() for address in addresses.split(",") if address.strip()]
        pools.setdefault(name.strip(), []).extend(instances)
    return {name: tuple(instances) for name, instances in pools.items()}


def render_config(pools: Mapping[str, Sequence[str]], options: NginxOptions) -> str:
    """The whole nginx.conf for these pools of instances."""
    _validate(pools, options)
    routed = _routed_contexts(pools)
    template = resources.files(__package__).joinpath("nginx.conf.template").read_text("utf-8")
    return _NginxTemplate(template).substitute(_template_values(pools, routed, options))


def prepare_prefix(prefix: Path) -> None:
    """Create the directories the config writes to (logs, temp files) under `prefix`."""
    for name in PREFIX_DIRECTORIES:
        (prefix / name).mkdir(parents=True, exist_ok=True)


def routed_contexts(pools: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Context -> the pool that serves it (its own, else `all`); unrouted contexts left out."""
    _validate_pools(pools)
    return _routed_contexts(pools)


class _NginxTemplate(string.Template):
    # nginx owns `$` (variables) and `{}` (blocks); `%%{name}` is free.
    delimiter = "%%"


def _routed_contexts(pools: Mapping[str, Sequence[str]]) -> dict[str, str]:
    routed: dict[str, str] = {}
    for context in CONTEXT_ROUTES:
        if pools.get(context):
            routed[context] = context
        elif pools.get(ALL_POOL):
            routed[context] = ALL_POOL
    return routed


def _validate(pools: Mapping[str, Sequence[str]], options: NginxOptions) -> None:
    _validate_pools(pools)
    _check_address(options.listen, what="listen address")
    if options.user is not None and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", options.user):
        raise InvalidNginxSpec(f"{options.user!r} is not a user name")
    if not options.prefix.is_absolute() or re.search(r"[\s;{}'\"]", str(options.prefix)):
        raise InvalidNginxSpec(f"prefix {str(options.prefix)!r} must be an absolute plain path")


def _validate_pools(pools: Mapping[str, Sequence[str]]) -> None:
    if not pools:
        raise InvalidNginxSpec("no instances given: name at least one pool")
    for name, instances in pools.items():
        if name != ALL_POOL and name not in CONTEXT_ROUTES:
            known = ", ".join([ALL_POOL, *CONTEXT_ROUTES])
            raise InvalidNginxSpec(f"unknown pool {name!r}; choose one of {known}")
        if not instances:
            raise InvalidNginxSpec(f"pool {name!r} has no instances")
        for instance in instances:
            _check_address(instance, what=f"instance of {name}")


def _check_address(address: str, *, what: str) -> None:
    match = _ADDRESS.match(address)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise InvalidNginxSpec(f"{what} {address!r} is not host:port")


def _template_values(
    pools: Mapping[str, Sequence[str]], routed: Mapping[str, str], options: NginxOptions
) -> dict[str, str]:
    return {
        "prefix": str(options.prefix),
        "user_directive": f"user {options.user};" if options.user else "",
        "worker_processes": str(options.worker_processes or "auto"),
        "worker_connections": str(options.worker_connections),
        "listen": options.listen,
        "client_max_body_size": _size(options.client_max_body_bytes),
        "client_body_timeout": _duration(options.client_body_timeout_seconds),
        "client_header_timeout": _duration(options.client_header_timeout_seconds),
        "send_timeout": _duration(options.send_timeout_seconds),
        "proxy_send_timeout": _duration(options.send_timeout_seconds),
        "connect_timeout": _duration(options.connect_timeout_seconds),
        "read_timeout": _duration(options.read_timeout_seconds),
        "next_upstream_tries": str(options.next_upstream_tries),
        "next_upstream_timeout": _duration(options.next_upstream_timeout_seconds),
        "rate_limit_zone": _rate_limit_zone(options) + _in_flight_zone(options),
        "rate_limit": _rate_limit(options) + _in_flight_status(options),
        "upstreams": _upstreams(pools, options),
        "locations": _locations(routed, _in_flight_limits(pools, options)),
        "problem_locations": _problem_locations(),
    }


def _upstreams(pools: Mapping[str, Sequence[str]], options: NginxOptions) -> str:
    blocks = []
    for name, instances in pools.items():
        servers = "".join(
            f"        server {instance} max_fails={options.max_fails}"
            f" fail_timeout={_duration(options.fail_timeout_seconds)};\n"
            for instance in instances
        )
        blocks.append(
            f"\n    upstream {UPSTREAM_PREFIX}{name} {{\n"
            "        least_conn;\n"
            f"{servers}"
            f"        keepalive {options.keepalive_connections};\n"
            f"        keepalive_timeout {_duration(options.keepalive_timeout_seconds)};\n"
            "    }\n"
        )
    return "".join(blocks)


def _locations(routed: Mapping[str, str], in_flight: Mapping[str, int]) -> str:
    """Each routed context's locations; `in_flight`: the pools' in-flight limits, if any."""
    lines: list[str] = []
    for context, routes in CONTEXT_ROUTES.items():
        pool = routed.get(context)
        if pool is None:
            lines.append(f"\n        # {context}: no instances and no `all` pool, not routed.\n")
            continue
        lines.append(f"\n        # {context} -> upstream {UPSTREAM_PREFIX}{pool}\n")
        limit = in_flight.get(pool)
        for path in routes.collections:
            lines.append(_location(f"= {path}", pool, limit))
            lines.append(_location(f"{path}/", pool, limit))
        lines.extend(_location(f"= {path}", pool, limit) for path in routes.exact)
        lines.extend(_location(f'~ "{pattern}"', pool, limit) for pattern in routes.patterns)
    fallback = ALL_POOL if ALL_POOL in routed.values() else None
    lines.append(_fallback_location(fallback, in_flight.get(ALL_POOL)))
    return "".join(lines)


def _location(match: str, pool: str, in_flight_limit: int | None = None) -> str:
    # `set` runs in the rewrite phase, before limit_conn counts the request against its pool.
    limit = (
        f"            set $ironcart_pool {pool};\n"
        f"            limit_conn ironcart_in_flight {in_flight_limit};\n"
        if in_flight_limit is not None
        else ""
    )
    return (
        f"        location {match} {{\n"
        f"{limit}"
        f"            proxy_pass http://{UPSTREAM_PREFIX}{pool};\n"
        "        }\n"
    )


def _fallback_location(pool: str | None, in_flight_limit: int | None) -> str:
    # With an `all` pool, paths no context claims (/docs, /openapi.json) go to it; else 404.
    if pool is None:
        return "\n        location / {\n            return 404;\n        }\n"
    return "\n        # anything else (/docs, /openapi.json)\n" + _location(
        "/", pool, in_flight_limit
    )


def _problem_locations() -> str:
    return "".join(_problem_location(problem) for problem in PROBLEMS)


def _problem_location(problem: Problem) -> str:
    body = (
        f'{{"type":"urn:ironcart:problem:{problem.code}","title":"{problem.title}",'
        f'"status":{problem.status},"detail":"{problem.detail}",'
        f'"request_id":"$ironcart_request_id"}}\\n'
    )
    retry = (
        f"            add_header Retry-After {problem.retry_after_seconds} always;\n"
        if problem.retry_after_seconds is not None
        else ""
    )
    return (
        f"\n        location @problem_{problem.status} {{\n"
        "            types { }\n"
        "            default_type application/problem+json;\n"
        # A location with its own add_header inherits none: repeat the request id.
        "            add_header X-Request-ID $ironcart_request_id always;\n"
        f"{retry}"
        f"            return {problem.status} '{body}';\n"
        "        }\n"
    )


def _rate_limit_zone(options: NginxOptions) -> str:
    if options.requests_per_second_per_ip is None:
        return ""
    return (
        "\n    limit_req_zone $binary_remote_addr zone=ironcart_per_ip:10m"
        f" rate={options.requests_per_second_per_ip}r/s;\n"
    )


def _rate_limit(options: NginxOptions) -> str:
    if options.requests_per_second_per_ip is None:
        return ""
    return (
        f"        limit_req zone=ironcart_per_ip burst={options.rate_limit_burst} nodelay;\n"
        "        limit_req_status 429;\n"
    )


def _in_flight_limits(pools: Mapping[str, Sequence[str]], options: NginxOptions) -> dict[str, int]:
    """Pool -> requests its instances are sent at once (none without the option)."""
    per_instance = options.max_in_flight_per_instance
    if per_instance is None:
        return {}
    if per_instance < 1:
        raise InvalidNginxSpec(f"max in flight per instance must be positive, not {per_instance}")
    return {name: per_instance * len(instances) for name, instances in pools.items()}


def _in_flight_zone(options: NginxOptions) -> str:
    if options.max_in_flight_per_instance is None:
        return ""
    # Keyed by pool: a saturated catalog pool never refuses a checkout. Requests of locations
    # that set no pool (the edge's own /healthz, problems) have an empty key: never counted.
    return "\n    limit_conn_zone $ironcart_pool zone=ironcart_in_flight:1m;\n"


def _in_flight_status(options: NginxOptions) -> str:
    if options.max_in_flight_per_instance is None:
        return ""
    return "        limit_conn_status 503;\n"


def _duration(seconds: float) -> str:
    if seconds <= 0:
        raise InvalidNginxSpec(f"a duration must be positive, not {seconds}")
    milliseconds = round(seconds * 1000)
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


def _size(size_bytes: int) -> str:
    if size_bytes % _MIB == 0:
        return f"{size_bytes // _MIB}m"
    return f"{size_bytes // 1024}k" if size_bytes % 1024 == 0 else str(size_bytes)
