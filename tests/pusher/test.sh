#!/usr/bin/env bash
# The Pusher protocol against the real pusher-js and `pusher` (Node) libraries, then the
# `pusher` Python package. Expects target/debug/ferrocast (cargo build) or $FERROCAST_BIN.
set -euo pipefail
cd "$(dirname "$0")"
repo="$(cd ../.. && pwd)"
bin="${FERROCAST_BIN:-$repo/target/debug/ferrocast}"
if [[ ! -x "$bin" ]]; then
  echo "test.sh: no server binary at $bin: run 'cargo build' first or set FERROCAST_BIN" >&2
  exit 1
fi
export FERROCAST_BIN="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
fi
node --test --test-timeout=60000 --test-force-exit --test-concurrency=2 ./*.test.mjs
venv="$repo/target/pusher-venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
if [[ ! -f "$venv/.installed" ]]; then
  "$venv/bin/pip" install -q --disable-pip-version-check 'pusher>=3.3,<4'
  touch "$venv/.installed"
fi
"$venv/bin/python" test_pusher_python.py
