#!/usr/bin/env bash
# End-to-end test of the Django library demo in real headless Chromium. Does everything:
# Debian chromium (+ a CJK font for the 《》 in screenshots) when missing, the example's venv,
# `npm ci` (playwright-core only: it never downloads a browser), a ferrocast binary (cargo build
# when none), then the test itself, which starts its own node and Django server on free ports.
#
#   bash examples/django-library/e2e/run.sh       # exit status = test result; ~30 s when set up
#
# Screenshots and the node's/Django's logs: examples/django-library/e2e/artifacts/.
# Environment: FERROCAST_BIN (binary to test), CHROMIUM (/usr/bin/chromium).
set -euo pipefail

e2e="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
example="$(dirname "$e2e")"
repo="$(cd "$example/../.." && pwd)"
log() { printf '== %s\n' "$*" >&2; }

# 1. Chromium from Debian (never a downloaded browser build).
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
missing=""
[ -x "$CHROMIUM" ] || missing="chromium"
if command -v dpkg >/dev/null && ! dpkg -s fonts-wqy-zenhei >/dev/null 2>&1; then
  missing="$missing fonts-wqy-zenhei"
fi
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  log "installing:$missing"
  $SUDO apt-get update -qq
  # the font is cosmetic (screenshots): a failure to get it must not stop the test
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null \
    || { [ -x "$CHROMIUM" ] || { log "cannot install chromium"; exit 1; }; }
fi
[ -x "$CHROMIUM" ] || { log "no $CHROMIUM"; exit 1; }
export CHROMIUM

# 2. The example's venv (Django + clients/python).
bash "$example/run.sh" venv

# 3. playwright-core, exactly as locked.
cd "$e2e"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

# 4. A ferrocast binary.
if [ -z "${FERROCAST_BIN:-}" ] && [ ! -x "$repo/target/debug/ferrocast" ] && [ ! -x "$repo/target/release/ferrocast" ]; then
  log "cargo build"
  (cd "$repo" && cargo build --bin ferrocast)
fi

# 5. The test (node's test runner; bounded so a hang can't outlive ~3 minutes).
log "running the browser test"
exec timeout --kill-after=10 170 node --test --test-concurrency=1 library.e2e.mjs
