"""`make bench`: wrk against nginx, a raw ASGI app and IronCart in production mode, on this machine.

Starts every server itself on free 127.0.0.1 ports, one at a time, and stops every process it
started (by its pid / process group) at the end, on Ctrl-C and on errors. The cases are in
bench/cases.py; the results go to docs/benchmarks.md (below the `<!-- bench:results -->`
marker; the text above it is kept).

Knobs (environment):
  BENCH_DURATION=15      seconds per wrk run          BENCH_REPEATS=3       runs per case
  BENCH_CONNECTIONS=64   wrk connections              BENCH_THREADS=2       wrk threads
  BENCH_WARMUP=3         unrecorded seconds of load before each case (0: none)
  BENCH_CASES=a,h        run only these cases (keys in bench/cases.py)
  BENCH_IRONCART_WORKERS=2,3   worker counts tried for IronCart (the fastest is kept)
  BENCH_RAW_SERVERS=uvicorn,granian   ASGI servers tried for the raw app (BENCH_RAW_WORKERS=2)
  BENCH_PROFILE=1        also record a py-spy flamegraph of one extra run of
  BENCH_PROFILE_CASE=m   this case (or cases: m,h) into docs/profiles/ (py-spy: bench/install.sh)
  BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/ironcart_bench
  BENCH_REDIS_URL=redis://127.0.0.1:6379/0
  BENCH_FRESH_DB=1       drop and recreate the bench database first
  BENCH_OUTPUT=docs/benchmarks.md
  BENCH_QUIET_WAIT=0     on a shared machine: before each run, wait up to this many seconds
                         for other processes to use < 5 % of the CPU
  BENCH_REF=HEAD         benchmark the IronCart source of this git revision (exported to the
                         work dir, put first on PYTHONPATH) instead of the working tree
"""

# ruff: noqa: T201, S108, C901 - a command-line tool that prints; nginx paths in its own dir

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import html
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cases import CASES, REFERENCES, VARIANT_CASE, Case

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
BIN = Path(sys.prefix) / "bin"  # the venv running this script
MARKER = "<!-- bench:results -->"
ERROR_LIMIT = 0.01  # more than 1 % errors / non-2xx fails the case
BUSY_LIMIT = 0.05  # other processes using more of the CPU than this: the report says so
BENCH_EMAIL = "bench-user@ironcart.example"
BENCH_PASSWORD = "ironcart-bench-password"  # noqa: S105 - a throwaway account in the bench database
RAW_ITEMS = 100_000
RAW_POOL_SIZE = 10  # asyncpg connections per raw worker
BENCH_PRODUCTS = int(os.environ.get("BENCH_PRODUCTS", "100000"))
IRONCART_POOL_SIZE = 10  # IronCart's default IRONCART_DATABASE_POOL_SIZE (it may overflow x2)


class BenchError(Exception):
    """A failure that stops the benchmark (a server that does not start, a bad setup)."""


# -- configuration ------------------------------------------------------------------------------


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}")
    return value


def _env_list(name: str, default: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, default).split(",") if part.strip()]


@dataclass(frozen=True)
class Config:
    duration: int = field(default_factory=lambda: _env_int("BENCH_DURATION", 15))
    repeats: int = field(default_factory=lambda: _env_int("BENCH_REPEATS", 3))
    connections: int = field(default_factory=lambda: _env_int("BENCH_CONNECTIONS", 64))
    threads: int = field(default_factory=lambda: _env_int("BENCH_THREADS", 2))
    warmup: int = field(
        default_factory=lambda: _env_int(
            "BENCH_WARMUP", min(3, _env_int("BENCH_DURATION", 15)), minimum=0
        )
    )
    only: list[str] = field(default_factory=lambda: _env_list("BENCH_CASES", ""))
    ironcart_workers: list[int] = field(
        default_factory=lambda: [int(w) for w in _env_list("BENCH_IRONCART_WORKERS", "2,3")]
    )
    ironcart_servers: list[str] = field(
        default_factory=lambda: _env_list("BENCH_IRONCART_SERVERS", "uvicorn,granian")
    )
    raw_servers: list[str] = field(
        default_factory=lambda: _env_list("BENCH_RAW_SERVERS", "uvicorn,granian")
    )
    raw_workers: int = field(default_factory=lambda: _env_int("BENCH_RAW_WORKERS", 2))
    profile: bool = field(
        default_factory=lambda: os.environ.get("BENCH_PROFILE", "0") not in ("", "0", "false")
    )
    profile_cases: list[str] = field(
        default_factory=lambda: _env_list("BENCH_PROFILE_CASE", VARIANT_CASE["ironcart"])
    )
    database_url: str = field(
        default_factory=lambda: os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/ironcart_bench"
        )
    )
    redis_url: str = field(
        default_factory=lambda: os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    fresh_db: bool = field(
        default_factory=lambda: os.environ.get("BENCH_FRESH_DB", "0") not in ("", "0", "false")
    )
    output: Path = field(
        default_factory=lambda: ROOT / os.environ.get("BENCH_OUTPUT", "docs/benchmarks.md")
    )
    ref: str = field(default_factory=lambda: os.environ.get("BENCH_REF", "").strip())
    quiet_wait: int = field(default_factory=lambda: _env_int("BENCH_QUIET_WAIT", 0, minimum=0))

    @property
    def is_default_length(self) -> bool:
        return self.duration >= 15 and self.repeats >= 3


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", flush=True)


# -- processes ----------------------------------------------------------------------------------


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Processes:
    """Every long-running process this script starts; each leads its own process group."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self._running: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.started: list[tuple[str, int]] = []

    def start(
        self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        log_path = self.log_path(name)
        with log_path.open("ab") as sink:
            proc = subprocess.Popen(  # noqa: S603 - argv built here from fixed parts
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: workers are stopped with it
            )
        self._running.append((name, proc))
        self.started.append((name, proc.pid))
        OUR_GROUPS.add(proc.pid)
        return proc

    def log_path(self, name: str) -> Path:
        return self.logs / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.log"

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.log_path(name)
        if not path.exists():
            return "(no output)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(no output)"

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 40.0) -> None:
        """SIGTERM the process group led by `proc`, SIGKILL whatever is left after `timeout`."""
        pgid = proc.pid
        if proc.poll() is None or _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and (proc.poll() is None or _group_alive(pgid)):
                time.sleep(0.1)
            if proc.poll() is None or _group_alive(pgid):
                log(f"process group {pgid} did not stop in {timeout:.0f}s: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        self._running = [(n, p) for n, p in self._running if p is not proc]

    def stop_all(self) -> None:
        for _name, proc in reversed(list(self._running)):
            self.stop(proc)

    def leftovers(self) -> list[tuple[str, int]]:
        return [(name, pid) for name, pid in self.started if _group_alive(pid)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_ready(url: str, proc: subprocess.Popen[bytes], procs: Processes, name: str) -> None:
    deadline = time.monotonic() + 90
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"{name} exited with status {proc.returncode} while starting:\n{procs.tail(name)}"
            )
        try:
            status, _ = http("GET", url, timeout=2)
            if 200 <= status < 300:
                return
            last = f"HTTP {status}"
        except OSError as error:
            last = str(error)
        time.sleep(0.2)
    raise BenchError(f"{name} not ready at {url} after 90s ({last}):\n{procs.tail(name)}")


# -- database -----------------------------------------------------------------------------------


def _split_database_url(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    if not name:
        raise BenchError(f"BENCH_DATABASE_URL names no database: {url}")
    admin = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    return admin, name


async def _prepare_database(url: str, fresh: bool) -> str:
    import asyncpg

    admin_url, name = _split_database_url(url)
    admin = await asyncpg.connect(admin_url)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        quoted = '"' + name.replace('"', '""') + '"'
        if exists and fresh:
            log(f"dropping database {name} (BENCH_FRESH_DB)")
            await admin.execute(f"DROP DATABASE {quoted} WITH (FORCE)")
            exists = False
        if not exists:
            log(f"creating database {name}")
            await admin.execute(f"CREATE DATABASE {quoted}")
        version = str(await admin.fetchval("SHOW server_version"))
    finally:
        await admin.close()
    conn = await asyncpg.connect(url)
    try:
        # IronCart's schema starts empty every run (migrated by `ironcart migrate`): results do
        # not depend on what earlier runs, branches or migrations left behind.
        await conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
        # The raw app's table lives in its own schema and is kept between runs.
        await conn.execute(
            """
            CREATE SCHEMA IF NOT EXISTS bench;
            CREATE TABLE IF NOT EXISTS bench.items (
                id integer PRIMARY KEY,
                sku text NOT NULL,
                name text NOT NULL,
                price_cents integer NOT NULL,
                stock integer NOT NULL,
                created_at timestamptz NOT NULL
            )
            """
        )
        count = await conn.fetchval("SELECT count(*) FROM bench.items")
        if count != RAW_ITEMS:
            log(f"filling bench.items with {RAW_ITEMS:,} rows")
            async with conn.transaction():
                await conn.execute("TRUNCATE bench.items")
                await conn.execute(
                    """
                    INSERT INTO bench.items (id, sku, name, price_cents, stock, created_at)
                    SELECT g, 'SKU-' || lpad(g::text, 6, '0'), 'Bench item number ' || g,
                           99 + (g * 7919) % 100000, g % 500,
                           timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute'
                    FROM generate_series(1, $1::integer) AS g
                    """,
                    RAW_ITEMS,
                )
            await conn.execute("ANALYZE bench.items")
    finally:
        await conn.close()
    return version


# -- wrk ----------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass
class WrkRun:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    raw: str = ""
    other_cpu: float = 0.0  # share of the machine's CPU used by processes not of this benchmark


def parse_wrk(output: str) -> WrkRun:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ", output, re.M)
    if rps is None or total is None:
        raise BenchError(f"cannot read wrk's output:\n{output}")
    latency = {
        int(p): float(v) * _UNITS_MS[u]
        for p, v, u in re.findall(
            r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M
        )
    }
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkRun(
        rps=float(rps.group(1)),
        requests=int(total.group(1)),
        p50_ms=latency.get(50, float("nan")),
        p99_ms=latency.get(99, float("nan")),
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
        raw=output,
    )


# -- what else runs on the machine -----------------------------------------------------------

OUR_GROUPS: set[int] = set()  # process groups started by this script
_SHARED_SERVICES = {"postgres", "redis-server"}  # used by the cases (and maybe by others)


def _cpu_ticks_by_process() -> dict[int, tuple[int, str, int, int]]:
    """pid -> (utime+stime ticks, comm, ppid, pgid) of every process still there."""
    out: dict[int, tuple[int, str, int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(entry.name)] = (
            int(fields[11]) + int(fields[12]),
            comm,
            int(fields[1]),
            int(fields[2]),
        )
    return out


def _is_ours(pid: int, comm: str, ppid: int, pgid: int) -> bool:
    return (
        pgid in OUR_GROUPS
        or pid == os.getpid()
        or ppid == os.getpid()  # wrk
        or comm in _SHARED_SERVICES
    )


@contextlib.contextmanager
def other_cpu_meter() -> Iterator[list[float]]:
    """Yields a list that gets the share of all cores used meanwhile by other processes."""
    result: list[float] = []
    before = _cpu_ticks_by_process()
    started = time.monotonic()
    try:
        yield result
    finally:
        after = _cpu_ticks_by_process()
        elapsed = time.monotonic() - started
        ticks = 0
        for pid, (total, comm, ppid, pgid) in after.items():
            if not _is_ours(pid, comm, ppid, pgid):
                ticks += total - before[pid][0] if pid in before else total
        capacity = elapsed * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
        result.append(max(0.0, ticks / capacity) if capacity else 0.0)


def wait_for_quiet(limit_seconds: int) -> None:
    """Wait (up to `limit_seconds`) until other processes use less than BUSY_LIMIT of the CPU."""
    if limit_seconds <= 0:
        return
    deadline = time.monotonic() + limit_seconds
    waited = False
    while True:
        with other_cpu_meter() as share:
            time.sleep(1.0)
        if share[0] < BUSY_LIMIT:
            if waited:
                log(f"  the machine is quiet again (other processes {share[0]:.0%})")
            return
        if time.monotonic() >= deadline:
            log(f"  still busy after {limit_seconds}s (other processes {share[0]:.0%}): going on")
            return
        if not waited:
            log(f"  other processes use {share[0]:.0%} of the CPU: waiting for quiet")
            waited = True


def run_wrk(
    config: Config,
    prepared: Prepared,
    *,
    duration: int,
    script: str | None,
) -> WrkRun:
    argv = [
        "wrk",
        f"-t{config.threads}",
        f"-c{config.connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "--latency",
    ]
    if script:
        argv += ["-s", str(BENCH_DIR / "lua" / script)]
    for name, value in prepared.headers:
        argv += ["-H", f"{name}: {value}"]
    argv.append(prepared.url)
    with other_cpu_meter() as other_cpu:
        result = subprocess.run(  # noqa: S603 - argv built here from fixed parts
            argv,
            env={**os.environ, **prepared.env},
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=False,
        )
    if result.returncode != 0:
        raise BenchError(f"wrk failed ({result.returncode}): {result.stderr or result.stdout}")
    run = parse_wrk(result.stdout)
    run.other_cpu = other_cpu[0]
    return run


# -- servers ------------------------------------------------------------------------------------


@dataclass
class Running:
    variant: Variant
    base_url: str
    proc: subprocess.Popen[bytes]


@dataclass
class Variant:
    server: str  # nginx | raw | ironcart | ironcart-nocache
    label: str
    start: Callable[[], Running]
    python: bool = True  # py-spy can profile it
    workers: int = 0
    http_server: str = ""


class Bench:
    def __init__(self, config: Config, workdir: Path) -> None:
        self.ironcart_workers_chosen = 0
        self.ironcart_server_chosen = ""
        self.config = config
        self.workdir = workdir
        self.procs = Processes(workdir / "logs")
        self.secret_key = secrets.token_urlsafe(48)
        self.notes: list[str] = []
        self._registered = False
        self.postgres_version = "?"
        self.source = ROOT / "src"
        self.commit = ""

    def export_source(self) -> None:
        """With BENCH_REF, serve that revision's src/ (the venv's dependencies are used)."""
        ref = self.config.ref
        git = ["git", "-C", str(ROOT)]
        if not ref:
            self.commit = subprocess.run(  # noqa: S603
                [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
            ).stdout.strip()
            dirty = subprocess.run(  # noqa: S603
                [*git, "status", "--porcelain", "--", "src"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            self.commit += " + uncommitted changes in src/ (working tree)" if dirty else ""
            return
        resolved = subprocess.run(  # noqa: S603
            [*git, "rev-parse", "--verify", "--short", f"{ref}^{{commit}}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if resolved.returncode != 0:
            raise BenchError(f"BENCH_REF={ref}: not a commit: {resolved.stderr.strip()}")
        commit = resolved.stdout.strip()
        target = self.workdir / f"source-{commit}"
        target.mkdir()
        archive = subprocess.run(  # noqa: S603
            [*git, "archive", "--format=tar", commit, "src"], capture_output=True, check=False
        )
        if archive.returncode != 0:
            raise BenchError(f"git archive {commit} failed: {archive.stderr.decode()}")
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)  # noqa: S603, S607
        self.source = target / "src"
        self.commit = f"{commit} (BENCH_REF={ref}; the working tree was not used)"
        log(f"serving IronCart from {commit} exported to {self.source}")

    # nginx ---------------------------------------------------------------------------------

    def start_nginx(self, variant: Variant) -> Running:
        prefix = self.workdir / "nginx"
        (prefix / "html").mkdir(parents=True, exist_ok=True)
        (prefix / "logs").mkdir(exist_ok=True)
        body = json.dumps({"id": 1, "name": "static", "padding": ""}, separators=(",", ":"))
        body = body.replace('"padding":""', '"padding":"' + "x" * (1024 - len(body)) + '"')
        (prefix / "html" / "static.json").write_text(body)
        assert len(body.encode()) == 1024  # noqa: S101 - the ceiling is a 1 KB body
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(
            f"""daemon off;
master_process on;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/json;
    types {{ application/json json; }}
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    open_file_cache max=64;
    client_body_temp_path {prefix}/tmp-body;
    proxy_temp_path {prefix}/tmp-proxy;
    fastcgi_temp_path {prefix}/tmp-fastcgi;
    uwsgi_temp_path {prefix}/tmp-uwsgi;
    scgi_temp_path {prefix}/tmp-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {prefix}/html;
        location / {{ }}
    }}
}}
"""
        )
        # nginx's workers drop root privileges: they must be able to read the files.
        for path in [self.workdir, *self.workdir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        argv = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "logs/error.log")]
        proc = self.procs.start("nginx", argv, env=dict(os.environ))
        base = f"http://127.0.0.1:{port}"
        wait_ready(base + "/static.json", proc, self.procs, "nginx")
        return Running(variant, base, proc)

    # raw ASGI ------------------------------------------------------------------------------

    def check_connections(self, needed: int, who: str) -> None:
        """Warn when PostgreSQL may refuse the connections the server will open."""

        async def count() -> tuple[int, int]:
            import asyncpg

            conn = await asyncpg.connect(self.config.database_url)
            try:
                used = await conn.fetchval("SELECT count(*) FROM pg_stat_activity")
                limit = int(await conn.fetchval("SHOW max_connections"))
                reserved = int(await conn.fetchval("SHOW superuser_reserved_connections"))
            finally:
                await conn.close()
            return int(used) - 1, limit - reserved

        used, limit = asyncio.run(count())
        if used + needed > limit:
            note = (
                f"PostgreSQL had {used} of {limit} connections in use before {who} started, "
                f"which may open {needed}: cases can fail with 'too many clients'."
            )
            log(f"!! {note}")
            self.notes.append(note)

    def start_raw(self, variant: Variant, server: str) -> Running:
        port = free_port()
        workers = str(self.config.raw_workers)
        env = {
            **os.environ,
            "BENCH_RAW_DSN": self.config.database_url,
            "BENCH_RAW_POOL_SIZE": str(RAW_POOL_SIZE),
            "PYTHONPATH": str(BENCH_DIR),
        }
        if server == "uvicorn":
            argv = [
                str(BIN / "python"), "-m", "uvicorn", "raw_asgi:app",
                "--app-dir", str(BENCH_DIR), "--host", "127.0.0.1", "--port", str(port),
                "--workers", workers, "--loop", "uvloop", "--http", "httptools",
                "--lifespan", "on", "--no-access-log", "--log-level", "warning",
                "--no-server-header",
            ]  # fmt: skip
        elif server == "granian":
            argv = [
                str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1",
                "--port", str(port), "--workers", workers, "--loop", "uvloop",
                "--no-access-log", "--log-level", "warning",
                "--working-dir", str(BENCH_DIR), "raw_asgi:app",
            ]  # fmt: skip
        else:
            raise BenchError(f"unknown raw server {server!r}; use uvicorn or granian")
        name = f"raw-{server}"
        self.check_connections(self.config.raw_workers * RAW_POOL_SIZE, variant.label)
        proc = self.procs.start(name, argv, env=env, cwd=BENCH_DIR)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base + "/items/1", proc, self.procs, name)
        return Running(variant, base, proc)

    # IronCart ------------------------------------------------------------------------------

    def ironcart_env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("IRONCART_") and k != "PROMETHEUS_MULTIPROC_DIR"
        }
        env.update(
            IRONCART_DATABASE_URL=self.config.database_url,
            IRONCART_REDIS_URL=self.config.redis_url,
            IRONCART_ENVIRONMENT="production",
            IRONCART_SECRET_KEY=self.secret_key,
            IRONCART_LOG_LEVEL="warning",
        )
        if self.config.ref:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.source), os.environ.get("PYTHONPATH", "")) if p
            )
        env.update(extra)
        return env

    def prepare_ironcart(self) -> None:
        """Migrate the bench database; make a signing key sealed with this run's secret."""
        seed = ["seed", "--products", str(BENCH_PRODUCTS)]
        for args in (["migrate"], ["keys", "rotate"], seed):
            result = subprocess.run(  # noqa: S603 - fixed argv
                [str(BIN / "ironcart"), *args],
                env=self.ironcart_env(),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            log(f"  ironcart {' '.join(args)}: {result.stdout.strip().splitlines()[-1:]}")
            if result.returncode != 0:
                raise BenchError(
                    f"ironcart {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
                )

    def start_ironcart(
        self, variant: Variant, workers: int, server: str = "uvicorn", **extra: str
    ) -> Running:
        port = free_port()
        metrics = self.workdir / f"metrics-{workers}-{port}"
        metrics.mkdir()
        env = self.ironcart_env(
            IRONCART_HOST="127.0.0.1",
            IRONCART_PORT=str(port),
            PROMETHEUS_MULTIPROC_DIR=str(metrics),
            **extra,
        )
        argv = [str(BIN / "ironcart"), "serve", "--workers", str(workers), "--server", server]
        name = f"ironcart-w{workers}"
        self.check_connections(workers * IRONCART_POOL_SIZE * 2, variant.label)
        proc = self.procs.start(name, argv, env=env)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base + "/healthz", proc, self.procs, name)
        time.sleep(1.0)  # every worker runs its lifespan; the first answer is from one of them
        return Running(variant, base, proc)

    def bearer_token(self, base_url: str) -> str:
        """Register the bench user through the API (once a run) and log it in: an access token.

        The API's per-IP limits live in Redis, which other work on the machine may share: a 429
        is waited out (Retry-After, a few times) rather than failing the run.
        """
        if not self._registered:
            body = json.dumps(
                {"email": BENCH_EMAIL, "password": BENCH_PASSWORD, "name": "Bench User"}
            ).encode()
            status, answer = self._post_waiting_out_429(
                base_url + "/api/v1/auth/register", body, "application/json"
            )
            if status != 201:
                raise BenchError(f"registering the bench user: HTTP {status}: {answer[:500]!r}")
            self._registered = True
        form = urllib.parse.urlencode(
            {"grant_type": "password", "username": BENCH_EMAIL, "password": BENCH_PASSWORD}
        ).encode()
        status, answer = self._post_waiting_out_429(
            base_url + "/api/v1/auth/token", form, "application/x-www-form-urlencoded"
        )
        if status != 200:
            raise BenchError(f"getting a token for the bench user: HTTP {status}: {answer[:500]!r}")
        token: str = json.loads(answer)["access_token"]
        return token

    def _post_waiting_out_429(self, url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        for _attempt in range(4):
            request = urllib.request.Request(  # noqa: S310 - a URL built here
                url, data=body, method="POST", headers={"Content-Type": content_type}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                    return response.status, response.read()
            except urllib.error.HTTPError as error:
                answer = error.read()
                if error.code != 429:
                    return error.code, answer
                retry_after = error.headers.get("Retry-After", "")
                wait = min(int(retry_after) if retry_after.isdigit() else 10, 120)
                log(f"  {url}: 429 (rate limited, shared Redis?); retrying in {wait}s")
                time.sleep(wait + 1)
        return 429, answer

    # variants ------------------------------------------------------------------------------

    def variants(self, server: str) -> list[Variant]:
        if server == "nginx":
            variant = Variant("nginx", "nginx", lambda: self.start_nginx(variant), python=False)
            return [variant]
        if server == "raw":
            out = []
            for name in self.config.raw_servers:
                label = f"{name}, {self.config.raw_workers} workers"
                out.append(self._raw_variant(label, name))
            return out
        if server == "ironcart":
            return [
                self._ironcart_variant(w, name)
                for name in self.config.ironcart_servers
                for w in self.config.ironcart_workers
            ]
        if server == "ironcart-nocache":
            # The worker count chosen for "ironcart", with the catalog's response cache off:
            # every product page and search is read from PostgreSQL.
            workers = self.ironcart_workers_chosen or self.config.ironcart_workers[0]
            name = self.ironcart_server_chosen or self.config.ironcart_servers[0]
            label = f"ironcart serve ({name}), {workers} workers, catalog cache off"
            nocache = Variant(
                "ironcart-nocache",
                label,
                lambda: self.start_ironcart(
                    nocache, workers, name, IRONCART_CATALOG__CACHE_ENABLED="false"
                ),
                workers=workers,
                http_server=name,
            )
            return [nocache]
        raise BenchError(f"unknown server {server!r} in bench/cases.py")

    def _raw_variant(self, label: str, name: str) -> Variant:
        variant = Variant("raw", label, lambda: self.start_raw(variant, name))
        return variant

    def _ironcart_variant(self, workers: int, name: str) -> Variant:
        label = f"ironcart serve ({name}), {workers} workers"
        variant = Variant(
            "ironcart",
            label,
            lambda: self.start_ironcart(variant, workers, name),
            workers=workers,
            http_server=name,
        )
        return variant


# -- cases --------------------------------------------------------------------------------------


@dataclass
class CaseContext:
    """What a case's `setup` gets: the server's URL, a token of the bench user, HTTP."""

    base_url: str
    database_url: str
    env: dict[str, str]
    _token: Callable[[], str]

    def token(self) -> str:
        return self._token()

    def http(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        all_headers = dict(headers or {})
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        elif form is not None:
            body = urllib.parse.urlencode(form).encode()
            all_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        return http(method, self.base_url + path, body=body, headers=all_headers, timeout=60)


@dataclass
class CaseResult:
    case: Case
    variant: str
    runs: list[WrkRun] = field(default_factory=list)
    error: str | None = None
    profile: ProfileResult | None = None

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.runs) if self.runs else 0.0

    @property
    def rps_min(self) -> float:
        return min((r.rps for r in self.runs), default=0.0)

    @property
    def rps_max(self) -> float:
        return max((r.rps for r in self.runs), default=0.0)

    @property
    def p50(self) -> float:
        return statistics.median(r.p50_ms for r in self.runs) if self.runs else float("nan")

    @property
    def p99(self) -> float:
        return statistics.median(r.p99_ms for r in self.runs) if self.runs else float("nan")

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.runs)

    @property
    def non2xx(self) -> int:
        return sum(r.non2xx for r in self.runs)

    @property
    def socket_errors(self) -> int:
        return sum(r.socket_errors for r in self.runs)

    @property
    def other_cpu(self) -> float:
        return max((r.other_cpu for r in self.runs), default=0.0)

    @property
    def error_rate(self) -> float:
        return (self.non2xx + self.socket_errors) / self.requests if self.requests else 1.0

    @property
    def failed(self) -> bool:
        return self.error is not None or not self.runs or self.error_rate > ERROR_LIMIT

    def failure(self) -> str:
        if self.error is not None:
            return self.error
        return (
            f"{self.non2xx} non-2xx and {self.socket_errors} socket errors in "
            f"{self.requests} requests ({self.error_rate:.1%} > {ERROR_LIMIT:.0%})"
        )


@dataclass
class ProfileResult:
    svg: Path
    rps: float
    hot_self: list[tuple[str, float]]
    hot_total: list[tuple[str, float]]
    samples: int


@dataclass
class Prepared:
    url: str
    headers: list[tuple[str, str]]
    env: dict[str, str]


def prepare_case(bench: Bench, case: Case, running: Running) -> Prepared:
    """Token, setup hook and the 2xx check: what wrk needs to load `case` on `running`."""
    headers = list(case.headers)
    env = {"BENCH_ITEMS": str(RAW_ITEMS), **case.env}
    token_cache: list[str] = []

    def token() -> str:
        if not token_cache:
            token_cache.append(bench.bearer_token(running.base_url))
        return token_cache[0]

    if case.auth:
        headers.append(("Authorization", f"Bearer {token()}"))
        env["BENCH_TOKEN"] = token()
    if case.setup is not None:
        case.setup(CaseContext(running.base_url, bench.config.database_url, env, token))
    if case.preflight:
        status, body = http("GET", running.base_url + case.path, headers=dict(headers))
        if not 200 <= status < 300:
            raise BenchError(f"GET {case.path} answered HTTP {status}: {body[:300]!r}")
    return Prepared(running.base_url + case.path, headers, env)


def measure(bench: Bench, case: Case, running: Running) -> CaseResult:
    config = bench.config
    result = CaseResult(case, running.variant.label)
    try:
        prepared = prepare_case(bench, case, running)
        if config.warmup:
            run_wrk(config, prepared, duration=config.warmup, script=case.script)
        for index in range(config.repeats):
            wait_for_quiet(config.quiet_wait)
            run = run_wrk(config, prepared, duration=config.duration, script=case.script)
            result.runs.append(run)
            log(
                f"  {case.key} [{running.variant.label}] run {index + 1}/{config.repeats}: "
                f"{run.rps:,.0f} req/s, p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, "
                f"non-2xx {run.non2xx}, socket errors {run.socket_errors}, "
                f"other processes' CPU {run.other_cpu:.0%}"
            )
    except BenchError as error:
        result.error = str(error)
    if result.failed:
        log(f"!! case {case.key} ({case.name}) FAILED: {result.failure()}")
    return result


# -- profiling ----------------------------------------------------------------------------------


def profile(bench: Bench, case: Case, running: Running) -> ProfileResult:
    """One extra, uncounted run of `case` while py-spy records every worker of the server."""
    config = bench.config
    if not running.variant.python:
        raise BenchError(f"case {case.key} is served by {running.variant.label}: not Python")
    prepared = prepare_case(bench, case, running)
    py_spy = BIN / "py-spy"
    if not py_spy.exists():
        raise BenchError("BENCH_PROFILE=1 needs py-spy: run bench/install.sh with BENCH_PROFILE=1")
    out_dir = ROOT / "docs" / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", case.name.lower()).strip("-")
    svg = out_dir / f"{case.key}-{slug}.svg"
    argv = [
        str(py_spy), "record", "--pid", str(running.proc.pid), "--subprocesses",
        "--rate", "200", "--duration", str(config.duration), "--gil", "--format", "flamegraph",
        "--output", str(svg),
    ]  # fmt: skip
    log(f"  profiling {case.key} with py-spy for {config.duration}s -> {svg.relative_to(ROOT)}")
    spy = bench.procs.start(f"py-spy-{case.key}", argv, env=dict(os.environ))
    try:
        time.sleep(1.0)  # let py-spy attach to every worker
        run = run_wrk(config, prepared, duration=config.duration, script=case.script)
        spy.wait(timeout=config.duration + 60)
    finally:
        bench.procs.stop(spy)
    if spy.returncode != 0 or not svg.exists():
        raise BenchError(f"py-spy failed:\n{bench.procs.tail(f'py-spy-{case.key}')}")
    hot_self, hot_total, samples = summarise_flamegraph(svg)
    return ProfileResult(svg, run.rps, hot_self, hot_total, samples)


_FRAME = re.compile(
    r'<title>(?P<title>[^<]*)</title><rect x="[^"]*" y="(?P<y>[\d.]+)"[^>]*'
    r'fg:x="(?P<x>\d+)" fg:w="(?P<w>\d+)"'
)
_LINE = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\) \(\d[\d,]* samples?, [\d.]+%\)$")


def summarise_flamegraph(
    svg: Path, top: int = 15
) -> tuple[list[tuple[str, float]], list[tuple[str, float]], int]:
    """Self and inclusive share of samples per function, read back from py-spy's SVG."""
    frames: list[tuple[float, int, int, str]] = []
    for match in _FRAME.finditer(svg.read_text(errors="replace")):
        title = html.unescape(match["title"])
        parsed = _LINE.match(title)
        name = f"{parsed['func']} ({_short_path(parsed['file'])})" if parsed else title
        name = re.sub(r" \(\d[\d,]* samples?, [\d.]+%\)$", "", name)
        frames.append((float(match["y"]), int(match["x"]), int(match["w"]), name))
    if not frames:
        return [], [], 0
    levels = sorted({y for y, *_ in frames})
    depth_of = {y: index for index, y in enumerate(levels)}
    by_depth: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
    for y, x, w, name in frames:
        by_depth[depth_of[y]].append((x, w, name))
    for row in by_depth.values():
        row.sort()

    # py-spy draws an icicle (root at the top) or a flame (root at the bottom): find the root.
    def row_sum(depth: int) -> int:
        return sum(w for _, w, _ in by_depth[depth])

    root_on_top = row_sum(min(by_depth)) >= row_sum(max(by_depth))
    order = sorted(by_depth, reverse=not root_on_top)
    total = sum(w for _, w, _ in by_depth[order[0]])
    self_samples: dict[str, int] = defaultdict(int)
    total_samples: dict[str, int] = defaultdict(int)
    stacks: dict[tuple[int, int], tuple[str, ...]] = {}
    widths: dict[tuple[int, int], int] = {}
    # A frame that takes (nearly) all of its caller's time is a pass-through (the middleware
    # and routing chain every request goes through): named in the inclusive list only if it
    # is not one somewhere.
    informative: set[str] = set()
    for level, depth in enumerate(order):
        row = by_depth[depth]
        child_row = by_depth.get(order[level + 1], []) if level + 1 < len(order) else []
        child_x = [x for x, _, _ in child_row]
        parent_row = by_depth.get(order[level - 1], []) if level else []
        parent_x = [x for x, _, _ in parent_row]
        for x, w, name in row:
            stack: tuple[str, ...] = (name,)
            parent_w = total
            if parent_row:
                i = bisect.bisect_right(parent_x, x) - 1
                if i >= 0:
                    stack = (*stacks.get((level - 1, parent_x[i]), ()), name)
                    parent_w = widths.get((level - 1, parent_x[i]), total)
            stacks[(level, x)] = stack
            widths[(level, x)] = w
            if w < PASS_THROUGH * parent_w:
                informative.add(name)
            lo = bisect.bisect_left(child_x, x)
            hi = bisect.bisect_left(child_x, x + w)
            self_samples[name] += w - sum(cw for _, cw, _ in child_row[lo:hi])
            if name not in stack[:-1]:  # count recursion once
                total_samples[name] += w

    def ranked(counter: dict[str, int], inclusive: bool) -> list[tuple[str, float]]:
        items = [
            (name, count / total)
            for name, count in counter.items()
            if name != "all"
            and not (inclusive and (_PLUMBING.search(name) or name not in informative))
        ]
        return sorted(items, key=lambda item: -item[1])[:top]

    return ranked(self_samples, inclusive=False), ranked(total_samples, inclusive=True), total


PASS_THROUGH = 0.97

# Frames every sample goes through (process roots, event loop, server plumbing): left out of
# the inclusive ranking, which is about what the requests do.
_PLUMBING = re.compile(
    r"^(?!.*\((ironcart|fastapi|starlette|sqlalchemy|asyncpg|jwt|cryptography|pydantic|"
    r"structlog|prometheus_client|redis|orjson|anyio)/)"
    r"|\((threading|asyncio/(runners|base_events|events))\.py\)"
)


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3" and "/" in tail else tail
    return path


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    results: dict[str, CaseResult]
    trials: dict[str, list[CaseResult]]
    chosen: dict[str, str]


def run_all(bench: Bench, cases: list[Case]) -> Outcome:
    results: dict[str, CaseResult] = {}
    trials: dict[str, list[CaseResult]] = {}
    chosen: dict[str, str] = {}
    servers = list(dict.fromkeys(case.server for case in cases))
    for server in servers:
        server_cases = [case for case in cases if case.server == server]
        variants = bench.variants(server)
        if server == "ironcart":
            log("preparing IronCart: ironcart migrate, ironcart keys rotate")
            bench.prepare_ironcart()
        selector = next((c for c in server_cases if c.key == VARIANT_CASE.get(server)), None)
        running: Running | None = None
        try:
            best = variants[0]
            if len(variants) > 1 and selector is not None:
                tried: list[CaseResult] = []
                for variant in variants:
                    log(f"{server}: trying {variant.label} on case {selector.key}")
                    running = variant.start()
                    tried.append(measure(bench, selector, running))
                    if variant is not variants[-1]:
                        bench.procs.stop(running.proc)
                        running = None
                trials[server] = tried
                scored = [(r.rps if not r.failed else -1.0, i) for i, r in enumerate(tried)]
                best_index = max(scored)[1]
                best = variants[best_index]
                results[selector.key] = tried[best_index]
                if running is not None and running.variant is not best:
                    bench.procs.stop(running.proc)
                    running = None
            chosen[server] = best.label
            if server == "ironcart":
                bench.ironcart_workers_chosen = best.workers
                bench.ironcart_server_chosen = best.http_server
            remaining = [case for case in server_cases if case.key not in results]
            if remaining:
                if running is None:
                    log(f"{server}: starting {best.label}")
                    running = best.start()
                for case in remaining:
                    log(f"case {case.key}: {case.name} [{best.label}]")
                    results[case.key] = measure(bench, case, running)
            for key in bench.config.profile_cases if bench.config.profile else []:
                profiled = results.get(key)
                if profiled is None or profiled.case.server != server:
                    continue
                if running is None:
                    running = best.start()
                try:
                    profiled.profile = profile(bench, profiled.case, running)
                except BenchError as error:
                    bench.notes.append(f"Profiling {profiled.case.key} failed: {error}")
                    log(f"!! profiling failed: {error}")
        finally:
            if running is not None:
                bench.procs.stop(running.proc)
    return Outcome(results, trials, chosen)


# -- the report ---------------------------------------------------------------------------------

DEFAULT_INTRO = """# Benchmarks

How fast IronCart serves its hot paths on one small machine, measured by `make bench`
(`bench/run.py`; the cases are one list in `bench/cases.py`) and always reported next to two
ceilings measured in the same run on the same machine: nginx serving a 1 KB static file (the
HTTP ceiling) and a bare ASGI app doing one asyncpg primary-key read (the database-read ceiling).
Absolute numbers depend on the machine; the ratios are what to compare between runs and machines.

```sh
make bench                                  # 15 s x 3 runs per case, about 7 minutes
BENCH_DURATION=2 BENCH_REPEATS=1 make bench # smoke test of the harness
BENCH_CASES=a,m make bench                  # only some cases
BENCH_PROFILE=1 BENCH_PROFILE_CASE=m make bench   # + py-spy flamegraph in docs/profiles/
BENCH_REF=HEAD make bench                   # the committed src/, not the working tree
```

`bench/install.sh` (run by `make bench`) installs wrk and nginx (Debian packages), and py-spy
into the venv with BENCH_PROFILE=1; they are benchmark tools, not dependencies.
The run uses the PostgreSQL database `ironcart_bench` (IronCart's schema is recreated each run;
the raw app's `bench.items` table is kept) and Redis database 0 on the local servers.
Everything below the marker line is rewritten by each run; edit only above it.
"""


def _fmt_rps(value: float) -> str:
    return f"{value:,.0f}"


def _fmt_ms(value: float) -> str:
    if value != value:  # NaN
        return "–"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def _ratio(result: CaseResult, reference: CaseResult | None) -> str:
    if reference is None or reference.failed or not reference.rps or result.failed:
        return "–"
    return f"{result.rps / reference.rps:.3f}"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _command_version(argv: list[str], pattern: str) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except OSError:
        return "not installed"
    match = re.search(pattern, result.stdout + result.stderr)
    return match.group(1) if match else "?"


def machine_facts(bench: Bench) -> list[tuple[str, str]]:
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)
    os_release = Path("/etc/os-release")
    pretty = (
        re.search(r'^PRETTY_NAME="?([^"\n]+)"?', os_release.read_text(), re.M)
        if os_release.exists()
        else None
    )
    packages = ", ".join(
        f"{name} {_package_version(name)}"
        for name in (
            "uvicorn", "granian", "fastapi", "starlette", "asyncpg", "sqlalchemy",
            "uvloop", "httptools", "orjson", "pydantic",
        )
    )  # fmt: skip
    try:
        import redis

        client = redis.Redis.from_url(bench.config.redis_url, socket_timeout=2)
        redis_version = str(client.info("server").get("redis_version", "?"))
        client.close()
    except Exception:  # noqa: BLE001 - only a fact for the report
        redis_version = "unreachable"
    cpu = model.group(1).strip() if model else "?"
    os_name = pretty.group(1) if pretty else platform.system()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    database = bench.config.database_url.rsplit("@", 1)[-1]
    return [
        ("CPU", f"{cpu} × {os.cpu_count()} (nproc {len(os.sched_getaffinity(0))})"),
        ("RAM", f"{int(mem_kib.group(1)) / 1024 / 1024:.1f} GiB" if mem_kib else "?"),
        ("OS / kernel", f"{os_name} / {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("Python packages", packages),
        ("wrk", _command_version(["wrk", "-v"], r"wrk (\S+)")),
        ("nginx", _command_version([nginx, "-v"], r"nginx/(\S+)")),
        ("PostgreSQL", f"{bench.postgres_version} ({database})"),
        ("Redis", f"{redis_version} ({bench.config.redis_url.rsplit('@', 1)[-1]})"),
        ("IronCart", f"commit {bench.commit}"),
    ]  # fmt: skip


def render_report(bench: Bench, cases: list[Case], outcome: Outcome, started: dt.datetime) -> str:
    config = bench.config
    results = outcome.results
    references = {key: results.get(key) for key in REFERENCES}
    ref_names = {key: next((c.name for c in CASES if c.key == key), key) for key in REFERENCES}
    lines = [
        MARKER,
        "<!-- Written by `make bench` (bench/run.py); edit only above the marker. -->",
        "",
        "## Latest run",
        "",
        f"{started:%Y-%m-%d %H:%M} UTC · `make bench` with BENCH_DURATION={config.duration} "
        f"BENCH_REPEATS={config.repeats} BENCH_CONNECTIONS={config.connections} "
        f"(wrk -t{config.threads} -c{config.connections} -d{config.duration}s --latency, "
        f"{config.repeats} run{'s' if config.repeats != 1 else ''} per case, "
        f"{config.warmup}s unrecorded warm-up)",
        "",
    ]
    if not config.is_default_length:
        lines += [
            "> **Quick run** (shorter or fewer runs than the default 15 s × 3): a smoke test of "
            "the "
            "harness, not numbers to compare.",
            "",
        ]
    failed = [r for r in results.values() if r.failed]
    if failed:
        lines += [
            "> **FAILED cases:** " + "; ".join(f"{r.case.key}: {r.failure()}" for r in failed),
            "",
        ]
    ref_heads = " | ".join(f"÷ {key} ({ref_names[key]})" for key in REFERENCES)
    lines += [
        "### Results",
        "",
        "| case | what | served by | req/s median (min–max) | p50 | p99 | non-2xx | errors "
        f"| other CPU | {ref_heads} |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(REFERENCES),
    ]
    for case in cases:
        result = results.get(case.key)
        if result is None:
            continue
        target = f"`{case.script}`" if case.script else f"`GET {case.path}`"
        auth = " + bearer token" if case.auth else ""
        spread = (
            f"**{_fmt_rps(result.rps)}** ({_fmt_rps(result.rps_min)}–{_fmt_rps(result.rps_max)})"
            if result.runs
            else "FAILED"
        )
        ratios = " | ".join(_ratio(result, references[key]) for key in REFERENCES)
        lines.append(
            f"| {case.key} | {case.name}: {target}{auth} | {result.variant} | {spread} | "
            f"{_fmt_ms(result.p50)} | {_fmt_ms(result.p99)} | {result.non2xx} | "
            f"{result.socket_errors} | {result.other_cpu:.0%} | {ratios} |"
        )
    lines += ["", "Cases:", ""]
    lines += [f"- **{c.key}** {c.name} — {c.description}." for c in cases if c.key in results]
    if outcome.trials:
        lines += [
            "",
            "### Server and worker choice",
            "",
            "Each variant ran the server's selection case with the same method; the fastest "
            "(median req/s) served the server's other cases.",
            "",
            "| server | variant | case | req/s median (min–max) | p50 | p99 | non-2xx | other CPU "
            "| kept |",
            "|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for server, tried in outcome.trials.items():
            for result in tried:
                kept = "**yes**" if result.variant == outcome.chosen.get(server) else ""
                spread = (
                    f"{_fmt_rps(result.rps)} "
                    f"({_fmt_rps(result.rps_min)}–{_fmt_rps(result.rps_max)})"
                    if result.runs
                    else "FAILED"
                )
                lines.append(
                    f"| {server} | {result.variant} | {result.case.key} | {spread} | "
                    f"{_fmt_ms(result.p50)} | {_fmt_ms(result.p99)} | {result.non2xx} | "
                    f"{result.other_cpu:.0%} | {kept} |"
                )
    lines += ["", "### Machine", ""]
    lines += [f"- **{name}:** {value}" for name, value in machine_facts(bench)]
    lines += [
        "",
        "### Method",
        "",
        "- One machine runs everything: wrk, the server under test, PostgreSQL and Redis share "
        "its cores, so the numbers are a lower bound of what the server does alone. One server "
        "runs at a time; each is started by the script on a free 127.0.0.1 port and stopped "
        "after its cases.",
        f"- Each case: one GET to check that it answers 2xx, {config.warmup}s of unrecorded load, "
        f"then {config.repeats} × `wrk -t{config.threads} -c{config.connections} "
        f"-d{config.duration}s --timeout 10s --latency`. The table gives the median req/s (min–max "
        "over the runs) and the median over the runs of wrk's p50 and p99 latency. `non-2xx` is "
        "wrk's count of answers ≥ 400; `errors` its socket errors (connect, read, write, timeout). "
        f"A case with more than {ERROR_LIMIT:.0%} of either fails the run. `other CPU` is the "
        "largest share, over the case's runs, of the machine's CPU time used during a run by "
        "processes that are neither this benchmark's nor PostgreSQL or Redis (other work on a "
        "shared machine): above a few per cent, the numbers are disturbed.",
        "- **a** nginx 1 KB static JSON file (`worker_processes auto`, `access_log off`, "
        "keep-alive): the HTTP ceiling. **a2** `bench/raw_asgi.py`, a bare ASGI app: one "
        f"asyncpg primary-key SELECT of a random row of {RAW_ITEMS:,} (pool of {RAW_POOL_SIZE} "
        "per worker) returned "
        f"as JSON, on uvicorn and on granian with {config.raw_workers} workers, the faster kept.",
        "- IronCart: `ironcart migrate`, `ironcart keys rotate`, `ironcart seed --products "
        f"{BENCH_PRODUCTS}` (with stock), then `ironcart serve --server S --workers N` "
        "with IRONCART_ENVIRONMENT=production, IRONCART_LOG_LEVEL=warning, a random "
        "IRONCART_SECRET_KEY, PostgreSQL `"
        + config.database_url.rsplit("/", 1)[-1]
        + "` and Redis; N in "
        + ", ".join(str(w) for w in config.ironcart_workers)
        + " and S in "
        + ", ".join(config.ironcart_servers)
        + ", the fastest on the selection case kept; cases c and e2 run the same choice with "
        "IRONCART_CATALOG__CACHE_ENABLED=false. Cases with a bearer token use a bench "
        "account registered and logged in through the API (a fresh token for each case).",
        "- Ratios: a case's median req/s divided by the reference's median req/s of the same run.",
    ]
    notes = list(bench.notes)
    busy = [*results.values(), *(t for ts in outcome.trials.values() for t in ts)]
    worst = max(busy, key=lambda r: r.other_cpu, default=None)
    if worst is not None and worst.other_cpu > BUSY_LIMIT:
        notes.append(
            f"**The machine was not quiet**: other processes used up to {worst.other_cpu:.0%} of "
            f"its CPU during case {worst.case.key} ({worst.variant}); the numbers of such cases "
            "are lower than the machine can do. Rerun on a quiet machine to compare."
        )
    for server, tried in outcome.trials.items():
        disturbed = [t for t in tried if t.other_cpu > BUSY_LIMIT]
        if disturbed and len(tried) > 1:
            notes.append(
                f"The {server} variant choice ({outcome.chosen.get(server)}) was made while "
                "other processes were busy ("
                + ", ".join(f"{t.variant}: {t.other_cpu:.0%}" for t in disturbed)
                + "): it may reflect that rather than the variants."
            )
    for result in results.values():
        if result.profile is not None:
            notes.append(_profile_note(result))
    if notes:
        lines += ["", "### Notes", ""]
        lines += [note if note.startswith("- ") else f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _profile_note(result: CaseResult) -> str:
    prof = result.profile
    assert prof is not None  # noqa: S101
    rel = prof.svg.relative_to(ROOT)
    lines = [
        f"- **Profile of {result.case.key} ({result.case.name})**: [{rel.name}]"
        f"(profiles/{rel.name}), py-spy at 200 Hz over every worker during one extra "
        f"{result.case.key} run ({_fmt_rps(prof.rps)} req/s under the profiler, not counted); "
        f"{prof.samples:,} samples of the thread holding the GIL (`py-spy record --gil`: "
        "Python and C-extension work; waits and the event loop's idle time excluded). "
        "The inclusive ranking names frames of ironcart and its libraries, leaving out "
        "pass-throughs (frames with ≥ 97 % of their caller's samples, like the middleware "
        "chain; a caller of the same share stands for them).",
        "",
        "  | function (self time) | share | function (inclusive) | share |",
        "  |---|---:|---|---:|",
    ]
    for index in range(max(len(prof.hot_self), len(prof.hot_total))):
        left = prof.hot_self[index] if index < len(prof.hot_self) else ("", 0.0)
        right = prof.hot_total[index] if index < len(prof.hot_total) else ("", 0.0)
        lines.append(
            f"  | `{left[0]}` | {left[1]:.1%} | `{right[0]}` | {right[1]:.1%} |"
            if left[0] and right[0]
            else f"  | `{left[0]}` | {left[1]:.1%} | | |"
        )
    return "\n".join(lines)


def write_report(path: Path, body: str) -> None:
    intro = DEFAULT_INTRO
    if path.exists():
        existing = path.read_text()
        if MARKER in existing:
            intro = existing.split(MARKER, 1)[0].rstrip() + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(intro + "\n" + body)


def print_summary(cases: list[Case], outcome: Outcome) -> None:
    print()
    print(
        f"{'case':<5} {'name':<24} {'req/s':>10} {'min':>9} {'max':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'non2xx':>7} {'other':>6}  served by"
    )
    for case in cases:
        r = outcome.results.get(case.key)
        if r is None:
            continue
        status = "  FAILED" if r.failed else ""
        print(
            f"{case.key:<5} {case.name[:24]:<24} {r.rps:>10,.0f} {r.rps_min:>9,.0f} "
            f"{r.rps_max:>9,.0f} "
            f"{r.p50:>8.2f} {r.p99:>8.2f} {r.non2xx:>7} {r.other_cpu:>6.0%}  {r.variant}{status}"
        )
    print()


# -- main ---------------------------------------------------------------------------------------


def _selected_cases(config: Config) -> list[Case]:
    keys = [case.key for case in CASES]
    duplicates = {key for key in keys if keys.count(key) > 1}
    if duplicates:
        raise SystemExit(f"bench/cases.py: duplicate case keys {sorted(duplicates)}")
    unknown = [key for key in config.only if key not in keys]
    if unknown:
        raise SystemExit(f"BENCH_CASES: unknown case(s) {unknown}; known: {keys}")
    if config.profile:
        unknown = [key for key in config.profile_cases if key not in keys]
        if unknown:
            raise SystemExit(f"BENCH_PROFILE_CASE: unknown case(s) {unknown}; known: {keys}")
    for case in CASES:
        if case.script and not (BENCH_DIR / "lua" / case.script).is_file():
            raise SystemExit(f"case {case.key}: no such script bench/lua/{case.script}")
    return [case for case in CASES if not config.only or case.key in config.only]


def _raise_on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ironcart-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    config = Config()
    cases = _selected_cases(config)
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: run bench/install.sh (make bench does)")
    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGHUP, _raise_on_signal)
    started = dt.datetime.now(dt.UTC)
    with _workdir() as workdir:
        (workdir / "logs").mkdir()
        bench = Bench(config, workdir)
        try:
            log(
                f"{len(cases)} cases × {config.repeats} runs × {config.duration}s "
                f"(wrk -t{config.threads} -c{config.connections}); work dir {workdir}"
            )
            bench.export_source()
            bench.postgres_version = asyncio.run(
                _prepare_database(config.database_url, config.fresh_db)
            )
            outcome = run_all(bench, cases)
        except KeyboardInterrupt:
            log("interrupted: stopping every process started")
            return 130
        except BenchError as error:
            log(f"!! {error}")
            return 1
        finally:
            bench.procs.stop_all()
            left = bench.procs.leftovers()
            if left:
                log(f"!! still running after stop: {left}")
            else:
                log(f"stopped every process started ({len(bench.procs.started)})")
    print_summary(cases, outcome)
    report = render_report(bench, cases, outcome, started)
    write_report(config.output, report)
    log(
        "wrote "
        + str(
            config.output.relative_to(ROOT) if config.output.is_relative_to(ROOT) else config.output
        )
    )
    failed = [r for r in outcome.results.values() if r.failed]
    if failed:
        for result in failed:
            log(f"!! FAILED {result.case.key} ({result.case.name}): {result.failure()}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
