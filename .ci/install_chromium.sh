#!/usr/bin/env bash
# Install Debian's chromium for the MLflow UI browser test (tests/test_mlflow_ui.py).
# Idempotent: does nothing when the browser is already there. Works as root, or with sudo.
# Playwright drives this system browser (executable_path); `playwright install` is not used.
set -euo pipefail

CHROMIUM="${MNIST_BENCH_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    echo "install_chromium: $CHROMIUM already present: $("$CHROMIUM" --version 2>/dev/null || true)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install_chromium: $CHROMIUM is missing and this user is not root and has no sudo;" >&2
    echo "  install it as root: apt-get update && apt-get install -y --no-install-recommends chromium" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: apt-get not found; install Chromium with this system's package" >&2
    echo "  manager and set MNIST_BENCH_CHROMIUM to its path." >&2
    exit 1
fi

# `env` passes DEBIAN_FRONTEND through sudo, which would drop an exported variable.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

if [ ! -x "$CHROMIUM" ]; then
    echo "install_chromium: apt-get finished but $CHROMIUM is still missing" >&2
    exit 1
fi
echo "install_chromium: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
