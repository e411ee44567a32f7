#!/usr/bin/env bash
# Pusher protocol 7, side by side: ferrocast's Pusher endpoint (/app/{key}, memory broker, release
# build) and Sockudo (local adapter, memory cache/queue/app manager, no Redis), loaded by the same
# `wsbench --pusher` runs (`make pusher-compare`). Results: docs/benchmarks.md, "Pusher protocol:
# ferrocast vs Sockudo".
#
# Scenarios, each RUNS times (default 3) per server, interleaved (ferrocast run 1, sockudo run 1,
# ferrocast run 2, …), every run against a freshly started server:
#   idle10k  10,000 sockets connected and subscribed to one public channel, held 10 s:
#            server RSS growth per socket (VmRSS before the ramp and with every socket open)
#   idle19k  the same with 19,000 sockets (set PC_IDLE_BIG=0 to skip)
#   fanout   5,000 subscribers of one channel; PC_RATE (default 10) publications/s of ~64 bytes
#            for PC_DURATION (default 30 s) through the signed HTTP API (POST /apps/ID/events):
#            delivery latency p50/p99 at the clients, lost deliveries, server CPU per delivery
#            (utime+stime over the traffic phase ÷ deliveries)
#
# Environment:
#   SOCKUDO_BIN   the sockudo binary (default: sockudo on PATH, else /work/sockudo-bin/bin/sockudo)
#   PC_RUNS, PC_RATE, PC_DURATION, PC_IDLE_N, PC_IDLE_BIG (19000 or 0), PC_FANOUT_N
#   PC_SERVERS    "ferrocast sockudo" (default both)
#   PC_ONLY       scenarios to run (default "idle10k idle19k fanout")
#   PC_OUT        where the run JSON, logs and summary go (default target/pusher-compare/<time>)
# Prints the Markdown table (medians, min–max beside them) and writes it to $PC_OUT/summary.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${PC_BIN:-target/release}
RUNS=${PC_RUNS:-3}
RATE=${PC_RATE:-10}
DURATION=${PC_DURATION:-30}
IDLE_N=${PC_IDLE_N:-10000}
IDLE_BIG=${PC_IDLE_BIG:-19000}
FANOUT_N=${PC_FANOUT_N:-5000}
SERVERS=${PC_SERVERS:-ferrocast sockudo}
ONLY=${PC_ONLY:-idle10k idle19k fanout}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${PC_OUT:-target/pusher-compare/$STAMP}
SRC=127.0.0.2-127.0.0.50
APP_ID=wsbench
APP_KEY=wsbench-key
APP_SECRET=wsbench-secret-for-the-comparison

SOCKUDO=${SOCKUDO_BIN:-$(command -v sockudo || echo /work/sockudo-bin/bin/sockudo)}
for b in "$BIN/ferrocast" "$BIN/wsbench"; do
  [[ -x $b ]] || { echo "pusher_compare: $b missing: cargo build --release -p ferrocast -p wsbench" >&2; exit 2; }
done
if [[ " $SERVERS " == *" sockudo "* && ! -x $SOCKUDO ]]; then
  echo "pusher_compare: no sockudo binary ($SOCKUDO): cargo install sockudo (needs protobuf-compiler)" >&2
  exit 2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
FC_PORT=$(free_port); FC_ADMIN=$(free_port); SK_PORT=$(free_port); SK_METRICS=$(free_port)

cat >"$OUT/ferrocast.toml" <<EOF
[listen]
public = "127.0.0.1:$FC_PORT"
admin = "127.0.0.1:$FC_ADMIN"
shards = 0

[auth]
token_secret = "pusher-compare-token-secret"

[api]
key = "pusher-compare-api-key"

[broker]
kind = "memory"

[shutdown]
drain_seconds = 1

[[pusher.apps]]
app_id = "$APP_ID"
key = "$APP_KEY"
secret = "$APP_SECRET"
max_connections = 0
EOF

# Sockudo from the environment only (run in $OUT/sockudo-cwd, which has no config/config.toml):
# the same app, single node (local adapter), memory cache/queue/app manager, no rate limits that
# the load would hit, metrics on (ferrocast's are always on). Both log at `warn`: Sockudo's default
# `info` writes a line per subscription, which would be measured as its cost per connection.
SK_ENV=(HOST=127.0.0.1 PORT="$SK_PORT"
  ADAPTER_DRIVER=local CACHE_DRIVER=memory QUEUE_DRIVER=memory APP_MANAGER_DRIVER=memory
  RATE_LIMITER_ENABLED=false METRICS_ENABLED=true METRICS_HOST=127.0.0.1 METRICS_PORT="$SK_METRICS"
  SOCKUDO_OTEL_ENABLED=false DEBUG_MODE=false
  SOCKUDO_DEFAULT_APP_ID="$APP_ID" SOCKUDO_DEFAULT_APP_KEY="$APP_KEY"
  SOCKUDO_DEFAULT_APP_SECRET="$APP_SECRET"
  SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 SOCKUDO_MAX_CONNECTIONS=1000000
  SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=1000000
  SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND=1000000
  SHUTDOWN_GRACE_PERIOD=1 RUST_LOG=warn)

SERVER_PID=""
start_server() { # ferrocast | sockudo
  local name=$1 log="$OUT/$1.log"
  if [[ $name == ferrocast ]]; then
    FERROCAST_LOG=warn "$BIN/ferrocast" serve --config "$OUT/ferrocast.toml" >>"$log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 200); do
      curl -sf -o /dev/null "http://127.0.0.1:$FC_ADMIN/health/ready" && return 0
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.05
    done
  else
    mkdir -p "$OUT/sockudo-cwd"
    (cd "$OUT/sockudo-cwd" && exec env "${SK_ENV[@]}" "$SOCKUDO") >>"$log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 400); do
      # Any HTTP answer on the public port means it listens.
      curl -s -o /dev/null "http://127.0.0.1:$SK_PORT/up/$APP_ID" && return 0
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.05
    done
  fi
  echo "pusher_compare: $name did not become ready; its log:" >&2
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
  sleep 1 # let the sockets leave TIME_WAIT pressure behind
}
trap stop_server EXIT

port_of() { [[ $1 == ferrocast ]] && echo "$FC_PORT" || echo "$SK_PORT"; }

cmd_for() { # scenario server → the wsbench command line (without --server-pid)
  local sc=$1 port
  port=$(port_of "$2")
  local common=(--pusher --pusher-app-id "$APP_ID" --pusher-key "$APP_KEY" --pusher-secret "$APP_SECRET"
    -u "ws://127.0.0.1:$port" --src "$SRC" --json -q)
  case $sc in
    idle10k) echo "$BIN/wsbench connect ${common[*]} -c $IDLE_N --connect-rate 2000 --hold 10s" ;;
    idle19k) echo "$BIN/wsbench connect ${common[*]} -c $IDLE_BIG --connect-rate 2000 --hold 10s" ;;
    fanout) echo "$BIN/wsbench broadcast ${common[*]} -c $FANOUT_N --connect-rate 2000 --rate $RATE --duration ${DURATION}s --size 64 --drain 10s" ;;
  esac
}

SCEN=()
for sc in $ONLY; do
  [[ $sc == idle19k && $IDLE_BIG == 0 ]] && continue
  SCEN+=("$sc")
done

{
  echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
  echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "ferrocast: $(git rev-parse --short HEAD) (release)"
  echo "sockudo: $("$SOCKUDO" --version 2>/dev/null || echo "?")"
  echo "fd limit: $(ulimit -n)"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt"

for run in $(seq 1 "$RUNS"); do
  for sc in "${SCEN[@]}"; do
    for server in $SERVERS; do
      start_server "$server"
      cmd=$(cmd_for "$sc" "$server")
      echo "$cmd" >"$OUT/$sc.$server.cmd"
      up_before=$(uptime)
      set +e
      # shellcheck disable=SC2086
      $cmd --server-pid "$SERVER_PID" >"$OUT/$sc.$server.$run.json" 2>"$OUT/$sc.$server.$run.err"
      rc=$?
      set -e
      up_after=$(uptime)
      printf '%s\t%s\t%s\t%s\t%s\n' "$sc" "$server" "$run" "$up_before" "$up_after" >>"$OUT/uptime.tsv"
      echo "run $run $sc $server: exit $rc; load ${up_before##*average: } → ${up_after##*average: }"
      stop_server
    done
  done
done

python3 - "$OUT" "${SCEN[*]}" "$SERVERS" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys, glob, os
out, scen, servers = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()

def load(sc, sv):
    rs = []
    for f in sorted(glob.glob(f"{out}/{sc}.{sv}.*.json")):
        try:
            rs.append(json.load(open(f)))
        except Exception:
            pass
    return rs

def med(vals, fmt):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt(m)
    return f"{fmt(m)} ({fmt(min(vals))}–{fmt(max(vals))})"

rows = []
def row(label, sc, pick, fmt):
    cells = []
    for sv in servers:
        rs = load(sc, sv)
        cells.append(med([pick(r) for r in rs], fmt) if rs else "–")
    rows.append((label, cells))

kib = lambda v: f"{v/1024:.1f} KiB"
for sc in scen:
    if sc.startswith("idle"):
        n = sc[4:]
        row(f"memory per idle subscribed socket, {n} (RSS growth ÷ sockets)", sc,
            lambda r: r["server"]["rss_per_socket_bytes"] if r.get("server") else None, kib)
        row(f"sockets connected and subscribed, {n}", sc,
            lambda r: r["connections"]["connected"], lambda v: f"{v:,.0f}")
        row(f"connect+subscribe p99, {n}", sc,
            lambda r: r["connections"]["ready_ms"]["p99_ms"], lambda v: f"{v:.1f} ms")
        row(f"server CPU per connection (ramp), {n}", sc,
            lambda r: r["server"]["cpu_us_per_connection"] if r.get("server") else None, lambda v: f"{v:.0f} µs")
    if sc == "fanout":
        row("server CPU per delivery", sc,
            lambda r: r["server"]["cpu_us_per_delivery"] if r.get("server") else None, lambda v: f"{v:.2f} µs")
        row("delivery latency p50", sc, lambda r: r["traffic"]["latency_ms"]["p50_ms"], lambda v: f"{v:.2f} ms")
        row("delivery latency p99", sc, lambda r: r["traffic"]["latency_ms"]["p99_ms"], lambda v: f"{v:.2f} ms")
        row("delivery latency max", sc, lambda r: r["traffic"]["latency_ms"]["max_ms"], lambda v: f"{v:.1f} ms")
        row("deliveries (of expected)", sc,
            lambda r: r["traffic"]["deliveries"], lambda v: f"{v:,.0f}")
        row("expected deliveries", sc,
            lambda r: r["traffic"]["expected_deliveries"], lambda v: f"{v:,.0f}")
        row("lost deliveries", sc, lambda r: r["traffic"]["lost"], lambda v: f"{v:,.0f}")
        row("publish errors", sc,
            lambda r: sum(r["traffic"]["publish_errors"].values()), lambda v: f"{v:,.0f}")
        row("API round trip p50", sc,
            lambda r: (r["traffic"].get("api_latency_ms") or {}).get("p50_ms"), lambda v: f"{v:.2f} ms")

print("| figure | " + " | ".join(servers) + " |")
print("| --- | " + " | ".join("---" for _ in servers) + " |")
for label, cells in rows:
    print(f"| {label} | " + " | ".join(cells) + " |")
PY
echo "pusher_compare: results in $OUT"
