"""A throw-away PostgreSQL server for tests that need settings the shared one lacks.

XA tests need `max_prepared_transactions > 0`, which the machine's server does not have
(and which only a restart could change). `running_pg_instance()` initialises a cluster in
a temporary directory, starts it on a free 127.0.0.1 port with prepared transactions
enabled (and durability off: it is thrown away), and when the block ends stops it by its
postmaster's pid (SIGINT: fast shutdown; SIGKILL if it has not exited in time) and
removes the directory.

The server binaries refuse to run as root, so when the tests run as root (the CI
containers do) `initdb` and `pg_ctl` run as the `postgres` user through `runuser`.
The binaries are found in IRONCART_TEST_PG_BIN, else in Debian's /usr/lib/postgresql/15/bin.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.databases import ServerUnavailable
from tests.support.server import free_port

PG_BIN = Path(os.environ.get("IRONCART_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class PgInstance:
    port: int
    pid: int
    directory: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def _as_postgres(command: Sequence[str]) -> list[str]:
    if os.geteuid() != 0:
        return list(command)
    return ["runuser", "-u", "postgres", "--", *command]


def _run(command: Sequence[str], *, timeout: float) -> None:
    result = subprocess.run(
        _as_postgres(command), capture_output=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace")
        raise ServerUnavailable(f"PostgreSQL test instance: {command[0]} failed: {output}")


def _postmaster_pid(data: Path) -> int:
    # The first line of postmaster.pid is the postmaster's pid (written once it runs).
    return int((data / "postmaster.pid").read_text().splitlines()[0])


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGINT)  # fast shutdown: roll back sessions, checkpoint, exit
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


@contextmanager
def running_pg_instance(*, max_prepared_transactions: int = 20) -> Iterator[PgInstance]:
    """A started PostgreSQL server of our own, stopped and deleted when the block ends."""
    if not (PG_BIN / "initdb").is_file():
        raise ServerUnavailable(f"PostgreSQL test instance: no server binaries in {PG_BIN}")
    directory = Path(tempfile.mkdtemp(prefix="ironcart-pg-"))
    pid: int | None = None
    try:
        if os.geteuid() == 0:
            shutil.chown(directory, user="postgres", group="postgres")
        data = directory / "data"
        _run(
            [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-N"],
            timeout=120,
        )
        port = free_port()
        options = " ".join(
            [
                f"-p {port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={directory}",
                f"-c max_prepared_transactions={max_prepared_transactions}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c shared_buffers=32MB",
            ]
        )
        _run(
            [
                str(PG_BIN / "pg_ctl"),
                "start",
                "-D",
                str(data),
                "-w",
                "-t",
                str(START_TIMEOUT_SECONDS),
                "-l",
                str(directory / "server.log"),
                "-o",
                options,
            ],
            timeout=START_TIMEOUT_SECONDS + 10,
        )
        pid = _postmaster_pid(data)
        yield PgInstance(port, pid, directory)
    finally:
        if pid is None and (directory / "data" / "postmaster.pid").is_file():
            pid = _postmaster_pid(directory / "data")  # started, but pg_ctl gave up waiting
        if pid is not None:
            _stop(pid)
        shutil.rmtree(directory, ignore_errors=True)
