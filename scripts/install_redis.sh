#!/usr/bin/env bash
# Install Debian's redis-server for the Redis cache backend's tests (idempotent).
#
# The tests start their own throw-away server (random port, no persistence, loopback only), so the
# package's system service is neither needed nor started here. Does nothing when `redis-server` is
# already on PATH. Installing needs root (apt-get); without it this prints how to install it and
# exits 0, and the Redis tests skip (they fail under CI=true); so does a failed apt-get.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "redis-server not found and not running as root: skipping its install." >&2
    echo "Install it with: sudo apt-get install --no-install-recommends redis-server" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "redis-server not found and apt-get is not available: install Redis by hand." >&2
    exit 0
fi
echo "installing redis-server (Debian package) for the Redis cache tests..." >&2
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: the package must not start its system service (no init in containers, and the
# tests run their own server); the file is removed again whatever happens.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    own_policy=1
fi
cleanup() { if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }; then
    echo "could not install redis-server with apt-get; the Redis tests will skip (and fail under CI=true)." >&2
    exit 0
fi
command -v redis-server
