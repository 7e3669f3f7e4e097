#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the HTML view's browser test (idempotent).
#
# Does nothing when `chromium` is already on PATH. Installing needs root (apt-get); without it
# this prints how to install it and exits 0, and the browser test skips (it fails under CI=true);
# so does a failed apt-get.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "chromium not found and not running as root: skipping its install." >&2
    echo "Install it with: sudo apt-get install --no-install-recommends chromium" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium not found and apt-get is not available: install Chromium by hand." >&2
    exit 0
fi
echo "installing chromium (Debian package) for the HTML view's browser test..." >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; then
    echo "could not install chromium with apt-get; the browser test will skip (and fail under CI=true)." >&2
    exit 0
fi
command -v chromium
