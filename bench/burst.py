"""`make bench` case `burst` (issue 6, acceptance 3): 5x the measured capacity for 20 s.

1. capacity: closed loop (BURST_CONNECTIONS connections, each sending its next request when the
   last is answered) on `GET /api/v1/me` with a bearer token: req/s of 2xx answers;
2. unloaded: open loop at 10 % of that capacity: p50 / p99 of the answers;
3. burst: open loop at 5x capacity for BENCH_BURST_SECONDS (20), then 10 % again for
   BENCH_RECOVERY_SECONDS (15): share of the burst refused (429/503), p50/p99 of the admitted
   ones, and the time after the burst until every 1-second bucket has its p99 within 1.5x the
   unloaded p99 again and nothing refused.

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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from run import Bench, BenchError, Config, Variant, _prepare_database, _workdir, log

START, END = "<!-- bench:burst -->", "<!-- /bench:burst -->"
PATH = "/api/v1/me"
BURST_SECONDS = int(os.environ.get("BENCH_BURST_SECONDS", "20"))
RECOVERY_SECONDS = int(os.environ.get("BENCH_RECOVERY_SECONDS", "15"))
CAPACITY_SECONDS = int(os.environ.get("BENCH_BURST_CAPACITY_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BURST_CONNECTIONS", "32"))
MAX_CONNECTIONS = 1000  # open loop: connections the generator may open at most
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

    async def _exchange(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> int:
        reader, writer = conn
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        return int(head.split(b" ", 2)[1])

    async def one(self, due: float, origin: float) -> None:
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
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            self.samples.append(Sample(due, loop.time() - origin - due, 0))
            self.opened -= 1
            if conn is not None:
                conn[1].close()
            return
        self.samples.append(Sample(due, loop.time() - origin - due, status))
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
    unloaded_p50: float
    unloaded_p99: float
    offered: float
    burst: Counter[int]
    admitted_p50: float
    admitted_p99: float
    recovery_seconds: float | None
    buckets: list[tuple[int, int, int, float]]  # second after the burst, ok, refused, p99


def _recovery(samples: list[Sample], unloaded_p99: float) -> tuple[float | None, list]:
    buckets = []
    for second in range(RECOVERY_SECONDS):
        start = BURST_SECONDS + second
        inside = [s for s in samples if start <= s.due < start + 1]
        ok = [s.latency for s in inside if s.status == 200]
        buckets.append((second, len(ok), len(inside) - len(ok), percentile(ok, 0.99)))
    good = [refused == 0 and p99 <= 1.5 * unloaded_p99 for _s, _ok, refused, p99 in buckets]
    for second in range(len(buckets)):
        if all(good[second:]):
            return float(second), buckets
    return None, buckets


def measure(port: int, token: str) -> BurstResult:
    log(f"burst: warm-up, then capacity: closed loop, {CONNECTIONS} connections")
    run_load(port, token, lambda load: load.closed_loop(CONNECTIONS, 3))
    samples = run_load(port, token, lambda load: load.closed_loop(CONNECTIONS, CAPACITY_SECONDS))
    capacity = sum(1 for s in samples if s.status == 200) / CAPACITY_SECONDS
    if capacity < 10:
        answers = Counter(s.status for s in samples)
        raise BenchError(f"burst: capacity {capacity:.0f} req/s; answers {answers}")
    calm = capacity * 0.1
    log(f"burst: capacity {capacity:,.0f} req/s; unloaded at {calm:,.0f} req/s")
    unloaded = run_load(port, token, lambda load: load.open_loop(schedule(calm, 0, 10)))
    unloaded_ok = [s.latency for s in unloaded if s.status == 200]
    offered = 5 * capacity
    log(f"burst: {offered:,.0f} req/s for {BURST_SECONDS} s, then {calm:,.0f} req/s")
    plan = schedule(offered, 0, BURST_SECONDS) + schedule(calm, BURST_SECONDS, RECOVERY_SECONDS)
    samples = run_load(port, token, lambda load: load.open_loop(plan))
    in_burst = [s for s in samples if s.due < BURST_SECONDS]
    admitted = [s.latency for s in in_burst if s.status == 200]
    unloaded_p99 = percentile(unloaded_ok, 0.99)
    recovery, buckets = _recovery(samples, unloaded_p99)
    return BurstResult(
        capacity=capacity,
        unloaded_p50=percentile(unloaded_ok, 0.5),
        unloaded_p99=unloaded_p99,
        offered=offered,
        burst=Counter(s.status for s in in_burst),
        admitted_p50=percentile(admitted, 0.5),
        admitted_p99=percentile(admitted, 0.99),
        recovery_seconds=recovery,
        buckets=buckets,
    )


def render(result: BurstResult, label: str, machine: str, when: str) -> str:
    total = sum(result.burst.values())
    refused = result.burst[429] + result.burst[503]
    failed = total - refused - result.burst[200]
    ratio = result.admitted_p99 / result.unloaded_p99
    recovery = (
        "never (within the window)"
        if result.recovery_seconds is None
        else (f"{result.recovery_seconds:.0f} s")
    )
    verdict = (
        "met"
        if ratio < 4
        and result.recovery_seconds is not None
        and result.recovery_seconds <= 5
        and failed == 0
        else "**missed**"
    )
    ms = 1000
    lines = [
        START,
        "## Burst: 5x capacity for 20 s (issue 6, acceptance 3)",
        "",
        f"Run {when} on {machine}; {label}; `GET {PATH}` with a bearer token (token check, "
        "one PostgreSQL read), production mode on PostgreSQL and Redis. Admission bounds of "
        "the run (per worker): "
        + ", ".join(f"`{k}={v}`" for k, v in ADMISSION.items())
        + ". Method: `bench/burst.py` (closed-loop capacity, then an open-loop generator).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| capacity (closed loop, {CONNECTIONS} connections) | {result.capacity:,.0f} req/s |",
        f"| unloaded (10 % of capacity) p50 / p99 | {result.unloaded_p50 * ms:.1f} / "
        f"{result.unloaded_p99 * ms:.1f} ms |",
        f"| offered during the burst | {result.offered:,.0f} req/s x {BURST_SECONDS} s = "
        f"{total:,} requests |",
        f"| admitted (200) | {result.burst[200]:,} ({result.burst[200] / total:.0%}) |",
        f"| refused 429 / 503 | {result.burst[429]:,} / {result.burst[503]:,} "
        f"({refused / total:.0%}) |",
        f"| errors, timeouts or not sent | {failed:,} |",
        f"| admitted p50 / p99 | {result.admitted_p50 * ms:.1f} / "
        f"{result.admitted_p99 * ms:.1f} ms = **{ratio:.1f}x** the unloaded p99 (bound: 4x) |",
        f"| recovery (p99 within 1.5x unloaded, nothing refused) | {recovery} (bound: 5 s) |",
        f"| verdict | {verdict} |",
        "",
        "After the burst (1-second buckets at 10 % of capacity): "
        + "; ".join(
            f"+{second}s {ok} ok/{bad} refused p99 {p99 * ms:.0f} ms"
            for second, ok, bad, p99 in result.buckets[:8]
        )
        + ".",
        END,
    ]
    return "\n".join(lines) + "\n"


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
            result = measure(port, bench.bearer_token(running.base_url))
        except BenchError as error:
            log(f"!! burst: {error}")
            return 1
        finally:
            bench.procs.stop_all()
    machine = f"{os.cpu_count()} CPUs"
    write_section(config.output, render(result, variant.label, machine, started))
    log(f"burst: wrote its section to {config.output}")
    return 0
