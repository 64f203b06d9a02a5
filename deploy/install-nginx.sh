#!/usr/bin/env bash
# Installs nginx (Debian package) when it is missing; does nothing when it is already there.
# Used by the nginx tests (tests/unit/test_nginx_config.py, tests/e2e/test_nginx_failover.py)
# and by anyone deploying deploy/nginx/ironcart.conf on a Debian or Ubuntu host.
# Needs root (or sudo) for apt-get. Exit status 0 means `nginx` (or /usr/sbin/nginx) now exists.
set -euo pipefail

if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-nginx.sh: no apt-get here; install nginx with this system's package manager" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

echo "install-nginx.sh: installing the Debian package nginx"
$SUDO apt-get update -qq
# The package starts a system-wide nginx on port 80 at install time; keep it from starting
# (IronCart runs nginx with its own configuration, prefix and port).
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
# Debian 12 ships the core server as `nginx`; older releases call the small build nginx-light.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx \
    || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx-light
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]
