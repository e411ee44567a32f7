#!/usr/bin/env bash
# RFC 6455 conformance: the Autobahn|Testsuite fuzzing-client case families 1-10 against ferrocast's
# echo route (config/conformance.toml: ws://127.0.0.1:9001/echo, admin on 127.0.0.1:9091).
#
#   bash tests/conformance/run.sh                      # all of 1.* .. 10.* (301 cases)
#   CASES="1.* 2.*" bash tests/conformance/run.sh      # a selection (Autobahn case patterns)
#   EXCLUDE="9.*" bash tests/conformance/run.sh        # leave some out
#   CONFORMANCE_RELEASE=1 bash tests/conformance/run.sh   # against target/release/ferrocast (built if missing)
#   CONFORMANCE_CLIENT=wstest bash tests/conformance/run.sh
#       # cross-check with the real Autobahn|Testsuite 0.8.2 `wstest` (Python 2.7 only: needs a python2.7,
#       # e.g. pyenv's; installed from PyPI under target/conformance/wstest-py27, pinned, unpatched)
#
# The server is started here and stopped on exit. Reports: target/conformance/ (index.json in
# Autobahn's shape, cases.json with expected/received/wire log per case, summary.md, server.log).
# A case fails when its behaviour is FAILED or its close behaviour is FAILED or UNCLEAN.
# The last line is "conformance: N passed, M failed"; the exit status is 1 when M > 0.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

OUT=${CONFORMANCE_OUT:-target/conformance}
CASES=${CASES:-"1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 10.*"}
EXCLUDE=${EXCLUDE:-"12.* 13.*"}
CLIENT=${CONFORMANCE_CLIENT:-harness}
CONFIG=config/conformance.toml
HOST=127.0.0.1
WS_PORT=9001
ADMIN_PORT=9091
URL="ws://$HOST:$WS_PORT/echo"
PY=${PYTHON:-python3}
AGENT=ferrocast

if [ "${CONFORMANCE_RELEASE:-0}" = 1 ]; then
  BIN=${CONFORMANCE_BIN:-target/release/ferrocast}
else
  BIN=${CONFORMANCE_BIN:-${FERROCAST_BIN:-target/debug/ferrocast}}
fi

# The server runs in a session (and process group) of its own, so that stopping it also stops
# anything it started (a wrapper script given as CONFORMANCE_BIN, say).
SERVER_PID=""
stop_server() {
  local sig=$1
  kill "-$sig" -- "-$SERVER_PID" 2>/dev/null || kill "-$sig" "$SERVER_PID" 2>/dev/null
}
CLIENT_PID=""
cleanup() {
  if [ -n "$CLIENT_PID" ]; then
    kill "$CLIENT_PID" 2>/dev/null
    wait "$CLIENT_PID" 2>/dev/null
    CLIENT_PID=""
  fi
  if [ -n "$SERVER_PID" ]; then
    stop_server TERM
    for _ in $(seq 50); do kill -0 -- "-$SERVER_PID" 2>/dev/null || kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    stop_server KILL
    wait "$SERVER_PID" 2>/dev/null
  fi
  SERVER_PID=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

# No case could run: count every selected case as failed, so the summary line tells the truth.
abort() {
  echo "conformance: ERROR: $*" >&2
  local n
  n=$("$PY" tests/conformance/autobahn.py --list --cases "$CASES" --exclude "$EXCLUDE" 2>/dev/null | tail -1 | awk '{print $1}')
  echo "conformance: 0 passed, ${n:-1} failed"
  exit 1
}

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
live() {
  local url="http://$HOST:$ADMIN_PORT/health/live"
  if command -v curl >/dev/null; then
    curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null
  else
    "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$url" 2>/dev/null
  fi
}

mkdir -p "$OUT"

# ---- the server binary
if [ ! -x "$BIN" ]; then
  if [ "${CONFORMANCE_RELEASE:-0}" = 1 ]; then
    echo "conformance: building $BIN (cargo build --release --bin ferrocast)"
    cargo build --release --bin ferrocast || abort "release build failed"
  else
    echo "conformance: building $BIN (cargo build --bin ferrocast)"
    cargo build --bin ferrocast || abort "build failed"
  fi
fi
[ -x "$BIN" ] || abort "no server binary at $BIN"

# ---- start it
for p in $WS_PORT $ADMIN_PORT; do
  port_busy "$p" && abort "port $HOST:$p is already in use (another ferrocast?); the conformance config needs it"
done
setsid "$BIN" serve --config "$CONFIG" >"$OUT/server.log" 2>&1 </dev/null &
SERVER_PID=$!
ready=""
for _ in $(seq 300); do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    tail -20 "$OUT/server.log" >&2
    SERVER_PID=""
    abort "the server exited during start-up (log: $OUT/server.log)"
  fi
  if live; then
    ready=1
    break
  fi
  sleep 0.1
done
[ -n "$ready" ] || abort "the server did not report live on http://$HOST:$ADMIN_PORT/health/live within 30 s"
echo "conformance: $BIN serving $URL (pid $SERVER_PID); client: $CLIENT; cases: $CASES (excluding $EXCLUDE)"

# ---- run the cases
rc=0
case "$CLIENT" in
  harness)
    rm -f "$OUT/index.json" "$OUT/cases.json" "$OUT/summary.md"
    # in the background, so that a signal to this script stops the run at once (see cleanup)
    "$PY" tests/conformance/autobahn.py --url "$URL" --agent "$AGENT" --outdir "$OUT" \
      --cases "$CASES" --exclude "$EXCLUDE" ${CONFORMANCE_QUIET:+--quiet} &
    CLIENT_PID=$!
    wait "$CLIENT_PID"
    rc=$?
    CLIENT_PID=""
    INDEX="$OUT/index.json"
    ;;
  wstest)
    PY27=${PYTHON27:-}
    if [ -z "$PY27" ]; then
      for c in python2.7 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python2.7; do
        if "$c" -c 'import sys; assert sys.version_info[:2] == (2, 7)' >/dev/null 2>&1; then PY27=$c; break; fi
      done
    fi
    [ -n "$PY27" ] || abort "CONFORMANCE_CLIENT=wstest needs a Python 2.7 interpreter (set PYTHON27)"
    SITE="$OUT/wstest-py27"
    if [ ! -f "$SITE/.installed" ]; then
      echo "conformance: installing autobahntestsuite 0.8.2 for $PY27 into $SITE"
      rm -rf "$SITE"
      "$PY27" -m pip install --disable-pip-version-check --no-warn-script-location -q --target "$SITE" \
        -c tests/conformance/wstest-py27-constraints.txt autobahntestsuite==0.8.2 \
        || abort "pip install of autobahntestsuite failed"
      touch "$SITE/.installed"
    fi
    SITE_ABS=$(cd "$SITE" && pwd)
    WOUT="$OUT/wstest"
    rm -rf "$WOUT"
    mkdir -p "$WOUT"
    "$PY" - "$WOUT" "$URL" "$AGENT" "$CASES" "$EXCLUDE" >"$WOUT/spec.json" <<'EOF'
import json, sys
outdir, url, agent, cases, exclude = sys.argv[1:6]
print(json.dumps({"outdir": "./reports",  # relative to the folder wstest runs in
                  "servers": [{"agent": agent, "url": url}],
                  "cases": cases.replace(",", " ").split(), "exclude-cases": exclude.replace(",", " ").split(),
                  "exclude-agent-cases": {}}, indent=2))
EOF
    ( cd "$WOUT" && exec timeout 900 "$PY27" -c "import site, sys; site.addsitedir(sys.argv[1]); \
sys.argv = ['wstest', '-m', 'fuzzingclient', '-s', 'spec.json']; \
from autobahntestsuite.wstest import run; run()" "$SITE_ABS" ) >"$WOUT/wstest.log" 2>&1 &
    CLIENT_PID=$!
    wait "$CLIENT_PID"
    rc=$?
    CLIENT_PID=""
    [ $rc -eq 0 ] || { tail -20 "$WOUT/wstest.log" >&2; }
    INDEX="$WOUT/reports/index.json"
    ;;
  *) abort "unknown CONFORMANCE_CLIENT=$CLIENT (harness or wstest)" ;;
esac

# ---- the server must still be there
crashed=""
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  crashed=1
  echo "conformance: the server DIED during the run; last lines of $OUT/server.log:" >&2
  tail -30 "$OUT/server.log" >&2
  SERVER_PID=""
else
  if grep -q "panicked" "$OUT/server.log"; then
    echo "conformance: the server log has a panic:" >&2
    grep -m5 -A3 "panicked" "$OUT/server.log" >&2
    crashed=1
  fi
  # connection handlers that panicked are caught and counted; any is a failure of the run
  if command -v curl >/dev/null; then
    panics=$(curl -fsS --max-time 2 "http://$HOST:$ADMIN_PORT/metrics" 2>/dev/null \
      | awk '$1 == "ferrocast_connection_panics_total" {print $2}')
    if [ -n "$panics" ] && [ "${panics%.*}" != 0 ]; then
      echo "conformance: ferrocast_connection_panics_total is $panics after the run" >&2
      crashed=1
    fi
  fi
fi
cleanup

# ---- verdict
[ -f "$INDEX" ] || abort "no report at $INDEX (client exit status $rc)"
read -r passed failed < <("$PY" - "$INDEX" "$CLIENT" "$(dirname "$INDEX")" <<'EOF'
import json, os, sys
index, client, d = sys.argv[1], sys.argv[2], sys.argv[3]
agents = json.load(open(index))
passed = failed = 0
for agent, cases in agents.items():
    for cid in sorted(cases, key=lambda c: tuple(int(x) for x in c.split("."))):
        c = cases[cid]
        bad = c["behavior"] == "FAILED" or c["behaviorClose"] in ("FAILED", "UNCLEAN")
        if bad:
            failed += 1
            if client == "wstest":   # the harness printed its own explanations already
                detail = json.load(open(os.path.join(d, c["reportfile"])))
                print("FAILED %s: behavior %s (%s); close %s (%s); remote close code %s" % (
                    cid, c["behavior"], detail.get("result"), c["behaviorClose"], detail.get("resultClose"),
                    c.get("remoteCloseCode")), file=sys.stderr)
        else:
            passed += 1
print(passed, failed)
EOF
)
if [ -n "$crashed" ]; then failed=$((failed + 1)); fi
if [ "$CLIENT" = harness ] && [ $rc -ne 0 ] && [ $rc -ne 1 ]; then failed=$((failed + 1)); fi
echo "conformance: reports in $(dirname "$INDEX")/ (server log: $OUT/server.log)"
echo "conformance: ${passed:-0} passed, ${failed:-1} failed"
[ "${failed:-1}" -eq 0 ]
