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
  BENCH_CHECKOUT_DURATION=30   seconds per checkout / pgbench run (default: 2 x BENCH_DURATION)
  BENCH_CHECKOUT_WORKERS=1,2,3 worker counts tried for the checkout cases (with the sandbox PSP)
  BENCH_CHECKOUT_SERVERS=uvicorn,granian   ASGI servers tried for them (the fastest is kept)
  BENCH_CHECKOUT_ENV=K=V,...   extra IronCart settings for the checkout server (experiments,
                         e.g. IRONCART_ORDERING__MAX_CONCURRENT_CHECKOUTS=16)
  BENCH_PSP_WEBHOOKS=1   the sandbox PSP sends its webhooks to the app (0: none)
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cases import CASES, CHECKOUT_REFERENCE, REFERENCES, VARIANT_CASE, Case

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


def _buyer_email(index: int) -> str:
    return f"bench-buyer-{index:03d}@ironcart.example"


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
    checkout_duration: int = field(
        default_factory=lambda: _env_int(
            "BENCH_CHECKOUT_DURATION", 2 * _env_int("BENCH_DURATION", 15)
        )
    )
    checkout_workers: list[int] = field(
        default_factory=lambda: [int(w) for w in _env_list("BENCH_CHECKOUT_WORKERS", "1,2,3")]
    )
    checkout_servers: list[str] = field(
        default_factory=lambda: _env_list("BENCH_CHECKOUT_SERVERS", "uvicorn,granian")
    )
    checkout_env: dict[str, str] = field(
        default_factory=lambda: dict(
            item.split("=", 1) for item in _env_list("BENCH_CHECKOUT_ENV", "") if "=" in item
        )
    )
    psp_webhooks: bool = field(
        default_factory=lambda: os.environ.get("BENCH_PSP_WEBHOOKS", "1") not in ("", "0", "false")
    )
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
        return self.duration >= 15 and self.repeats >= 3 and self.checkout_duration >= 30

    def duration_of(self, case: Case) -> int:
        """Seconds of one measured run of `case` (the checkout and pgbench cases run longer)."""
        return self.duration if case.driver == "wrk" else self.checkout_duration


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


async def _prepare_database(url: str, fresh: bool) -> tuple[str, str]:
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
        shown = []
        for name in (
            "max_connections", "shared_buffers", "synchronous_commit", "fsync",
            "wal_level", "checkpoint_timeout", "max_wal_size",
        ):  # fmt: skip
            shown.append(f"{name} {await admin.fetchval(f'SHOW {name}')}")
        settings = ", ".join(shown)
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
    return version, settings


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
    # checkout and pgbench runs: flow latency, CPU split by process, answers by route...
    extra: dict[str, Any] = field(default_factory=dict)


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


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


@contextlib.contextmanager
def other_cpu_meter(database: str = "") -> Iterator[list[float]]:
    """Yields a list that gets the share of all cores used meanwhile by other processes.

    With `database`, PostgreSQL backends of other databases count as other processes. Processes
    that start and end inside the block (a test suite's) are invisible per process: what the
    machine's cores did in all (/proc/stat) minus what this benchmark's processes did counts
    as other too, whichever is larger.
    """
    with cpu_split_meter({}, database) as split:
        result: list[float] = []
        yield result
    result.append(_other_share(split))


_SERVICE_NAMES = {"postgres": "PostgreSQL", "redis-server": "Redis"}


_BACKEND_DATABASE = re.compile(rb"^postgres: [^:]+: \S+ (\S+) ")


def _postgres_of_other_databases(database: str) -> set[int]:
    """PostgreSQL backends serving another database than `database` (others' work)."""
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            title = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        match = _BACKEND_DATABASE.match(title)
        if match and match.group(1).decode(errors="replace") != database:
            found.add(int(entry.name))
    return found


@contextlib.contextmanager
def cpu_split_meter(groups: dict[int, str], database: str = "") -> Iterator[dict[str, float]]:
    """Yields a dict that gets the cores used meanwhile, by kind of process.

    `groups` names process groups of this benchmark (the server, the PSP, the load generator;
    read at the end, so a group started inside the block can be added to it). PostgreSQL and
    Redis are named by their process name (with `database`, backends of other databases are
    "other"); the rest of this benchmark is "harness", anything else "other". A process that
    started and ended inside the block is not seen.
    """
    result: dict[str, float] = {}
    before = _cpu_ticks_by_process()
    machine_before = _machine_ticks()
    started = time.monotonic()
    try:
        yield result
    finally:
        after = _cpu_ticks_by_process()
        machine_after = _machine_ticks()
        elapsed = time.monotonic() - started
        foreign = _postgres_of_other_databases(database) if database else set()
        ticks: dict[str, int] = defaultdict(int)
        for pid, (total, comm, ppid, pgid) in after.items():
            used = total - before[pid][0] if pid in before else total
            if pgid in groups:
                kind = groups[pgid]
            elif pid in foreign:
                kind = "other"
            elif comm in _SERVICE_NAMES:
                kind = _SERVICE_NAMES[comm]
            elif _is_ours(pid, comm, ppid, pgid):
                kind = "harness"
            else:
                kind = "other"
            ticks[kind] += used
        hertz = os.sysconf("SC_CLK_TCK")
        for kind, used in ticks.items():
            result[kind] = used / hertz / elapsed if elapsed else 0.0
        cpus = os.cpu_count() or 1
        busy, total = (a - b for a, b in zip(machine_after, machine_before, strict=True))
        machine_busy = cpus * busy / total if total else 0.0
        seen = sum(cores for kind, cores in result.items() if kind != "other")
        result["other"] = max(result.get("other", 0.0), machine_busy - seen)


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
    with other_cpu_meter(_database_name(config.database_url)) as other_cpu:
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


def _window_open(procs: Processes, name: str, offset: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait for the load generator's "window open" line (its setup done, the clock running)."""
    deadline = time.monotonic() + 120
    path = procs.log_path(name)
    while b"window open" not in path.read_bytes()[offset:]:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with status {proc.returncode}:\n{procs.tail(name)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{name} did not start its window in 120 s:\n{procs.tail(name)}")
        time.sleep(0.02)


def _database_name(url: str) -> str:
    return urllib.parse.urlsplit(url).path.lstrip("/")


_PG_COUNTERS = (
    "xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted", "tup_fetched",
)  # fmt: skip


def pg_counters(url: str) -> dict[str, int]:
    """The bench database's cumulative counters (transactions, rows) from pg_stat_database."""

    async def read() -> dict[str, int]:
        import asyncpg

        connection = await asyncpg.connect(url)
        try:
            row = await connection.fetchrow(
                f"SELECT {', '.join(_PG_COUNTERS)} FROM pg_stat_database "  # noqa: S608 - fixed names
                "WHERE datname = current_database()"
            )
        finally:
            await connection.close()
        return {name: int(row[name] or 0) for name in _PG_COUNTERS}

    return asyncio.run(read())


def _other_share(split: dict[str, float]) -> float:
    return split.get("other", 0.0) / (os.cpu_count() or 1)


def run_checkout(bench: Bench, prepared: Prepared, running: Running, *, duration: int) -> WrkRun:
    """One run of bench/checkout_load.py (its own process); CPU split measured over its window."""
    assert running.proc is not None  # noqa: S101 - the checkout server runs
    name = "checkout-load"
    output = bench.workdir / f"checkout-{time.monotonic_ns()}.json"
    argv = [
        str(BIN / "python"), str(BENCH_DIR / "checkout_load.py"),
        "--base-url", running.base_url, "--buyers", prepared.env["BENCH_BUYERS"],
        "--skus", prepared.env["BENCH_SKUS"], "--duration", str(duration),
        "--output", str(output),
    ]  # fmt: skip
    log_path = bench.procs.log_path(name)
    offset = log_path.stat().st_size if log_path.exists() else 0
    proc = bench.procs.start(name, argv, env=dict(os.environ))
    groups = {running.proc.pid: "app", proc.pid: "load generator"}
    groups.update({companion.pid: "PSP" for companion in running.companions})
    database = _database_name(bench.config.database_url)
    try:
        _window_open(bench.procs, name, offset, proc)
        counters = pg_counters(bench.config.database_url)
        with cpu_split_meter(groups, database) as split:
            time.sleep(duration)
        after = pg_counters(bench.config.database_url)
        proc.wait(timeout=90)  # the generator gives in-flight flows 30 s, then stops
    except subprocess.TimeoutExpired:
        raise BenchError(f"{name} did not finish:\n{bench.procs.tail(name)}") from None
    finally:
        bench.procs.stop(proc)
    if proc.returncode != 0 or not output.exists():
        raise BenchError(f"{name} failed ({proc.returncode}):\n{bench.procs.tail(name)}")
    data = json.loads(output.read_text())
    paid = max(1, data["paid"])
    data["db_per_order"] = {name: (after[name] - counters[name]) / paid for name in _PG_COUNTERS}
    nan = float("nan")
    return WrkRun(
        rps=data["orders_per_s"],
        requests=data["requests"],
        p50_ms=data["order_p50_ms"] if data["order_p50_ms"] is not None else nan,
        p99_ms=data["order_p99_ms"] if data["order_p99_ms"] is not None else nan,
        non2xx=data["non2xx"],
        socket_errors=data["socket_errors"],
        raw=json.dumps(data),
        other_cpu=_other_share(split),
        extra={**data, "cpu_split": dict(split)},
    )


def run_pgbench(bench: Bench, case: Case, prepared: Prepared, *, duration: int) -> WrkRun:
    """One pgbench run of the case's script; latency percentiles from its per-transaction log."""
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        raise BenchError("pgbench is not installed: run bench/install.sh (make bench does)")
    name = f"pgbench-{case.key}"
    logs = Path(tempfile.mkdtemp(prefix="pgbench-", dir=bench.workdir))
    argv = [
        pgbench, "--no-vacuum", "--protocol=prepared", f"--client={case.clients}",
        f"--jobs={min(case.clients, os.cpu_count() or 1)}", f"--time={duration}",
        f"--file={prepared.env['BENCH_PGBENCH_SCRIPT']}", "--log", f"--log-prefix={logs}/txn",
        bench.config.database_url,
    ]  # fmt: skip
    log_path = bench.procs.log_path(name)
    offset = log_path.stat().st_size if log_path.exists() else 0
    proc = bench.procs.start(name, argv, env=dict(os.environ), cwd=logs)
    try:
        # Measured while pgbench and its backends run: a process gone by the end is not seen.
        time.sleep(min(1.0, duration / 4))
        with cpu_split_meter(
            {proc.pid: "pgbench"}, _database_name(bench.config.database_url)
        ) as split:
            time.sleep(max(0.5, duration - 2 * min(1.0, duration / 4)))
        proc.wait(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{name} did not finish:\n{bench.procs.tail(name)}") from None
    finally:
        bench.procs.stop(proc)
    output = log_path.read_bytes()[offset:].decode(errors="replace")
    tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", output, re.M)
    done = re.search(r"^number of transactions actually processed: (\d+)", output, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", output, re.M)
    if proc.returncode != 0 or tps is None or done is None:
        raise BenchError(f"pgbench failed ({proc.returncode}):\n{output[-3000:]}")
    latencies = sorted(
        int(fields[2]) / 1000
        for path in logs.iterdir()
        for fields in (line.split() for line in path.read_text().splitlines())
        if len(fields) > 2 and fields[2].isdigit()  # "failed" / "skipped" have no latency
    )
    shutil.rmtree(logs, ignore_errors=True)

    def pct(share: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[max(0, min(len(latencies) - 1, round(share * len(latencies) + 0.5) - 1))]

    return WrkRun(
        rps=float(tps.group(1)),
        requests=int(done.group(1)),
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        non2xx=int(failed.group(1)) if failed else 0,
        socket_errors=0,
        raw=output,
        other_cpu=_other_share(split),
        extra={"cpu_split": dict(split)},
    )


def _cpu_text(split: dict[str, float]) -> str:
    order = ["app", "PSP", "PostgreSQL", "Redis", "load generator", "pgbench", "harness", "other"]
    shown = [(kind, split[kind]) for kind in order if split.get(kind, 0.0) >= 0.005]
    return ", ".join(f"{kind} {cores:.2f}" for kind, cores in shown)


def _run_details(run: WrkRun) -> str:
    extra = run.extra
    parts = []
    if "flow_p50_ms" in extra:
        flow50, flow99 = extra["flow_p50_ms"], extra["flow_p99_ms"]
        parts.append(
            f"flow p50 {flow50 or 0:.1f} ms p99 {flow99 or 0:.1f} ms, "
            f"{extra['requests_per_s']:,.0f} HTTP req/s, load generator "
            f"{extra['cpu_cores']:.2f} cores"
        )
    parts.append("CPU cores: " + _cpu_text(extra.get("cpu_split", {})))
    if "db_per_order" in extra:
        db = extra["db_per_order"]
        parts.append(
            f"per paid order {db['xact_commit'] + db['xact_rollback']:.0f} DB transactions, "
            f"{db['tup_inserted'] + db['tup_updated'] + db['tup_deleted']:.0f} rows written"
        )
    if extra.get("error_samples"):
        parts.append("e.g. " + " | ".join(extra["error_samples"][:2]))
    return "; ".join(parts)


# -- servers ------------------------------------------------------------------------------------


@dataclass
class Running:
    variant: Variant
    base_url: str
    proc: subprocess.Popen[bytes] | None  # None: nothing to serve (pgbench talks to PostgreSQL)
    # Processes started with the server and stopped with it (the sandbox PSP).
    companions: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_name: str = ""  # the server's log in the work dir (Processes.log_path)


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
        self._buyers = 0  # buyer accounts registered so far (checkout cases)
        self.ironcart_prepared = False
        self.postgres_version = "?"
        self.postgres_settings = "?"
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
            if dirty:
                # Others may edit the tree during a long run: every process serves one copy.
                target = self.workdir / "source-worktree" / "src"
                shutil.copytree(
                    ROOT / "src", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
                self.source = target
                stamp = dt.datetime.now(dt.UTC).strftime("%H:%M UTC")
                self.commit += f" + uncommitted changes in src/ (working tree copied at {stamp})"
                log(f"serving IronCart from a copy of the working tree's src/ in {target}")
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
        return Running(variant, base, proc, log_name="nginx")

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
        return Running(variant, base, proc, log_name=name)

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
            # Production refuses the sandbox carrier's published test credentials.
            IRONCART_SHIPPING__CARRIER_API_KEY=self.secret_key,
            IRONCART_SHIPPING__WEBHOOK_SECRETS=json.dumps({"sandbox": self.secret_key}),
            # The load comes from one address and one user: limits on (their Redis counter is
            # part of every request's cost) but out of reach. The burst case sets its own.
            IRONCART_ADMISSION__PER_IP="1000000000/minute",
            IRONCART_ADMISSION__PER_USER="1000000000/minute",
            IRONCART_ADMISSION__PER_HOT_RESOURCE="1000000000/minute",
        )
        if self.source != ROOT / "src":
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
        self,
        variant: Variant,
        workers: int,
        server: str = "uvicorn",
        *,
        port: int | None = None,
        **extra: str,
    ) -> Running:
        port = port or free_port()
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
        return Running(variant, base, proc, log_name=name)

    def start_checkout(self, variant: Variant, workers: int, server: str) -> Running:
        """The sandbox PSP (its own process, a fresh store) and IronCart configured to use it."""
        app_port, psp_port = free_port(), free_port()
        while psp_port == app_port:
            psp_port = free_port()
        api_key = "sk_test_bench_" + secrets.token_hex(12)
        webhook_secret = "whsec_bench_" + secrets.token_hex(16)
        argv = [
            str(BIN / "ironcart"), "sandbox-psp", "--host", "127.0.0.1", "--port", str(psp_port),
            "--store", str(self.workdir / f"sandbox-psp-{psp_port}.db"),
            "--api-key", api_key, "--webhook-secret", webhook_secret, "--log-level", "warning",
        ]  # fmt: skip
        if self.config.psp_webhooks:
            webhooks = f"http://127.0.0.1:{app_port}/api/v1/payments/webhooks/sandbox"
            argv += ["--webhook-url", webhooks]
        psp = self.procs.start("sandbox-psp", argv, env=self.ironcart_env())
        try:
            health = f"http://127.0.0.1:{psp_port}/_sandbox/health"
            wait_ready(health, psp, self.procs, "sandbox-psp")
            running = self.start_ironcart(
                variant,
                workers,
                server,
                port=app_port,
                IRONCART_PAYMENTS__PSP_URL=f"http://127.0.0.1:{psp_port}",
                IRONCART_PAYMENTS__PSP_API_KEY=api_key,
                IRONCART_PAYMENTS__WEBHOOK_SECRET=webhook_secret,
                # 32 buyers register and log in from 127.0.0.1 before each case: the per-IP
                # limits of those two routes (not measured) would turn them away.
                IRONCART_IDENTITY__REGISTRATIONS_PER_IP_PER_HOUR="1000000",
                IRONCART_IDENTITY__LOGIN_ATTEMPTS_PER_IP_PER_MINUTE="1000000",
                **self.config.checkout_env,
            )
        except BaseException:
            self.procs.stop(psp)
            raise
        running.companions.append(psp)
        return running

    def buyer_tokens(self, base_url: str, count: int) -> list[str]:
        """`count` customer accounts (registered once a run, through the API), each logged in."""

        def register(index: int) -> None:
            body = json.dumps(
                {"email": _buyer_email(index), "password": BENCH_PASSWORD, "name": f"Buyer {index}"}
            ).encode()
            status, answer = self._post_waiting_out_429(
                base_url + "/api/v1/auth/register", body, "application/json"
            )
            if status not in (201, 409):  # 409: registered by an earlier case of this run
                raise BenchError(f"registering buyer {index}: HTTP {status}: {answer[:300]!r}")

        def login(index: int) -> str:
            form = urllib.parse.urlencode(
                {
                    "grant_type": "password",
                    "username": _buyer_email(index),
                    "password": BENCH_PASSWORD,
                }
            ).encode()
            status, answer = self._post_waiting_out_429(
                base_url + "/api/v1/auth/token", form, "application/x-www-form-urlencoded"
            )
            if status != 200:
                raise BenchError(f"logging buyer {index} in: HTTP {status}: {answer[:300]!r}")
            token: str = json.loads(answer)["access_token"]
            return token

        # Argon2 hashing makes each call take tens of milliseconds: a few at a time.
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(register, range(self._buyers, count)))
            self._buyers = max(self._buyers, count)
            return list(pool.map(login, range(count)))

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

    def stop_running(self, running: Running) -> None:
        """Stop a server and the processes started with it (the server first: it calls them)."""
        for proc in [running.proc, *running.companions]:
            if proc is not None:
                self.procs.stop(proc)

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
        if server == "ironcart-checkout":
            return [
                self._checkout_variant(w, name)
                for name in self.config.checkout_servers
                for w in self.config.checkout_workers
            ]
        if server == "pgbench":
            pgbench = Variant(
                "pgbench",
                f"pgbench -M prepared, PostgreSQL {self.postgres_version.split()[0]}",
                lambda: Running(pgbench, self.config.database_url, None),
                python=False,
            )
            return [pgbench]
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

    def _checkout_variant(self, workers: int, name: str) -> Variant:
        label = f"ironcart serve ({name}), {workers} worker{'s' if workers > 1 else ''} + PSP"
        variant = Variant(
            "ironcart-checkout",
            label,
            lambda: self.start_checkout(variant, workers, name),
            workers=workers,
            http_server=name,
        )
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

    def median_extra(self, key: str) -> float:
        """Median over the runs of a number in their `extra` (NaN when none has it)."""
        values = [r.extra[key] for r in self.runs if r.extra.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    def median_cpu(self) -> dict[str, float]:
        """Median over the runs of the cores each kind of process used."""
        kinds = {kind for r in self.runs for kind in r.extra.get("cpu_split", {})}
        return {
            kind: statistics.median(r.extra.get("cpu_split", {}).get(kind, 0.0) for r in self.runs)
            for kind in kinds
        }

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
    env = {"BENCH_ITEMS": str(RAW_ITEMS), "BENCH_WORKDIR": str(bench.workdir), **case.env}
    token_cache: list[str] = []

    def token() -> str:
        if not token_cache:
            token_cache.append(bench.bearer_token(running.base_url))
        return token_cache[0]

    if case.auth:
        headers.append(("Authorization", f"Bearer {token()}"))
        env["BENCH_TOKEN"] = token()
    if case.driver == "checkout":
        tokens = bench.buyer_tokens(running.base_url, case.clients)
        env["BENCH_BUYERS"] = str(bench.workdir / f"buyers-{case.key}.txt")
        Path(env["BENCH_BUYERS"]).write_text("\n".join(tokens) + "\n")
    if case.setup is not None:
        case.setup(CaseContext(running.base_url, bench.config.database_url, env, token))
    if case.preflight:
        status, body = http("GET", running.base_url + case.path, headers=dict(headers))
        if not 200 <= status < 300:
            raise BenchError(f"GET {case.path} answered HTTP {status}: {body[:300]!r}")
    return Prepared(running.base_url + case.path, headers, env)


def run_load(
    bench: Bench, case: Case, prepared: Prepared, running: Running, duration: int
) -> WrkRun:
    """One run of `case`'s load: wrk, the checkout load generator or pgbench."""
    if case.driver == "checkout":
        return run_checkout(bench, prepared, running, duration=duration)
    if case.driver == "pgbench":
        return run_pgbench(bench, case, prepared, duration=duration)
    return run_wrk(bench.config, prepared, duration=duration, script=case.script)


def measure(bench: Bench, case: Case, running: Running) -> CaseResult:
    config = bench.config
    result = CaseResult(case, running.variant.label)
    unit = {"checkout": "paid orders/s", "pgbench": "txn/s"}.get(case.driver, "req/s")
    try:
        prepared = prepare_case(bench, case, running)
        if config.warmup:
            run_load(bench, case, prepared, running, config.warmup)
        for index in range(config.repeats):
            wait_for_quiet(config.quiet_wait)
            run = run_load(bench, case, prepared, running, config.duration_of(case))
            result.runs.append(run)
            log(
                f"  {case.key} [{running.variant.label}] run {index + 1}/{config.repeats}: "
                f"{run.rps:,.0f} {unit}, p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, "
                f"non-2xx {run.non2xx}, socket errors {run.socket_errors}, "
                f"other processes' CPU {run.other_cpu:.0%}"
                + (f"; {_run_details(run)}" if run.extra else "")
            )
    except BenchError as error:
        result.error = str(error)
    if result.failed:
        log(f"!! case {case.key} ({case.name}) FAILED: {result.failure()}")
        if running.log_name:  # the work dir and its logs go at the end of the run
            tail = bench.procs.tail(running.log_name, lines=5)
            log(f"   last lines of the {running.log_name} log:\n{tail[-3000:]}")
    return result


# -- profiling ----------------------------------------------------------------------------------


def profile(bench: Bench, case: Case, running: Running) -> ProfileResult:
    """One extra, uncounted run of `case` while py-spy records every worker of the server."""
    config = bench.config
    if not running.variant.python or running.proc is None:
        raise BenchError(f"case {case.key} is served by {running.variant.label}: not Python")
    prepared = prepare_case(bench, case, running)
    py_spy = BIN / "py-spy"
    if not py_spy.exists():
        raise BenchError("BENCH_PROFILE=1 needs py-spy: run bench/install.sh with BENCH_PROFILE=1")
    out_dir = ROOT / "docs" / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", case.name.lower()).strip("-")
    svg = out_dir / f"{case.key}-{slug}.svg"
    duration = config.duration_of(case)
    argv = [
        str(py_spy), "record", "--pid", str(running.proc.pid), "--subprocesses",
        "--rate", "200", "--duration", str(duration), "--gil", "--format", "flamegraph",
        "--output", str(svg),
    ]  # fmt: skip
    log(f"  profiling {case.key} with py-spy for {duration}s -> {svg.relative_to(ROOT)}")
    spy = bench.procs.start(f"py-spy-{case.key}", argv, env=dict(os.environ))
    try:
        time.sleep(1.0)  # let py-spy attach to every worker
        run = run_load(bench, case, prepared, running, duration)
        spy.wait(timeout=duration + 90)
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
        if server.startswith("ironcart") and not bench.ironcart_prepared:
            log("preparing IronCart: ironcart migrate, ironcart keys rotate, ironcart seed")
            bench.prepare_ironcart()
            bench.ironcart_prepared = True
        selector = next((c for c in server_cases if c.key == VARIANT_CASE.get(server)), None)
        running: Running | None = None
        try:
            best = variants[0]
            if len(variants) > 1 and selector is not None:
                tried: list[CaseResult] = []
                for variant in variants:
                    log(f"{server}: trying {variant.label} on case {selector.key}")
                    try:
                        running = variant.start()
                    except BenchError as error:  # the other variants may still start
                        log(f"!! {variant.label} did not start: {error}")
                        tried.append(CaseResult(selector, variant.label, error=str(error)))
                        continue
                    tried.append(measure(bench, selector, running))
                    if variant is not variants[-1]:
                        bench.stop_running(running)
                        running = None
                trials[server] = tried
                scored = [(r.rps if not r.failed else -1.0, i) for i, r in enumerate(tried)]
                best_index = max(scored)[1]
                best = variants[best_index]
                results[selector.key] = tried[best_index]
                if running is not None and running.variant is not best:
                    bench.stop_running(running)
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
                bench.stop_running(running)
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
        f"{config.warmup}s unrecorded warm-up)"
        + (
            f"; checkout and pgbench cases {config.checkout_duration}s a run "
            f"(BENCH_CHECKOUT_DURATION)"
            if any(case.driver != "wrk" for case in cases)
            else ""
        ),
        "",
    ]
    if not config.is_default_length:
        lines += [
            "> **Quick run** (shorter or fewer runs than the default 15 s × 3, 30 s for "
            "checkout): a smoke test of the harness, not numbers to compare.",
            "",
        ]
    failed = [r for r in results.values() if r.failed]
    if failed:
        lines += [
            "> **FAILED cases:** " + "; ".join(f"{r.case.key}: {r.failure()}" for r in failed),
            "",
        ]
    ref_heads = " | ".join(f"÷ {key} ({ref_names[key]})" for key in REFERENCES)
    http_cases = [case for case in cases if case.driver == "wrk" and case.key in results]
    lines += (
        [
            "### Results",
            "",
            "| case | what | served by | req/s median (min–max) | p50 | p99 | non-2xx | errors "
            f"| other CPU | {ref_heads} |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(REFERENCES),
        ]
        if http_cases
        else []
    )
    for case in http_cases:
        result = results[case.key]
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
    if http_cases:
        lines += ["", "Cases:", ""]
        lines += [f"- **{c.key}** {c.name} — {c.description}." for c in http_cases]
    lines += _checkout_section(bench, [c for c in cases if c.driver != "wrk"], results)
    if outcome.trials:
        lines += [
            "",
            "### Server and worker choice",
            "",
            "Each variant ran the server's selection case with the same method; the fastest "
            "(median req/s; for the checkout: paid orders/s, p50 and p99 of the order request) "
            "served the server's other cases.",
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
    if any(case.driver != "wrk" and case.key in results for case in cases):
        lines += _checkout_method(bench)
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


CHECKOUT_TARGET_ORDERS = 200.0  # paid orders/s (issue: checkout throughput)
CHECKOUT_TARGET_P99_MS = 250.0  # order request
_CPU_COLUMNS = (
    "app",
    "PSP",
    "PostgreSQL",
    "Redis",
    "load generator",
    "pgbench",
    "harness",
    "other",
)


def _checkout_section(bench: Bench, cases: list[Case], results: dict[str, CaseResult]) -> list[str]:
    """The checkout cases and their pgbench ceiling: throughput, latencies, CPU split, answers."""
    shown = [case for case in cases if case.key in results]
    if not shown:
        return []
    reference = results.get(CHECKOUT_REFERENCE)
    lines = [
        "",
        "### Checkout",
        "",
        f"Headline: paid orders (201) per second; latency of the order request and of the whole "
        f"flow (cart, add, order) of the paid orders. Target: ≥ {CHECKOUT_TARGET_ORDERS:,.0f} "
        f"paid orders/s with order p99 < {CHECKOUT_TARGET_P99_MS:,.0f} ms. pgbench rows: "
        "transactions/s and transaction latency.",
        "",
        "| case | served by | orders/s median (min–max) | order p50 | order p99 | flow p50 "
        f"| flow p99 | HTTP req/s | non-2xx | errors | load generator CPU | ÷ {CHECKOUT_REFERENCE} "
        "| target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case in shown:
        result = results[case.key]
        spread = (
            f"**{_fmt_rps(result.rps)}** ({_fmt_rps(result.rps_min)}–{_fmt_rps(result.rps_max)})"
            if result.runs
            else "FAILED"
        )
        checkout = case.driver == "checkout"
        target = "–"
        if checkout and result.runs:
            met = result.rps >= CHECKOUT_TARGET_ORDERS and result.p99 < CHECKOUT_TARGET_P99_MS
            target = "met" if met else "**missed**"
        loadgen = result.median_extra("cpu_cores")
        lines.append(
            f"| {case.key} | {result.variant} | {spread} | {_fmt_ms(result.p50)} | "
            f"{_fmt_ms(result.p99)} | "
            + (
                f"{_fmt_ms(result.median_extra('flow_p50_ms'))} | "
                f"{_fmt_ms(result.median_extra('flow_p99_ms'))} | "
                f"{_fmt_rps(result.median_extra('requests_per_s'))} | "
                if checkout
                else "– | – | – | "
            )
            + f"{result.non2xx} | {result.socket_errors} | "
            + (f"{loadgen:.2f} cores | " if checkout and loadgen == loadgen else "– | ")
            + f"{_ratio(result, reference)} | {target} |"
        )
    lines += ["", "Cases:", ""]
    lines += [f"- **{c.key}** {c.name} — {c.description}." for c in shown]
    cpus = os.cpu_count() or 1
    lines += [
        "",
        f"CPU used during the measured window, in cores of the machine's {cpus} (median over "
        "the runs; from /proc; `harness` is this script and its other children):",
        "",
        "| case | " + " | ".join(_CPU_COLUMNS) + " | idle | CPU ms per order (pgbench: per "
        "transaction): app / PSP / PostgreSQL |",
        "|---|" + "---:|" * (len(_CPU_COLUMNS) + 2),
    ]
    for case in shown:
        result = results[case.key]
        split = result.median_cpu()
        if not split:
            continue
        idle = max(0.0, cpus - sum(split.values()))
        cells = " | ".join(f"{split.get(kind, 0.0):.2f}" for kind in _CPU_COLUMNS)
        cost = " / ".join(
            f"{_cpu_ms_per_unit(result, kind):.1f}" for kind in ("app", "PSP", "PostgreSQL")
        )
        lines.append(f"| {case.key} | {cells} | {idle:.2f} | {cost} |")
    work = [
        (case.key, _db_work_text(results[case.key])) for case in shown if case.driver == "checkout"
    ]
    if any(text for _, text in work):
        lines += [
            "",
            "Database work per paid order (the bench database's pg_stat_database counters over "
            "the window, divided by the paid orders; the whole flow and the app's background "
            "jobs, median over the runs):",
            "",
        ]
        lines += [f"- **{key}**: {text}" for key, text in work if text]
    answers = [
        (case.key, _answers_text(results[case.key])) for case in shown if case.driver == "checkout"
    ]
    if any(text for _, text in answers):
        lines += ["", "Answers by route and status (all measured runs):", ""]
        lines += [f"- **{key}**: {text}" for key, text in answers if text]
    return lines


def _checkout_method(bench: Bench) -> list[str]:
    config = bench.config
    webhooks = (
        "sending its webhooks (authorized, captured) to the app as in production"
        if config.psp_webhooks
        else "without webhooks (BENCH_PSP_WEBHOOKS=0)"
    )
    extra = ", ".join(f"{k}={v}" for k, v in config.checkout_env.items())
    return [
        f"- **Checkout** (cases checkout, checkout-hot): the script starts the sandbox PSP "
        f"(`ironcart sandbox-psp`, its own process on 127.0.0.1, a fresh SQLite store) {webhooks}, "
        "then `ironcart serve` as above with IRONCART_PAYMENTS__PSP_URL, __PSP_API_KEY and "
        "__WEBHOOK_SECRET pointing at it; both are stopped after the cases. Workers N in "
        + ", ".join(str(w) for w in config.checkout_workers)
        + " and S in "
        + ", ".join(config.checkout_servers)
        + " are tried on case checkout and the fastest serves checkout-hot. The per-IP limits of "
        "registration and login are raised on this server (the 32 buyers sign up and in from "
        "127.0.0.1 before each case; those routes are not measured)"
        + (f"; extra settings (BENCH_CHECKOUT_ENV): {extra}" if extra else "")
        + ". Settings otherwise default: IRONCART_ORDERING__MAX_CONCURRENT_CHECKOUTS "
        "(bulkhead per worker) 8, IRONCART_DATABASE_POOL_SIZE 10 (+10 overflow) per worker.",
        "- Buyers: 32 customer accounts registered through the API once a run and logged in "
        "before each case (Argon2 outside the measured window). Stock: the case's SKUs (1,000 "
        "of published products, or one for checkout-hot) are topped up in the main warehouse "
        "before each case, with a receipt in the inventory ledger for each change.",
        "- Load: `bench/checkout_load.py`, one process, asyncio on uvloop with a raw HTTP/1.1 "
        "client, one keep-alive connection per buyer; each buyer loops cart → add → order "
        f"(fresh Idempotency-Key, `tok_visa`). Each case: {config.warmup}s unrecorded warm-up, "
        f"then {config.repeats} × {config.checkout_duration}s; only answers completed inside "
        "the window count; flows cut by its end are finished (≤ 30 s) and not counted; before "
        "each window the buyers' open carts are emptied. A failed order's line is removed "
        "from the cart so that every order has one line. More than "
        f"{ERROR_LIMIT:.0%} of non-2xx or socket errors fails the case.",
        "- Everything shares the machine's cores: the app's workers, the PSP, PostgreSQL, Redis "
        "and the load generator (its CPU is in the table). The CPU split is read from /proc "
        "over the measured window.",
        "- **pgbench** (cases pgbench, pgbench-hot): `pgbench --no-vacuum --protocol=prepared "  # noqa: S608 - report text
        f"--client=32 --jobs={min(32, os.cpu_count() or 1)} --time="
        f"{config.checkout_duration}` on the bench database with the script in "
        "`bench/cases.py` (`PGBENCH_SCRIPT`): `BEGIN; UPDATE stock SET on_hand = on_hand - 1 "
        "... WHERE sku = :sku AND on_hand - reserved >= 1; INSERT order ... RETURNING id; "
        "INSERT line; END` on tables of its own (schema `bench`, recreated before each case). "
        "Latency percentiles from its per-transaction log (`--log`). The checkout cases are "
        "divided by the pgbench case (random SKU of 1,000).",
        f"- PostgreSQL settings: {bench.postgres_settings}.",
    ]


def _cpu_ms_per_unit(result: CaseResult, kind: str) -> float:
    """Median over the runs of the CPU milliseconds `kind` used per paid order (or transaction)."""
    costs = [
        run.extra.get("cpu_split", {}).get(kind, 0.0) / run.rps * 1000
        for run in result.runs
        if run.rps > 0
    ]
    return statistics.median(costs) if costs else float("nan")


def _db_work_text(result: CaseResult) -> str:
    per_order = [run.extra["db_per_order"] for run in result.runs if "db_per_order" in run.extra]
    if not per_order:
        return ""

    def median(name: str) -> float:
        return statistics.median(item[name] for item in per_order)

    return (
        f"{median('xact_commit') + median('xact_rollback'):.0f} transactions "
        f"({median('xact_commit'):.0f} committed, {median('xact_rollback'):.0f} rolled back), "
        f"{median('tup_inserted'):.0f} rows inserted, {median('tup_updated'):.0f} updated, "
        f"{median('tup_deleted'):.0f} deleted, {median('tup_fetched'):.0f} fetched"
    )


def _answers_text(result: CaseResult) -> str:
    total: dict[str, int] = defaultdict(int)
    for run in result.runs:
        for route, count in run.extra.get("answers", {}).items():
            total[route] += count
    samples = [s for run in result.runs for s in run.extra.get("error_samples", [])][:3]
    text = ", ".join(f"`{route}` {count:,}" for route, count in sorted(total.items()))
    if samples:
        text += "; e.g. " + "; ".join(f"`{sample[:200]}`" for sample in samples)
    return text


def _profile_note(result: CaseResult) -> str:
    prof = result.profile
    assert prof is not None  # noqa: S101
    rel = prof.svg.relative_to(ROOT)
    unit = "paid orders/s" if result.case.driver == "checkout" else "req/s"
    lines = [
        f"- **Profile of {result.case.key} ({result.case.name})**: [{rel.name}]"
        f"(profiles/{rel.name}), py-spy at 200 Hz over every worker during one extra "
        f"{result.case.key} run ({_fmt_rps(prof.rps)} {unit} under the profiler, not counted); "
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
    width = max([4, *(len(case.key) for case in cases)])
    print()
    print(
        f"{'case':<{width}} {'name':<24} {'rate':>10} {'min':>9} {'max':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'non2xx':>7} {'other':>6}  served by"
    )
    for case in cases:
        r = outcome.results.get(case.key)
        if r is None:
            continue
        status = "  FAILED" if r.failed else ""
        unit = {"checkout": " paid orders/s", "pgbench": " txn/s"}.get(case.driver, " req/s")
        print(
            f"{case.key:<{width}} {case.name[:24]:<24} {r.rps:>10,.0f} {r.rps_min:>9,.0f} "
            f"{r.rps_max:>9,.0f} "
            f"{r.p50:>8.2f} {r.p99:>8.2f} {r.non2xx:>7} {r.other_cpu:>6.0%}  "
            f"{r.variant}{status} ({unit.strip()})"
        )
    print()


# -- main ---------------------------------------------------------------------------------------


def _selected_cases(config: Config) -> list[Case]:
    keys = [case.key for case in CASES]
    duplicates = {key for key in keys if keys.count(key) > 1}
    if duplicates:
        raise SystemExit(f"bench/cases.py: duplicate case keys {sorted(duplicates)}")
    unknown = [key for key in config.only if key not in [*keys, "burst"]]
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


def _run_burst(config: Config) -> int:
    """The burst case (bench/burst.py): its own driver, its own section of the report."""
    if config.only and "burst" not in config.only:
        return 0
    import burst

    return burst.run(config)


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
    if config.only == ["burst"]:
        return _run_burst(config)
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
            bench.postgres_version, bench.postgres_settings = asyncio.run(
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
    if _run_burst(config) != 0:
        return 1
    if failed:
        for result in failed:
            log(f"!! FAILED {result.case.key} ({result.case.name}): {result.failure()}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
