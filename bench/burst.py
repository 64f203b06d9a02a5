"""`make bench` case `burst` (issue 6, acceptance 3): 5x the measured capacity for 20 s.

1. capacity: closed loop (BURST_CONNECTIONS connections, each sending its next request when the
   last is answered) on `GET /api/v1/me` with a bearer token: req/s of 2xx answers;
2. unloaded: open loop at 10 % of that capacity: p50 / p99 of the answers;
3. burst: open loop at 5x capacity for BENCH_BURST_SECONDS (20), then 10 % again for
   BENCH_RECOVERY_SECONDS (15): share of the burst refused (429/503), p50/p99 of the admitted
   ones, and the time after the burst until five 1-second buckets in a row are normal again:
   no worse than the worst second of the unloaded run (p99, at least 1.5x the unloaded p99,
   and refusals).

All three run twice: against the app directly (its own admission control refuses), then
through the nginx edge that `ironcart deploy nginx --max-in-flight N` generates (nginx sends
an instance at most N requests at once and answers the excess 503 itself, without Python).
N is BENCH_BURST_EDGE_IN_FLIGHT, default 4: capacity (~800 req/s) x a mean latency budget of
5 ms (p99 comes out at 2-3x the mean), for the instance's two workers together.

Open loop: requests are sent at their scheduled times whatever the answers (wrk is closed loop
and would slow down with the server); latency counts from the scheduled time, so a request the
client could not send on time is not hidden (no coordinated omission). A minimal HTTP/1.1
client on asyncio (uvloop) keeps the generator cheap; it still shares the machine's CPUs.

The section it writes goes between `<!-- bench:burst -->` markers in BENCH_OUTPUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from run import (
    Bench,
    BenchError,
    Config,
    Running,
    Variant,
    _prepare_database,
    _workdir,
    free_port,
    log,
    wait_ready,
)

from ironcart.deployment.nginx import NginxOptions, prepare_prefix, render_config

START, END = "<!-- bench:burst -->", "<!-- /bench:burst -->"
PATH = "/api/v1/me"
BURST_SECONDS = int(os.environ.get("BENCH_BURST_SECONDS", "20"))
RECOVERY_SECONDS = int(os.environ.get("BENCH_RECOVERY_SECONDS", "15"))
UNLOADED_SECONDS = 10
CAPACITY_SECONDS = int(os.environ.get("BENCH_BURST_CAPACITY_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BURST_CONNECTIONS", "32"))
MAX_CONNECTIONS = 1000  # open loop: connections the generator may open at most
STALE = -2  # the server had closed the kept-alive connection before this request
EDGE_IN_FLIGHT = int(os.environ.get("BENCH_BURST_EDGE_IN_FLIGHT", "4"))
TIMEOUT = 10.0
# Admission bounds for this case (per worker): in flight ~ capacity x the latency budget.
ADMISSION = {
    "IRONCART_ADMISSION__MAX_IN_FLIGHT_LOW": "12",
    "IRONCART_ADMISSION__MAX_IN_FLIGHT_NORMAL": "24",
    "IRONCART_ADMISSION__MAX_IN_FLIGHT_HIGH": "128",
    "IRONCART_ADMISSION__MAX_LAG_LOW_MS": "25",
    "IRONCART_ADMISSION__MAX_LAG_NORMAL_MS": "60",
}


@dataclass(frozen=True, slots=True)
class Sample:
    due: float  # scheduled send time, seconds from the start of the run
    latency: float  # seconds from `due` to the last byte of the answer
    status: int  # HTTP status; 0: error or timeout; -1: not sent (no connection left)


class Load:
    """Sends one fixed GET at scheduled times over a pool of keep-alive connections."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.request = (
            f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0
        self.samples: list[Sample] = []
        self.closing: set[int] = set()  # connections the server said it closes after answering
        self.errors: Counter[str] = Counter()

    async def _exchange(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> int:
        """One request on `conn`; returns the status, or -2 when the server had closed the
        connection before answering (an idle keep-alive connection it timed out)."""
        reader, writer = conn
        writer.write(self.request)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as error:
            if error.partial:
                raise
            return STALE
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                self.closing.add(id(writer))
        await reader.readexactly(length)
        return int(head.split(b" ", 2)[1])

    async def one(self, due: float, origin: float) -> None:
        """A request due at `due`: on an idle connection, or a new one. As an HTTP client
        does, a request that found its kept-alive connection closed by the server (before any
        byte of an answer) is sent again on a new connection; latency still counts from `due`.
        """
        loop = asyncio.get_running_loop()
        conn = self.idle.pop() if self.idle else None
        if conn is None and self.opened >= MAX_CONNECTIONS:
            self.samples.append(Sample(due, 0.0, -1))
            return
        try:
            if conn is None:
                self.opened += 1
                conn = await asyncio.open_connection("127.0.0.1", self.port)
            status = await asyncio.wait_for(self._exchange(conn), TIMEOUT)
            if status == STALE:
                conn[1].close()
                conn = await asyncio.open_connection("127.0.0.1", self.port)
                status = await asyncio.wait_for(self._exchange(conn), TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
            self.samples.append(Sample(due, loop.time() - origin - due, 0))
            self.errors[type(error).__name__] += 1
            self.opened -= 1
            if conn is not None:
                conn[1].close()
            return
        self.samples.append(Sample(due, loop.time() - origin - due, status))
        if status == STALE or id(conn[1]) in self.closing:
            self.closing.discard(id(conn[1]))
            self.opened -= 1
            conn[1].close()
        else:
            self.idle.append(conn)

    async def open_loop(self, schedule: list[float]) -> list[Sample]:
        """Send a request at each time of `schedule` (seconds from now), answered or not."""
        loop = asyncio.get_running_loop()
        origin = loop.time()
        tasks = set()
        for due in schedule:
            delay = origin + due - loop.time()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.one(due, origin))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.wait(set(tasks))
        return self.samples

    async def closed_loop(self, connections: int, seconds: float) -> list[Sample]:
        loop = asyncio.get_running_loop()
        origin = loop.time()

        async def worker() -> None:
            while loop.time() - origin < seconds:
                await self.one(loop.time() - origin, origin)

        await asyncio.gather(*(worker() for _ in range(connections)))
        return self.samples

    def close(self) -> None:
        for _reader, writer in self.idle:
            writer.close()


def run_load(port: int, token: str, action: Callable[[Load], object]) -> list[Sample]:
    async def go() -> list[Sample]:
        load = Load(port, token)
        try:
            await action(load)  # type: ignore[misc]
        finally:
            load.close()
        if load.errors:
            log(f"burst: requests that failed, by error: {dict(load.errors)}")
        return load.samples

    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(go())
    return asyncio.run(go())


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def schedule(rate: float, start: float, seconds: float) -> list[float]:
    return [start + index / rate for index in range(int(rate * seconds))]


@dataclass
class BurstResult:
    capacity: float
    connections: int  # of the closed loop that measured the capacity
    unloaded_p50: float
    unloaded_p99: float
    offered: float
    burst: Counter[int]
    admitted_p50: float
    admitted_p99: float
    recovery_seconds: float | None
    normal: Normal
    buckets: list[Bucket]


Bucket = tuple[int, int, int, float]  # (second, answered 200, not answered 200, p99 of the 200s)
SUSTAINED_SECONDS = 5  # "recovered": this many normal seconds in a row


def _buckets(samples: list[Sample], start: float, seconds: int) -> list[Bucket]:
    buckets = []
    for second in range(seconds):
        inside = [s for s in samples if start + second <= s.due < start + second + 1]
        ok = [s.latency for s in inside if s.status == 200]
        buckets.append((second, len(ok), len(inside) - len(ok), percentile(ok, 0.99)))
    return buckets


@dataclass(frozen=True)
class Normal:
    """What a second of the unloaded run looks like at worst: a bucket after the burst is
    normal when it is no worse. (A one-second p99 of ~50-100 answers is nearly their maximum:
    comparing it with the p99 of a whole run would call ordinary seconds abnormal.)"""

    p99: float  # seconds
    refused: int

    @classmethod
    def of(cls, unloaded: list[Sample], seconds: int, unloaded_p99: float) -> Normal:
        buckets = _buckets(unloaded, 0, seconds)
        worst = max((p99 for _s, ok, _bad, p99 in buckets if ok), default=unloaded_p99)
        return cls(max(1.5 * unloaded_p99, worst), max(bad for _s, _ok, bad, _p99 in buckets))

    def holds(self, bucket: Bucket) -> bool:
        _second, _ok, refused, p99 = bucket
        return refused <= self.refused and p99 <= self.p99


def _recovery(samples: list[Sample], normal: Normal) -> tuple[float | None, list[Bucket]]:
    """Seconds after the burst until SUSTAINED_SECONDS normal seconds in a row begin."""
    buckets = _buckets(samples, BURST_SECONDS, RECOVERY_SECONDS)
    good = [normal.holds(bucket) for bucket in buckets]
    for second in range(len(buckets) - SUSTAINED_SECONDS + 1):
        if all(good[second : second + SUSTAINED_SECONDS]):
            return float(second), buckets
    return None, buckets


def measure(port: int, token: str, connections: int = CONNECTIONS) -> BurstResult:
    """`connections`: of the closed loop measuring capacity (behind an in-flight limit, no
    more than the limit, or the loop spins on instant refusals and measures those)."""
    log(f"burst: warm-up, then capacity: closed loop, {connections} connections")
    run_load(port, token, lambda load: load.closed_loop(connections, 3))
    samples = run_load(port, token, lambda load: load.closed_loop(connections, CAPACITY_SECONDS))
    capacity = sum(1 for s in samples if s.status == 200) / CAPACITY_SECONDS
    if capacity < 10:
        answers = Counter(s.status for s in samples)
        raise BenchError(f"burst: capacity {capacity:.0f} req/s; answers {answers}")
    calm = capacity * 0.1
    log(f"burst: capacity {capacity:,.0f} req/s; unloaded at {calm:,.0f} req/s")
    unloaded = run_load(
        port, token, lambda load: load.open_loop(schedule(calm, 0, UNLOADED_SECONDS))
    )
    unloaded_ok = [s.latency for s in unloaded if s.status == 200]
    offered = 5 * capacity
    log(f"burst: {offered:,.0f} req/s for {BURST_SECONDS} s, then {calm:,.0f} req/s")
    plan = schedule(offered, 0, BURST_SECONDS) + schedule(calm, BURST_SECONDS, RECOVERY_SECONDS)
    samples = run_load(port, token, lambda load: load.open_loop(plan))
    in_burst = [s for s in samples if s.due < BURST_SECONDS]
    admitted = [s.latency for s in in_burst if s.status == 200]
    unloaded_p99 = percentile(unloaded_ok, 0.99)
    normal = Normal.of(unloaded, UNLOADED_SECONDS, unloaded_p99)
    recovery, buckets = _recovery(samples, normal)
    return BurstResult(
        capacity=capacity,
        connections=connections,
        unloaded_p50=percentile(unloaded_ok, 0.5),
        unloaded_p99=unloaded_p99,
        offered=offered,
        burst=Counter(s.status for s in in_burst),
        admitted_p50=percentile(admitted, 0.5),
        admitted_p99=percentile(admitted, 0.99),
        recovery_seconds=recovery,
        normal=normal,
        buckets=buckets,
    )


def _verdict(result: BurstResult) -> tuple[str, int]:
    """(verdict, requests that failed: neither answered 200 nor refused 429/503)."""
    total = sum(result.burst.values())
    failed = total - result.burst[429] - result.burst[503] - result.burst[200]
    met = (
        result.admitted_p99 / result.unloaded_p99 < 4
        and result.recovery_seconds is not None
        and result.recovery_seconds <= 5
        and failed == 0
    )
    return ("met" if met else "**missed**"), failed


def _rows(result: BurstResult) -> list[str]:
    ms = 1000
    total = sum(result.burst.values())
    refused = result.burst[429] + result.burst[503]
    verdict, failed = _verdict(result)
    ratio = result.admitted_p99 / result.unloaded_p99
    recovery = (
        "never (within the window)"
        if result.recovery_seconds is None
        else f"{result.recovery_seconds:.0f} s"
    )
    return [
        f"{result.capacity:,.0f} req/s ({result.connections} connections)",
        f"{result.unloaded_p50 * ms:.1f} / {result.unloaded_p99 * ms:.1f} ms",
        f"{result.offered:,.0f} req/s x {BURST_SECONDS} s = {total:,}",
        f"{result.burst[200]:,} ({result.burst[200] / total:.0%})",
        f"{result.burst[429]:,} / {result.burst[503]:,} ({refused / total:.0%})",
        f"{failed:,} ({result.burst[0]:,} errors or timeouts, {result.burst[-1]:,} not sent)",
        f"{result.admitted_p50 * ms:.1f} / {result.admitted_p99 * ms:.1f} ms = **{ratio:.1f}x**",
        recovery,
        verdict,
    ]


MEASURES = (
    "capacity (closed loop)",
    "unloaded (10 % of capacity) p50 / p99",
    "offered during the burst (requests)",
    "admitted (200)",
    "refused 429 / 503",
    "errors, timeouts or not sent",
    "admitted p50 / p99, x the unloaded p99 (bound: 4x)",
    "recovery: 5 s in a row as normal as the unloaded run's worst second (bound: 5 s)",
    "verdict",
)


def render(results: list[tuple[str, BurstResult]], label: str, machine: str, when: str) -> str:
    columns = [_rows(result) for _name, result in results]
    lines = [
        START,
        "## Burst: 5x capacity for 20 s (issue 6, acceptance 3)",
        "",
        f"Run {when} on {machine}; {label}; `GET {PATH}` with a bearer token (token check, "
        "one PostgreSQL read), production mode on PostgreSQL and Redis. Admission bounds of "
        "the app (per worker): "
        + ", ".join(f"`{k}={v}`" for k, v in ADMISSION.items())
        + f". The edge: nginx from `ironcart deploy nginx --instances all=... --max-in-flight "
        f"{EDGE_IN_FLIGHT}`. Method: `bench/burst.py` (closed-loop capacity, then an open-loop "
        "generator; capacity, unloaded latency and the burst are measured for each setup).",
        "",
        "| measure | " + " | ".join(name for name, _result in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    lines += [
        f"| {measure} | " + " | ".join(column[row] for column in columns) + " |"
        for row, measure in enumerate(MEASURES)
    ]
    for name, result in results:
        lines += [
            "",
            f"After the burst, {name} (1-second buckets at 10 % of capacity; normal: p99 <= "
            f"{result.normal.p99 * 1000:.0f} ms, refused <= {result.normal.refused}): "
            + "; ".join(
                f"+{second}s {ok} ok/{bad} refused p99 {p99 * 1000:.0f} ms"
                for second, ok, bad, p99 in result.buckets[:8]
            )
            + ".",
        ]
    lines.append(END)
    return "\n".join(lines) + "\n"


def start_edge(bench: Bench, app_port: int) -> Running:
    """nginx on a free port in front of the app, on the config `ironcart deploy nginx` makes."""
    port = free_port()
    options = NginxOptions(
        prefix=bench.workdir / "edge",
        listen=f"127.0.0.1:{port}",
        user="root",  # the work dir is root's: workers as nobody could not write temp files
        worker_processes=1,  # one core is left to the app's two workers and the generator
        max_in_flight_per_instance=EDGE_IN_FLIGHT,
    )
    prepare_prefix(options.prefix)
    config = options.prefix / "nginx.conf"
    config.write_text(render_config({"all": (f"127.0.0.1:{app_port}",)}, options))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    argv = [nginx, "-p", str(options.prefix), "-c", str(config), "-g", "daemon off;"]
    proc = bench.procs.start("edge-nginx", argv, env=dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    wait_ready(base + "/healthz", proc, bench.procs, "edge-nginx")
    variant = Variant("edge", "nginx edge", lambda: start_edge(bench, app_port), python=False)
    return Running(variant, base, proc, log_name="edge-nginx")


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def run(config: Config) -> int:
    """Prepare the bench database, start IronCart (2 workers), measure, write the section."""
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with _workdir() as workdir:
        (workdir / "logs").mkdir()
        bench = Bench(config, workdir)
        try:
            bench.export_source()
            asyncio.run(_prepare_database(config.database_url, config.fresh_db))
            if not bench.ironcart_prepared:
                bench.prepare_ironcart()
            workers = int(os.environ.get("BENCH_BURST_WORKERS", "2"))
            label = f"ironcart serve (uvicorn), {workers} workers"
            variant = Variant("ironcart", label, lambda: bench.start_ironcart(variant, workers))
            running = bench.start_ironcart(variant, workers, **ADMISSION)
            port = int(running.base_url.rsplit(":", 1)[1])
            token = bench.bearer_token(running.base_url)
            results = [("app directly", measure(port, token))]
            edge = start_edge(bench, port)
            edge_port = int(edge.base_url.rsplit(":", 1)[1])
            behind_edge = measure(edge_port, token, min(CONNECTIONS, EDGE_IN_FLIGHT))
            results.append((f"through nginx, --max-in-flight {EDGE_IN_FLIGHT}", behind_edge))
        except BenchError as error:
            log(f"!! burst: {error}")
            return 1
        finally:
            bench.procs.stop_all()
    machine = f"{os.cpu_count()} CPUs"
    write_section(config.output, render(results, variant.label, machine, started))
    log(f"burst: wrote its section to {config.output}")
    return 0
