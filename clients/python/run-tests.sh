#!/usr/bin/env bash
# Runs the Python client's tests against the real ferrocast binary.
# Usage: bash clients/python/run-tests.sh [pytest args]   (from anywhere)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# (Re)install when pyproject.toml changed since the last install.
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch .venv/.installed
fi
if [ -z "${FERROCAST_BIN:-}" ] && [ ! -x "$repo/target/debug/ferrocast" ] && [ ! -x "$repo/target/release/ferrocast" ]; then
  (cd "$repo" && cargo build --bin ferrocast)
fi
exec .venv/bin/python -m pytest -q "$@"
