#!/usr/bin/env bash
# Install the Debian packages the tests drive (idempotent), in one apt-get call:
#   chromium      headless browser for the HTML view's test (tests/integration/test_html_chromium.py)
#   redis-server  the Redis cache backend's tests start their own throw-away server (tests/redis_server.py)
#
# Installs only what is missing from PATH. Installing needs root (apt-get); without it this prints
# how to install them and exits 0, and those tests skip (they fail under CI=true); so does a failed
# apt-get. The redis-server package must not start its system service (no init in containers, and
# the tests run their own server): a temporary policy-rc.d says so.
set -euo pipefail

declare -A needs=([chromium]=chromium [redis-server]=redis-server)  # binary -> Debian package
missing=()
for binary in "${!needs[@]}"; do
    command -v "$binary" >/dev/null 2>&1 || missing+=("${needs[$binary]}")
done
if [ "${#missing[@]}" = 0 ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "not found: ${missing[*]}; cannot install them here (needs root and apt-get): their tests skip." >&2
    echo "Install them with: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 0
fi
echo "installing ${missing[*]} (Debian packages) for the tests..." >&2
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    own_policy=1
fi
cleanup() { if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
    echo "could not install ${missing[*]} with apt-get; their tests skip (and fail under CI=true)." >&2
    exit 0
fi
