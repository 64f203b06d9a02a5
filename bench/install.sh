#!/usr/bin/env bash
# Installs what `make bench` needs beyond the project's own dependencies:
#   Debian packages wrk (load generator), nginx (the static HTTP ceiling) and pgbench, and py-spy
#   when a profile is asked for. (granian, the second ASGI server tried, is a pinned
#   project dependency: `ironcart serve --server granian`.)
# Idempotent: does nothing when everything is already there. Needs root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${BENCH_PYTHON:-.venv/bin/python}"

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# pgbench (the order-write ceiling of the checkout cases) ships with Debian's PostgreSQL server
# package; the benchmark's PostgreSQL normally brings it already.
command -v pgbench >/dev/null 2>&1 || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "bench/install.sh: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    # nginx's package starts a system-wide server on port 80 at install time; keep it from
    # starting (the benchmark runs its own nginx on a free port with its own configuration).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# py-spy only when a profile is asked for (BENCH_PROFILE=1).
if [ "${BENCH_PROFILE:-0}" != "0" ] && [ ! -x "$(dirname "$PY")/py-spy" ]; then
    echo "bench/install.sh: pip-installing py-spy into the venv"
    "$PY" -m pip install --quiet "py-spy${BENCH_PYSPY_SPEC:-}"
fi
