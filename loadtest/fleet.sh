#!/usr/bin/env bash
# fleet.sh -- issue 4's measurement: two release nodes on a real 6-node Redis Cluster (3 masters,
# 3 replicas, deploy/redis-cluster.sh), FLEET_SUBS subscribers split over both, 10 publications/s
# per channel, every publication crossing the cluster (the subscribers of node A are published to
# through node B's API and the other way round) — beside the same load on ONE node with the
# memory broker. Medians of FLEET_RUNS runs; rewrites the `fleet` section of docs/benchmarks.md.
#
#   cargo build --release --workspace && bash loadtest/fleet.sh
#
# Env: FLEET_RUNS (3), FLEET_SUBS (19000), FLEET_CHANNELS (20: 10 per half), FLEET_DURATION (30s),
#      FLEET_NO_DOC=1 (print, don't rewrite the doc).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${FLEET_RUNS:-3}
SUBS=${FLEET_SUBS:-19000}
CHANNELS=${FLEET_CHANNELS:-20}
DUR=${FLEET_DURATION:-30s}
HALF_SUBS=$((SUBS / 2))
HALF_CH=$((CHANNELS / 2))
RATE_HALF=$((HALF_CH * 10))          # 10 publications/s per channel
RATE_ALL=$((CHANNELS * 10))
BIN=target/release/ferrocast
WSB=target/release/wsbench
[[ -x $BIN && -x $WSB ]] || { echo "build first: cargo build --release --workspace" >&2; exit 2; }
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${FLEET_OUT:-target/loadtest/fleet-$STAMP}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REDIS_BASE=${FLEET_REDIS_PORT:-17300}
SECRET=fleet-secret
KEY=fleet-key
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    bash deploy/redis-cluster.sh stop "$OUT/redis" >/dev/null 2>&1 || true
}
trap cleanup EXIT

node_config() { # FILE PUBLIC ADMIN BROKER_TOML
    cat >"$1" <<EOF
[listen]
public = "127.0.0.1:$2"
admin = "127.0.0.1:$3"
shards = 0
[auth]
token_secret = "$SECRET"
[api]
key = "$KEY"
$4
[limits]
max_connections = 0
[namespaces.bench]
publish = true
presence = false
join_leave = false
history_size = 100
history_ttl = "300s"
EOF
}

start_node() { # NAME CONFIG ADMIN → echo pid
    "$BIN" serve --config "$2" >"$OUT/$1.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 200); do
        curl -sf "http://127.0.0.1:$3/health/ready" >/dev/null 2>&1 && { echo "$pid"; return; }
        sleep 0.05
    done
    echo "node $1 not ready; log:" >&2; tail -20 "$OUT/$1.log" >&2; exit 1
}

stop_node() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

COMMON=(--token-secret "$SECRET" --api-key "$KEY" --connect-rate 2000 --duration "$DUR" --timeout 240s --json -q)

echo "== Redis Cluster on 127.0.0.1:$REDIS_BASE..$((REDIS_BASE + 5))"
bash deploy/redis-cluster.sh start "$OUT/redis" "$REDIS_BASE" >/dev/null
URLS=$(for i in 0 1 2 3 4 5; do printf '"redis://127.0.0.1:%d",' $((REDIS_BASE + i)); done)
CLUSTER_TOML="[broker]
kind = \"redis-cluster\"
urls = [${URLS%,}]"
node_config "$OUT/a.toml" 18301 18391 "$CLUSTER_TOML"
node_config "$OUT/b.toml" 18302 18392 "$CLUSTER_TOML"
node_config "$OUT/single.toml" 18303 18393 "[broker]
kind = \"memory\""

for run in $(seq "$RUNS"); do
    echo "== run $run/$RUNS: fleet (2 nodes, Redis Cluster, $SUBS subscribers, $CHANNELS channels × 10/s)"
    A=$(start_node "a-$run" "$OUT/a.toml" 18391)
    B=$(start_node "b-$run" "$OUT/b.toml" 18392)
    "$WSB" broadcast -c "$HALF_SUBS" --channels "$HALF_CH" --rate "$RATE_HALF" --channel "bench:fa$run" \
        -u ws://127.0.0.1:18301/ws --api-url http://127.0.0.1:18302 --src 127.0.0.2-127.0.0.25 \
        --server-pid "$A" "${COMMON[@]}" >"$OUT/fleet-a-$run.json" || true &
    WA=$!
    "$WSB" broadcast -c "$((SUBS - HALF_SUBS))" --channels "$((CHANNELS - HALF_CH))" --rate "$RATE_HALF" \
        --channel "bench:fb$run" -u ws://127.0.0.1:18302/ws --api-url http://127.0.0.1:18301 \
        --src 127.0.0.26-127.0.0.50 --server-pid "$B" "${COMMON[@]}" >"$OUT/fleet-b-$run.json" || true &
    WB=$!
    wait "$WA" "$WB" || true
    stop_node "$A"; stop_node "$B"

    echo "== run $run/$RUNS: single node (memory broker, same load)"
    S=$(start_node "single-$run" "$OUT/single.toml" 18393)
    "$WSB" broadcast -c "$SUBS" --channels "$CHANNELS" --rate "$RATE_ALL" --channel "bench:s$run" \
        -u ws://127.0.0.1:18303/ws --src 127.0.0.2-127.0.0.50 --server-pid "$S" "${COMMON[@]}" \
        >"$OUT/single-$run.json" || true
    stop_node "$S"
done

python3 - "$OUT" "$RUNS" "$SUBS" "$CHANNELS" "$DUR" "${FLEET_NO_DOC:-}" <<'EOF'
import json, os, platform, statistics, subprocess, sys
out, runs, subs, channels, dur, no_doc = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]

def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception:
        return None

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

rows = {"fleet": [], "single": []}
for r in range(1, runs + 1):
    a, b, s = load(f"fleet-a-{r}.json"), load(f"fleet-b-{r}.json"), load(f"single-{r}.json")
    if a and b and a.get("traffic") and b.get("traffic"):
        ta, tb = a["traffic"], b["traffic"]
        deliv = ta["deliveries"] + tb["deliveries"]
        cpu = a["server"]["cpu_traffic_s"] + b["server"]["cpu_traffic_s"]
        # p50/p99 of the union: weight each half's figure by its deliveries (both halves equal here)
        rows["fleet"].append(dict(
            p50=(ta["latency_ms"]["p50_ms"] * ta["deliveries"] + tb["latency_ms"]["p50_ms"] * tb["deliveries"]) / max(deliv, 1),
            p99=max(ta["latency_ms"]["p99_ms"], tb["latency_ms"]["p99_ms"]),
            lost=ta["lost"] + tb["lost"], dup=ta["duplicated"] + tb["duplicated"],
            expected=ta["expected_deliveries"] + tb["expected_deliveries"], deliveries=deliv,
            dps=ta["deliveries_per_s"] + tb["deliveries_per_s"],
            cpu_us=cpu * 1e6 / max(deliv, 1),
            connected=a["connections"]["connected"] + b["connections"]["connected"]))
    if s and s.get("traffic"):
        t = s["traffic"]
        rows["single"].append(dict(
            p50=t["latency_ms"]["p50_ms"], p99=t["latency_ms"]["p99_ms"], lost=t["lost"], dup=t["duplicated"],
            expected=t["expected_deliveries"], deliveries=t["deliveries"], dps=t["deliveries_per_s"],
            cpu_us=s["server"]["cpu_us_per_delivery"], connected=s["connections"]["connected"]))

def fmt(v, nd=2):
    return "–" if v is None else f"{v:,.{nd}f}"

def line(label, key, nd=2):
    f = med([x[key] for x in rows["fleet"]]); s = med([x[key] for x in rows["single"]])
    ratio = "–" if not f or not s else f"{f / s:.2f}×"
    return f"| {label} | {fmt(f, nd)} | {fmt(s, nd)} | {ratio} |"

cpu = "unknown"
for l in open("/proc/cpuinfo"):
    if l.startswith("model name"):
        cpu = l.split(":", 1)[1].strip(); break
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
body = f"""<!-- BEGIN fleet -->
<!-- written by loadtest/fleet.sh; edits here are overwritten -->

- Machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}; everything (6 Redis servers, 2 nodes, 2 wsbench processes) shares those CPUs
- Build: release, commit {rev}; {runs} runs, medians (complete runs: fleet {len(rows['fleet'])}, single {len(rows['single'])})
- Load: {subs} subscribers on {channels} channels (`bench` namespace, history 100), 10 publications/s per channel through the server API for {dur}; fleet: half the subscribers on each node, published to through the *other* node's API, so every publication crosses the Redis Cluster (Lua publish → SPUBLISH on the slot's master → the subscribing node)
- CPU per delivery: both nodes' user+system CPU during the traffic phase ÷ deliveries (fleet); the node's (single). Redis' own CPU is not included.

```sh
cargo build --release --workspace && bash loadtest/fleet.sh
```

| figure | fleet: 2 nodes, Redis Cluster | single node, memory broker | fleet / single |
| --- | ---: | ---: | ---: |
{line("subscribers connected ↑", "connected", 0)}
{line("deliveries ↑", "deliveries", 0)}
{line("expected deliveries", "expected", 0)}
{line("lost ↓", "lost", 0)}
{line("duplicated ↓", "dup", 0)}
{line("publish → receive p50, ms ↓", "p50")}
{line("publish → receive p99, ms ↓", "p99")}
{line("deliveries/s ↑", "dps", 0)}
{line("server CPU per delivery, µs ↓", "cpu_us")}

<!-- END fleet -->"""
print(body)
if not no_doc:
    path = "docs/benchmarks.md"
    doc = open(path).read()
    if "<!-- BEGIN fleet -->" in doc:
        start = doc.index("<!-- BEGIN fleet -->"); end = doc.index("<!-- END fleet -->") + len("<!-- END fleet -->")
        doc = doc[:start] + body + doc[end:]
    else:
        doc = doc.rstrip() + "\n\n## Issue 4: two nodes through a Redis Cluster\n\n" + body + "\n"
    open(path, "w").write(doc)
    print(f"rewrote the fleet section of {path}")
EOF
