#!/usr/bin/env bash
# The standard wsbench runs: `make loadtest` (= cargo build --release --workspace, then this).
#
# Every scenario runs RUNS times (default 3) against a fresh release ferrocast node and a fresh
# naive-baseline (examples/naive-baseline), interleaved (ferrocast run 1, baseline run 1,
# ferrocast run 2, …) so that whatever else the machine is doing weighs on both alike. Then
# loadtest/suite_report.py takes the medians and rewrites the marked sections of
# docs/benchmarks.md: the machine, the exact commands, medians of the runs (min–max beside them),
# and the ratio ferrocast / baseline for every figure.
#
# Sections:
#   suite   connect 19k; broadcast 10k subscribers at 10 msg/s and in --flood mode; notify; chat;
#           churn                                                    (docs marker: suite)
#   budget  issue 2's measurements: 10k idle sockets each on its user: channel and one shared
#           channel (RSS growth per socket, budget 4 KiB); 10k subscribers × 1,000 API
#           publications of 64 bytes at 10/s, ferrocast only (all delivered, p50/p99)
#                                                                      (docs marker: budget)
#
# Environment:
#   SUITE_QUICK=1      smoke variant: small counts, 1 run, results to $SUITE_OUT/benchmarks.md
#                      (docs/benchmarks.md untouched unless SUITE_DOC says so); about a minute
#   SUITE_RUNS=N       runs per scenario and server (default 3; quick: 1)
#   SUITE_SECTIONS=…   "suite budget" (default both)
#   SUITE_ONLY=…       run only these scenarios (names as below), e.g. "connect flood"
#   SUITE_SERVERS=…    "ferrocast naive" (default both)
#   SUITE_OUT=DIR      where run JSON, configs and logs go (default target/loadtest/<time>)
#   SUITE_DOC=FILE     the Markdown file to rewrite (default docs/benchmarks.md; quick: $SUITE_OUT/benchmarks.md)
#   SUITE_SRC=RANGE    client source addresses (default 127.0.0.2-127.0.0.50)
#   SUITE_NOTE=TEXT    a line about the conditions, printed with the machine
# Whole suite (both sections, 3 runs): about 23 minutes on 2 cores.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${SUITE_BIN:-target/release}
QUICK=${SUITE_QUICK:-0}
if [[ $QUICK == 1 ]]; then RUNS=${SUITE_RUNS:-1}; else RUNS=${SUITE_RUNS:-3}; fi
SECTIONS=${SUITE_SECTIONS:-suite budget}
SERVERS=${SUITE_SERVERS:-ferrocast naive}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${SUITE_OUT:-target/loadtest/$STAMP}
if [[ $QUICK == 1 ]]; then DOC=${SUITE_DOC:-$OUT/benchmarks.md}; else DOC=${SUITE_DOC:-docs/benchmarks.md}; fi
SRC=${SUITE_SRC:-127.0.0.2-127.0.0.50}
SECRET=suite-token-secret
KEY=suite-api-key

for b in ferrocast wsbench naive-baseline; do
  if [[ ! -x $BIN/$b ]]; then
    echo "suite: $BIN/$b missing: run 'cargo build --release --workspace' (make loadtest does)" >&2
    exit 2
  fi
done
command -v python3 >/dev/null || { echo "suite: python3 is needed for the report" >&2; exit 2; }
command -v curl >/dev/null || { echo "suite: curl is needed" >&2; exit 2; }
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
FC_PORT=$(free_port); FC_ADMIN=$(free_port); NAIVE_PORT=$(free_port)

# The node: one shard per CPU, the benchmark namespace without join/leave (a join push per
# subscriber would be N² frames and measure something else) and with a history for churn's
# recovery; personal channels as in config/ferrocast.toml.
cat >"$OUT/ferrocast.toml" <<EOF
[listen]
public = "127.0.0.1:$FC_PORT"
admin = "127.0.0.1:$FC_ADMIN"
shards = 0

[auth]
token_secret = "$SECRET"

[api]
key = "$KEY"

[shutdown]
drain_seconds = 1

[namespaces.bench]
publish = true
presence = false
join_leave = false
history_size = 1000
history_ttl = "300s"

[namespaces.user]
history_size = 32
history_ttl = "10m"
EOF

SERVER_PID=""
SERVER_NAME=""
start_server() { # ferrocast | naive
  local name=$1 log="$OUT/$1.log" url
  if [[ $name == ferrocast ]]; then
    "$BIN/ferrocast" serve --config "$OUT/ferrocast.toml" >>"$log" 2>&1 &
    url="http://127.0.0.1:$FC_ADMIN/health/ready"
  else
    "$BIN/naive-baseline" --listen "127.0.0.1:$NAIVE_PORT" --token-secret "$SECRET" \
      --api-key "$KEY" >>"$log" 2>&1 &
    url="http://127.0.0.1:$NAIVE_PORT/health/ready"
  fi
  SERVER_PID=$!
  SERVER_NAME=$name
  for _ in $(seq 1 200); do
    if curl -sf -o /dev/null "$url"; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    sleep 0.05
  done
  echo "suite: $name did not become ready; its log:" >&2
  tail -20 "$log" >&2
  exit 2
}

stop_server() {
  [[ -n $SERVER_PID ]] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# name|section|servers ("" = every server in SUITE_SERVERS)|wsbench arguments (the URL,
# credentials, --src, --server-pid and --json are added by the suite)
if [[ $QUICK == 1 ]]; then
  SCENARIOS=(
    "connect|suite||connect -c 1000 --connect-rate 2000 --hold 2s"
    "broadcast|suite||broadcast -c 1000 --rate 10 -d 3s"
    "flood|suite||broadcast -c 1000 -n 100 --flood"
    "notify|suite||notify -c 1000 -n 1000 --rate 1000"
    "chat|suite||chat -c 200 --room-size 10 -n 5 --rate 400"
    "churn|suite||churn -c 200 --churn-rate 20 --rate 50 -d 3s"
    "idle|budget||connect -c 1000 --user-channel --connect-rate 2000 --hold 2s"
    "fanout|budget|ferrocast|broadcast -c 1000 -n 30 --size 64 --rate 10"
  )
else
  SCENARIOS=(
    "connect|suite||connect -c 19000 --connect-rate 2000 --hold 10s"
    "broadcast|suite||broadcast -c 10000 --rate 10 -d 20s"
    "flood|suite||broadcast -c 10000 -n 300 --flood"
    "notify|suite||notify -c 10000 -n 20000 --rate 2000"
    "chat|suite||chat -c 2000 --room-size 10 -n 10 --rate 2000"
    "churn|suite||churn -c 2000 --churn-rate 100 --rate 100 -d 10s"
    "idle|budget||connect -c 10000 --user-channel --connect-rate 2000 --hold 10s"
    "fanout|budget|ferrocast|broadcast -c 10000 -n 1000 --size 64 --rate 10"
  )
fi

want() { # scenario section
  [[ " $SECTIONS " == *" $2 "* ]] || return 1
  [[ -z ${SUITE_ONLY:-} || " $SUITE_ONLY " == *" $1 "* ]]
}

common_args() { # server port
  echo "-u ws://127.0.0.1:$2/ws --token-secret $SECRET --api-key $KEY --channel bench:load" \
    "--src $SRC --timeout 240s --json -q"
}

# Machine and conditions.
python3 - "$OUT/meta.json" "$RUNS" "$QUICK" "${SUITE_NOTE:-}" "$SECTIONS" "$SERVERS" <<'EOF'
import json, os, platform, subprocess, sys, time
out, runs, quick, note, sections, servers = sys.argv[1:7]
def first(path, key):
    try:
        for line in open(path):
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"
def cmd(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "?"
mem_kib = int(first("/proc/meminfo", "MemTotal").split()[0])
dirty = cmd("git", "status", "--porcelain", "--untracked-files=no")
json.dump({
    "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "nproc": os.cpu_count(),
    "cpu_model": first("/proc/cpuinfo", "model name"),
    "kernel": platform.release(),
    "ram_gib": round(mem_kib / 1048576, 1),
    "nofile": cmd("bash", "-c", "ulimit -n"),
    "rustc": cmd("rustc", "--version"),
    "commit": cmd("git", "rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else ""),
    "runs": int(runs), "quick": quick == "1", "note": note,
    "sections": sections.split(), "servers": servers.split(),
    "loadavg_start": open("/proc/loadavg").read().split()[:3],
}, open(out, "w"), indent=1)
EOF

t0=$(date +%s)
for entry in "${SCENARIOS[@]}"; do
  IFS='|' read -r name section only_servers args <<<"$entry"
  want "$name" "$section" || continue
  mkdir -p "$OUT/$section/$name"
  echo "$args" >"$OUT/$section/$name/args"
  for run in $(seq 1 "$RUNS"); do
    for server in $SERVERS; do
      [[ -z $only_servers || " $only_servers " == *" $server "* ]] || continue
      if [[ $server == ferrocast ]]; then port=$FC_PORT; else port=$NAIVE_PORT; fi
      start_server "$server"
      file="$OUT/$section/$name/$server-$run.json"
      load=$(cut -d' ' -f1 /proc/loadavg)
      set +e
      # shellcheck disable=SC2046,SC2086
      "$BIN/wsbench" $args $(common_args "$server" "$port") --server-pid "$SERVER_PID" \
        >"$file.tmp" 2>"$file.err"
      rc=$?
      set -e
      stop_server
      python3 - "$file.tmp" "$file" "$rc" "$load" <<'EOF'
import json, sys
src, dst, rc, load = sys.argv[1:5]
try:
    v = json.load(open(src))
except Exception as e:
    v = {"error": f"no JSON from wsbench ({e})"}
v.pop("series", None)
v.pop("latency_histogram", None)
v["suite"] = {"exit_code": int(rc), "loadavg_1m": float(load)}
json.dump(v, open(dst, "w"), indent=1)
EOF
      rm -f "$file.tmp"
      summary=$(python3 loadtest/suite_report.py --line "$file")
      printf '[%4ss] %-6s %-9s %-9s run %s  exit %s  %s\n' "$(( $(date +%s) - t0 ))" "$section" "$name" "$server" "$run" "$rc" "$summary"
      sleep 1
    done
  done
done

python3 loadtest/suite_report.py "$OUT" "$DOC" "$FC_PORT" "$NAIVE_PORT"
echo "suite: $(( $(date +%s) - t0 )) s; runs in $OUT; results in $DOC"
