#!/usr/bin/env bash
# Runs the JavaScript client's tests against the real server binary.
# Builds nothing: expects target/debug/ferrocast (cargo build) or $FERROCAST_BIN.
# Installs the devDependencies (ws, playwright-core) with `npm ci` when node_modules is missing
# or older than package-lock.json. The Chromium tests use /usr/bin/chromium (or $CHROMIUM) and
# are skipped when there is none.
set -euo pipefail
cd "$(dirname "$0")"

bin="${FERROCAST_BIN:-../../target/debug/ferrocast}"
if [[ ! -x "$bin" ]]; then
  echo "test.sh: no server binary at $bin: run 'cargo build' first or set FERROCAST_BIN" >&2
  exit 1
fi
export FERROCAST_BIN="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

has_dev_deps=$(node -e 'console.log(Object.keys(require("./package.json").devDependencies || {}).length)')
if [[ "$has_dev_deps" != 0 ]] && [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

# The test files only (test/helpers.mjs is not a test).
exec node --test test/*.test.mjs
