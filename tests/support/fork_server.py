"""A fork server: IronCart imported once, each service a forked child (a separate process).

`IRONCART_TEST_WIRING=processes` runs every context of every integration test as its own OS
process. Starting `ironcart serve` costs about a second of imports per process, seven per
test; forking a process that has imported everything already costs a few milliseconds.

Protocol, one JSON object a line: the test process writes
`{"service": "cart", "port": 8123, "settings": {...}, "log": "/tmp/.../cart.log"}` on this
program's stdin; it forks a child and answers `{"pid": 4321}` on stdout. The child is a
new process with its own event loop, pools and caches: it validates the settings (a dump of
`Settings`), builds `create_app(settings, service=...)` and serves it with uvicorn and the
protocol `ironcart serve` uses, until SIGTERM (graceful) or SIGKILL. The test stops a child
by its pid. This server reaps its children, exits when its stdin closes (the test process
ended), and a child gets SIGTERM if this server dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
from typing import Any

# Imported once, before any fork: what each child would otherwise spend its first second on.
import uvicorn

from ironcart.app import create_app
from ironcart.platform.http.server_protocol import UVICORN_HTTP
from ironcart.platform.observability import configure_logging
from ironcart.platform.settings import Settings

PR_SET_PDEATHSIG = 1


def _reap(_signum: int, _frame: object) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _serve(request: dict[str, Any]) -> None:
    """In the child: serve one context until stopped; never returns."""
    code = 1
    try:
        os.setsid()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for name in [name for name in os.environ if name.startswith("IRONCART_")]:
            del os.environ[name]  # the settings are exactly the dump the test sent
        settings = Settings.model_validate(request["settings"])
        configure_logging(level=settings.log_level, json=True)
        config = uvicorn.Config(
            create_app(settings, service=request["service"]),
            host="127.0.0.1",
            port=int(request["port"]),
            http=UVICORN_HTTP,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=settings.server.graceful_shutdown_seconds,
        )
        uvicorn.Server(config).run()
        code = 0
    except BaseException as error:  # noqa: BLE001 - a child reports and exits, never returns
        os.write(2, f"fork server child failed: {error!r}\n".encode())
    finally:
        os._exit(code)


def main() -> None:
    signal.signal(signal.SIGCHLD, _reap)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _serve(request)
        sys.stdout.write(json.dumps({"pid": pid}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
