#!/usr/bin/env bash
# million.sh -- "The million": MILLION_TARGET live WebSockets (default 1,000,000) on this box, the
# load generator beside the servers. Every process may hold at most ~20,000 file descriptors, so
# it takes a fleet: N release ferrocast processes (`shards = 1`, ≤ ~18,200 sockets each) on
# CONSECUTIVE PORTS (each with its own admin port) behind one broker, and one wsbench with
# `--procs P` workers (≤ ~18,200 sockets each) dealing socket s to node s mod N from source
# addresses in 127.0.0.0/8. Steps (one population throughout, `wsbench million`):
#   ramp to TARGET sockets (own token each, subscribed to `user:<id>` and one shared channel)
#   → hold MILLION_HOLD → one broadcast publication to all → MILLION_NOTIFY notifications to
#   random users → SIGTERM one node and measure until its sockets are back on the others.
# Figures, and where 2 CPUs stop: docs/benchmarks.md, "The million".
# A sampler reads /proc once a second (RSS and CPU of servers, generator and Redis;
# /proc/net/sockstat; slab) and the summary turns it into per-socket figures.
#
#   cargo build --release -p ferrocast -p wsbench && bash loadtest/million.sh      (= make million)
#   MILLION_TARGET=50000 bash loadtest/million.sh                                  (smoke run)
#
# Env:
#   MILLION_TARGET        sockets (1000000)
#   MILLION_PER_PROC      sockets per ferrocast node and per wsbench worker (18200: under the
#                         20,000-descriptor limit with room for the drained node's share)
#   MILLION_NODES         ferrocast processes (default ceil(TARGET / PER_PROC), more when the
#                         drained node's share would push the others past 19,500 sockets)
#   MILLION_BROKER        cluster (default: 6-server Redis Cluster, deploy/redis-cluster.sh) |
#                         redis (one standalone redis-server) | memory (no Redis: each node its own
#                         memory broker; wsbench publishes the broadcast through every node's API
#                         and a notification through its user's node, --api-fanout)
#   MILLION_CONNECT_RATE  new sockets per second over the whole ramp (1300: what 2 CPUs sustain up
#                         to 1M with the idle load growing; 3000/s collapsed at ~530k)
#   MILLION_HOLD          hold after the ramp (60s)
#   MILLION_NOTIFY        notifications to random users (10000), at MILLION_NOTIFY_RATE/s (2000)
#   MILLION_SRC           client source addresses (127.0.0.2-127.0.0.41)
#   MILLION_PORT          first public port (20000; admin ports from MILLION_ADMIN_PORT, 21000;
#                         Redis from MILLION_REDIS_PORT, 17400)
#   MILLION_DEADLINE      seconds after which everything is stopped, whatever the phase (1140 =
#                         19 min); wsbench itself gets MILLION_DEADLINE - 90
#   MILLION_MIN_AVAIL_MIB stop the run (SIGINT to wsbench, partial figures) when MemAvailable
#                         falls below this (1024): the box is shared, the OOM killer must not come
#   MILLION_NODE_SET      space-separated `--set KEY=VALUE` overrides for every node (e.g.
#                         "client.pong_timeout=30s"); none by default
#   MILLION_NO_SYSCTL=1   do not touch sysctls (they are restored on exit otherwise)
#   MILLION_OUT           output directory (target/million/<UTC time>); target/million/latest.json
#                         is a copy of the summary
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TARGET=${MILLION_TARGET:-1000000}
PER_PROC=${MILLION_PER_PROC:-18200}
# Enough nodes for PER_PROC each, and for the drained node's sockets to fit on the others
# under 19,500 each (the descriptor limit is 20,000).
NODES=$(( (TARGET + PER_PROC - 1) / PER_PROC ))
(( (TARGET + NODES - 2) / (NODES - 1 > 0 ? NODES - 1 : 1) > 19500 || NODES < 2 )) && NODES=$(( TARGET / 19500 + 2 ))
NODES=${MILLION_NODES:-$NODES}
PROCS=$(( (TARGET + PER_PROC - 1) / PER_PROC ))
BROKER=${MILLION_BROKER:-cluster}
RATE=${MILLION_CONNECT_RATE:-1300}
HOLD=${MILLION_HOLD:-60s}
NOTIFY=${MILLION_NOTIFY:-10000}
NOTIFY_RATE=${MILLION_NOTIFY_RATE:-2000}
SRC=${MILLION_SRC:-127.0.0.2-127.0.0.41}
PORT=${MILLION_PORT:-20000}
ADMIN=${MILLION_ADMIN_PORT:-21000}
REDIS_PORT=${MILLION_REDIS_PORT:-17400}
DEADLINE=${MILLION_DEADLINE:-1140}
MIN_AVAIL=${MILLION_MIN_AVAIL_MIB:-1024}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${MILLION_OUT:-target/million/$STAMP}
BIN=target/release/ferrocast
WSB=target/release/wsbench
SECRET=million-token-secret
KEY=million-api-key

say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { say "million: $*"; exit 2; }

[[ -x $BIN && -x $WSB ]] || die "build first: cargo build --release -p ferrocast -p wsbench"
command -v python3 >/dev/null || die "python3 is needed"
command -v curl >/dev/null || die "curl is needed"
[[ $BROKER == cluster || $BROKER == redis || $BROKER == memory ]] || die "MILLION_BROKER: cluster | redis | memory"
if [[ $BROKER != memory ]]; then
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
        || die "redis-server/redis-cli missing (apt-get install redis-server redis-tools, or MILLION_BROKER=memory)"
fi
(( PORT + NODES < 65536 && ADMIN + NODES < 65536 )) || die "ports out of range"
mkdir -p "$OUT/nodes" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
# Cleanup: everything started here is stopped by pid, whatever happens (bounded waits).
# ---------------------------------------------------------------------------------------------
NODE_PIDS=()
REDIS_PID=""
WSB_PID=""
SAMPLER_PID=""
WATCHDOG_PID=""
SYSCTL_SAVED=()          # "key=old value" to restore
CLEANED=0

stop_pid() { # PID [seconds before SIGKILL]
    local pid=$1 grace=${2:-10} i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    (( CLEANED )) && return
    CLEANED=1
    trap '' INT TERM
    say "cleanup"
    [[ -n $WATCHDOG_PID ]] && kill "$WATCHDOG_PID" 2>/dev/null
    if [[ -n $WSB_PID ]] && kill -0 "$WSB_PID" 2>/dev/null; then
        # wsbench runs in its own process group (setsid): the parent and its workers.
        kill -INT "$WSB_PID" 2>/dev/null
        for _ in $(seq 1 300); do kill -0 "$WSB_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$WSB_PID" 2>/dev/null
        wait "$WSB_PID" 2>/dev/null
    fi
    # The nodes drain in parallel (their sockets are gone by now), then anything left is killed.
    local p
    for p in "${NODE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${NODE_PIDS[@]}"; do stop_pid "$p" 15; done
    if [[ $BROKER == cluster ]]; then
        bash deploy/redis-cluster.sh stop "$OUT/redis" >/dev/null 2>&1
    elif [[ -n $REDIS_PID ]]; then
        redis-cli -p "$REDIS_PORT" SHUTDOWN NOSAVE >/dev/null 2>&1
        stop_pid "$REDIS_PID" 5
    fi
    [[ -n $SAMPLER_PID ]] && stop_pid "$SAMPLER_PID" 2
    local kv
    for kv in "${SYSCTL_SAVED[@]}"; do
        sysctl -q -w "$kv" >/dev/null 2>&1 || say "could not restore $kv"
    done
    say "cleanup done"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# Whatever the phase, everything stops after DEADLINE seconds.
(
    trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    sleep "$DEADLINE" & sp=$!
    wait "$sp" && { echo "million: deadline of $DEADLINE s reached, stopping" >&2; kill -TERM $$; }
) &
WATCHDOG_PID=$!

# ---------------------------------------------------------------------------------------------
# Kernel settings: the values of sysctl/99-ferrocast.conf (what `sysctl/tune.sh apply` loads),
# written with sysctl -w for this run only, plus what a million loopback sockets need on top.
# ---------------------------------------------------------------------------------------------
set_sysctl() { # KEY VALUE
    local key=$1 val=$2 old
    old=$(sysctl -n "$key" 2>/dev/null | tr -s '\t ' ' ') || { echo "absent  $key" >>"$OUT/sysctl.txt"; return; }
    [[ "$old" == "$val" ]] && { echo "same    $key = $val" >>"$OUT/sysctl.txt"; return; }
    if sysctl -q -w "$key=$val" >/dev/null 2>&1; then
        SYSCTL_SAVED+=("$key=$old")
        echo "set     $key = $val (was $old)" >>"$OUT/sysctl.txt"
    else
        echo "FAILED  $key = $val (stays $old)" >>"$OUT/sysctl.txt"
    fi
}
if [[ ${MILLION_NO_SYSCTL:-0} != 1 ]]; then
    while IFS= read -r line; do
        line=${line%%#*}
        [[ $line =~ ^[[:space:]]*-?([a-z0-9_.]+)[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$ ]] || continue
        set_sysctl "${BASH_REMATCH[1]}" "$(tr -s '\t ' ' ' <<<"${BASH_REMATCH[2]}")"
    done <sysctl/99-ferrocast.conf
    # Extra for this box: both ends of every connection are local (2 sockets per connection).
    set_sysctl fs.file-max 4194304
    set_sysctl net.netfilter.nf_conntrack_max 2097152
    set_sysctl net.core.somaxconn 65535
    set_sysctl net.ipv4.tcp_max_syn_backlog 65535
    set_sysctl net.ipv4.ip_local_port_range "1024 65535"
    # Our listeners are bound before any load starts, but keep ephemeral ports off them anyway.
    set_sysctl net.ipv4.ip_local_reserved_ports "$REDIS_PORT-$((REDIS_PORT + 5)),$((REDIS_PORT + 10000))-$((REDIS_PORT + 10005)),$PORT-$((PORT + NODES)),$ADMIN-$((ADMIN + NODES))"
    say "sysctls: $(grep -c '^set' "$OUT/sysctl.txt") set, $(grep -c '^FAILED' "$OUT/sysctl.txt") refused (see $OUT/sysctl.txt)"
fi

# ---------------------------------------------------------------------------------------------
# Broker
# ---------------------------------------------------------------------------------------------
REDIS_PIDS_FILE="$OUT/redis.pids"
: >"$REDIS_PIDS_FILE"
case $BROKER in
cluster)
    say "Redis Cluster (3 masters + 3 replicas) on 127.0.0.1:$REDIS_PORT..$((REDIS_PORT + 5))"
    timeout 60 bash deploy/redis-cluster.sh start "$OUT/redis" "$REDIS_PORT" >"$OUT/redis-cluster.log" 2>&1 \
        || { cat "$OUT/redis-cluster.log" >&2; die "the Redis Cluster did not start"; }
    cat "$OUT"/redis/redis-*.pid >"$REDIS_PIDS_FILE" 2>/dev/null
    URLS=$(for i in 0 1 2 3 4 5; do printf '"redis://127.0.0.1:%d",' $((REDIS_PORT + i)); done)
    BROKER_TOML="[broker]
kind = \"redis-cluster\"
urls = [${URLS%,}]"
    ;;
redis)
    say "Redis (standalone) on 127.0.0.1:$REDIS_PORT"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$OUT" --logfile "$OUT/redis.log" --maxclients 10000 &
    REDIS_PID=$!
    echo "$REDIS_PID" >"$REDIS_PIDS_FILE"
    for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" PING >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$REDIS_PORT" PING >/dev/null 2>&1 || die "redis-server did not start"
    BROKER_TOML="[broker]
kind = \"redis\"
urls = [\"redis://127.0.0.1:$REDIS_PORT\"]"
    ;;
memory)
    say "memory broker per node (publications fan out through every node's API)"
    BROKER_TOML="[broker]
kind = \"memory\""
    ;;
esac

# ---------------------------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------------------------
NODE_SETS=()
for kv in ${MILLION_NODE_SET:-}; do NODE_SETS+=(--set "$kv"); done
say "starting $NODES ferrocast nodes (shards = 1) on 127.0.0.1:$PORT..$((PORT + NODES - 1))"
for ((k = 0; k < NODES; k++)); do
    cat >"$OUT/nodes/$k.toml" <<EOF
[listen]
public = "127.0.0.1:$((PORT + k))"
admin = "127.0.0.1:$((ADMIN + k))"
shards = 1
backlog = 65535

[auth]
token_secret = "$SECRET"

[api]
key = "$KEY"

$BROKER_TOML

[limits]
max_connections = 0

[shutdown]
drain_seconds = 5

# The shared channel every socket is on: the broadcast.
[namespaces.bench]

# Personal channels, as in config/ferrocast.toml.
[namespaces.user]
history_size = 32
history_ttl = "10m"
EOF
    RUST_LOG=${RUST_LOG:-warn} "$BIN" serve --config "$OUT/nodes/$k.toml" "${NODE_SETS[@]}" >"$OUT/nodes/$k.log" 2>&1 &
    NODE_PIDS+=("$!")
done
printf '%s\n' "${NODE_PIDS[@]}" >"$OUT/servers.pids"
for ((k = 0; k < NODES; k++)); do
    ok=0
    for _ in $(seq 1 300); do
        if curl -sf -o /dev/null "http://127.0.0.1:$((ADMIN + k))/health/ready"; then ok=1; break; fi
        kill -0 "${NODE_PIDS[$k]}" 2>/dev/null || break
        sleep 0.1
    done
    (( ok )) || { tail -20 "$OUT/nodes/$k.log" >&2; die "node $k did not become ready"; }
done
say "all $NODES nodes ready"

# ---------------------------------------------------------------------------------------------
# Sampler: one JSON line a second.
# ---------------------------------------------------------------------------------------------
python3 - "$OUT" "$MIN_AVAIL" >"$OUT/samples.jsonl" 2>"$OUT/sampler.err" <<'EOF' &
import json, os, signal, sys, time
out, min_avail = sys.argv[1], int(sys.argv[2])
tck = os.sysconf("SC_CLK_TCK")
def pids(name):
    try:
        return [int(x) for x in open(os.path.join(out, name)).read().split()]
    except Exception:
        return []
def proc(pid):
    try:
        st = open(f"/proc/{pid}/stat").read()
        f = st[st.rfind(")") + 2:].split()
        rss = 0
        for l in open(f"/proc/{pid}/status"):
            if l.startswith("VmRSS:"):
                rss = int(l.split()[1]); break
        return rss, (int(f[11]) + int(f[12])) / tck, int(f[1])
    except Exception:
        return None
def children(root):
    kids, found = {}, []
    for d in os.listdir("/proc"):
        if d.isdigit():
            p = proc(int(d))
            if p:
                kids.setdefault(p[2], []).append(int(d))
    todo = [root]
    while todo:
        c = todo.pop()
        for k in kids.get(c, []):
            found.append(k); todo.append(k)
    return found
def group(ps):
    rss = cpu = 0.0; n = 0
    for p in ps:
        v = proc(p)
        if v:
            rss += v[0]; cpu += v[1]; n += 1
    return {"rss_kib": int(rss), "cpu_s": round(cpu, 2), "procs": n}
# Kernel objects of a TCP socket (per end): the sock, its inode, file, dentry, epoll entry.
SLABS = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq",
         "tcp_bind_bucket", "tcp_bind2_bucket", "skbuff_head_cache")
def slabs():
    kib = {}
    try:
        for l in open("/proc/slabinfo"):
            f = l.split()
            if f and f[0] in SLABS:
                kib[f[0]] = int(f[2]) * int(f[3]) // 1024
    except Exception:
        pass
    return kib
stopped = False
while True:
    mem = {}
    for l in open("/proc/meminfo"):
        k, v = l.split(":", 1)
        mem[k] = int(v.split()[0])
    sock = {}
    for l in open("/proc/net/sockstat"):
        if l.startswith("TCP:"):
            f = l.split()[1:]
            sock = {f[i]: int(f[i + 1]) for i in range(0, len(f) - 1, 2)}
        if l.startswith("sockets:"):
            sock["sockets_used"] = int(l.split()[2])
    wsb = pids("wsbench.pid")
    gen = wsb + (children(wsb[0]) if wsb else [])
    row = {
        "t": round(time.time(), 2),
        "mem_total_kib": mem["MemTotal"], "mem_available_kib": mem["MemAvailable"],
        "slab_kib": mem["Slab"], "sunreclaim_kib": mem.get("SUnreclaim", 0),
        "socket_slabs_kib": (sl := slabs()), "socket_slab_kib": sum(sl.values()),
        "tcp": sock,
        "servers": group(pids("servers.pids")), "generator": group(gen), "redis": group(pids("redis.pids")),
    }
    print(json.dumps(row), flush=True)
    if wsb and not stopped and mem["MemAvailable"] < min_avail * 1024:
        # Safety stop on a shared box: wsbench stops its sockets and prints partial figures.
        print(f"MemAvailable {mem['MemAvailable'] // 1024} MiB < {min_avail} MiB: SIGINT to wsbench", file=sys.stderr, flush=True)
        open(os.path.join(out, "memory_stop"), "w").write(json.dumps(row))
        try:
            os.kill(wsb[0], signal.SIGINT)
        except Exception:
            pass
        stopped = True
    time.sleep(1)
EOF
SAMPLER_PID=$!
sleep 6   # a baseline: nodes up and idle, no sockets

# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
DRAIN_NODE=$(( NODES / 2 ))
DRAIN_PID=${NODE_PIDS[$DRAIN_NODE]}
WSB_TIMEOUT=$(( DEADLINE - 90 ))
(( WSB_TIMEOUT < 60 )) && WSB_TIMEOUT=60
ARGS=(million -c "$TARGET" --nodes "$NODES" --procs "$PROCS" --threads 1
      -u "ws://127.0.0.1:$PORT/ws" --src "$SRC" --token-secret "$SECRET" --api-key "$KEY"
      --channel bench:all --user-channel --connect-rate "$RATE" --hold "$HOLD"
      -n "$NOTIFY" --rate "$NOTIFY_RATE" --drain 30s --handshake-timeout 30s
      --drain-pid "$DRAIN_PID" --timeout "${WSB_TIMEOUT}s" --json -q)
[[ $BROKER == memory ]] && ARGS+=(--api-fanout)
echo "wsbench ${ARGS[*]}" >"$OUT/command.txt"
say "wsbench: $TARGET sockets over $NODES nodes from $PROCS workers at $RATE/s; hold $HOLD; broadcast; $NOTIFY notifications; drain node $DRAIN_NODE (pid $DRAIN_PID)"
T0=$(date +%s)
setsid "$WSB" "${ARGS[@]}" >"$OUT/wsbench.json" 2>"$OUT/wsbench.err" &
WSB_PID=$!
echo "$WSB_PID" >"$OUT/wsbench.pid"
# Progress while it runs (the sampler's last line).
while kill -0 "$WSB_PID" 2>/dev/null; do
    sleep 10
    python3 -c '
import json, sys
try:
    r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
    mib = lambda g: r[g]["rss_kib"] // 1024
    print("  tcp sockets %8d  MemAvailable %6d MiB  servers %d MiB  generator %d MiB  redis %d MiB  socket slabs %d MiB"
          % (r["tcp"].get("inuse", 0), r["mem_available_kib"] // 1024, mib("servers"), mib("generator"),
             mib("redis"), r["socket_slab_kib"] // 1024), file=sys.stderr)
except Exception:
    pass' "$OUT/samples.jsonl"
done
wait "$WSB_PID"
WSB_RC=$?
WSB_PID=""
say "wsbench exited $WSB_RC after $(( $(date +%s) - T0 )) s"
sleep 2   # one more sample after the run

python3 - "$OUT" "$WSB_RC" "$TARGET" "$NODES" "$PROCS" "$BROKER" "$RATE" "$HOLD" "$DRAIN_NODE" <<'EOF'
import json, os, platform, subprocess, sys
out, rc, target, nodes, procs, broker, rate, hold, drain_node = sys.argv[1:10]
rows = [json.loads(l) for l in open(os.path.join(out, "samples.jsonl")) if l.strip()]
try:
    w = json.load(open(os.path.join(out, "wsbench.json")))
except Exception as e:
    w = {"error": f"no JSON from wsbench ({e})"}
m = w.get("million") or {}
conn = w.get("connections") or {}
start = w.get("started_unix_s") or (rows[0]["t"] if rows else 0)
base = [r for r in rows if r["t"] < start]
base = base[-1] if base else (rows[0] if rows else None)
def at(t):
    """The last sample at or before t."""
    c = [r for r in rows if r["t"] <= t]
    return c[-1] if c else None
ramp_end, hold_end = m.get("ramp_end_unix_s") or 0, m.get("hold_end_unix_s") or 0
held = m.get("held") or 0
if not hold_end:
    # Stopped before the end of the hold: the figures are taken at the peak.
    peak = max(rows, key=lambda r: r["tcp"].get("inuse", 0)) if rows else None
    hold_at = peak
    held = max(0, (peak["tcp"].get("inuse", 0) - (base["tcp"].get("inuse", 0) if base else 0)) // 2) if peak else 0
else:
    hold_at = at(hold_end)
def per(a, b, key, unit=1024):
    if not (a and b and held):
        return None
    return round((key(b) - key(a)) * unit / held, 1)
res = {
    "machine": {
        "cpus": os.cpu_count(), "kernel": platform.release(),
        "mem_gib": round(rows[0]["mem_total_kib"] / 1048576, 1) if rows else None,
        "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "nofile": subprocess.run(["bash", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout.strip(),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    },
    "config": {"node_set": os.environ.get("MILLION_NODE_SET", ""), "target": int(target), "nodes": int(nodes), "wsbench_procs": int(procs), "broker": broker,
               "connect_rate": float(rate), "hold": hold, "drained_node": int(drain_node),
               "command": open(os.path.join(out, "command.txt")).read().strip()},
    "wsbench_exit": int(rc),
    "outcome": w.get("outcome"),
    "sockets": {"target": int(target), "connected": conn.get("connected"), "failed": conn.get("failed"),
                "failures": conn.get("failures"), "retried_503": conn.get("retries"),
                "dropped": sum((conn.get("disconnects") or {}).values()) if conn else None,
                "disconnects": conn.get("disconnects"), "held_at_end_of_hold": held,
                "ramp_s": conn.get("ramp_s"), "connect_rate_per_s": conn.get("achieved_rate_per_s"),
                "ready_ms": conn.get("ready_ms")},
}
if base and hold_at:
    res["memory"] = {
        "baseline_unix_s": base["t"], "sample_unix_s": hold_at["t"],
        "server_rss_total_mib": round(hold_at["servers"]["rss_kib"] / 1024, 1),
        "server_rss_base_mib": round(base["servers"]["rss_kib"] / 1024, 1),
        "server_rss_per_socket_bytes": per(base, hold_at, lambda r: r["servers"]["rss_kib"]),
        "generator_rss_total_mib": round(hold_at["generator"]["rss_kib"] / 1024, 1),
        "generator_rss_per_socket_bytes": round(hold_at["generator"]["rss_kib"] * 1024 / held, 1) if held else None,
        "redis_rss_total_mib": round(hold_at["redis"]["rss_kib"] / 1024, 1),
        "redis_rss_growth_per_socket_bytes": per(base, hold_at, lambda r: r["redis"]["rss_kib"]),
        "kernel_tcp_mem_pages": hold_at["tcp"].get("mem"),
        "kernel_tcp_mem_per_connection_bytes": per(base, hold_at, lambda r: r["tcp"].get("mem", 0), 4096),
        "kernel_slab_mib": round(hold_at["slab_kib"] / 1024, 1),
        "kernel_slab_per_connection_bytes": per(base, hold_at, lambda r: r["slab_kib"]),
        "kernel_socket_slabs_mib": round(hold_at["socket_slab_kib"] / 1024, 1),
        "kernel_socket_slabs_per_connection_bytes": per(base, hold_at, lambda r: r["socket_slab_kib"]),
        "kernel_socket_slabs_per_cache_per_connection_bytes": {
            k: per(base, hold_at, lambda r, k=k: r["socket_slabs_kib"].get(k, 0)) for k in hold_at["socket_slabs_kib"]},
        "kernel_tcp_sockets_in_use": hold_at["tcp"].get("inuse"),
        "mem_available_mib": hold_at["mem_available_kib"] // 1024,
        "mem_used_growth_mib": (base["mem_available_kib"] - hold_at["mem_available_kib"]) // 1024,
        "mem_used_growth_per_connection_bytes": per(hold_at, base, lambda r: r["mem_available_kib"]),
    }
if ramp_end and hold_end and held:
    # Idle CPU: the hold, without its first 5 s (the last handshakes settling).
    a, b = at(ramp_end + min(5, (hold_end - ramp_end) / 4)), at(hold_end)
    if a and b and b["t"] > a["t"]:
        dt = b["t"] - a["t"]
        cpu = lambda g: round((b[g]["cpu_s"] - a[g]["cpu_s"]) * 1e6 / held / dt, 3)
        # What the idle nodes burn without sockets (tickers, broker keepalives), from the baseline.
        pre = [r for r in rows if r["t"] < start]
        base_cores = ((pre[-1]["servers"]["cpu_s"] - pre[0]["servers"]["cpu_s"]) / (pre[-1]["t"] - pre[0]["t"])
                      if len(pre) > 2 and pre[-1]["t"] > pre[0]["t"] else 0.0)
        res["idle_cpu"] = {
            "window_s": round(dt, 1), "ping_interval_s": 25,
            "servers_cores_without_sockets": round(base_cores, 3),
            "server_us_per_socket_per_s_above_base": round(((b["servers"]["cpu_s"] - a["servers"]["cpu_s"]) / dt - base_cores) * 1e6 / held, 3),
            "server_us_per_socket_per_s": cpu("servers"),
            "generator_us_per_socket_per_s": cpu("generator"),
            "redis_us_per_socket_per_s": cpu("redis"),
            "servers_cores": round((b["servers"]["cpu_s"] - a["servers"]["cpu_s"]) / dt, 3),
            "generator_cores": round((b["generator"]["cpu_s"] - a["generator"]["cpu_s"]) / dt, 3),
        }
if m:
    b = m.get("broadcast", {}); n = m.get("notify", {}); d = m.get("drain") or {}
    res["broadcast"] = {"expected": b.get("expected"), "delivered": b.get("delivered"), "lost": b.get("lost"),
                        "p50_ms": b.get("latency_ms", {}).get("p50_ms"), "p99_ms": b.get("latency_ms", {}).get("p99_ms"),
                        "max_ms": b.get("latency_ms", {}).get("max_ms"), "all_received_ms": b.get("all_received_ms"),
                        "api_errors": b.get("errors")}
    res["notify"] = {"publications": n.get("publications"), "ok": n.get("published_ok"), "expected": n.get("expected"),
                     "delivered": n.get("delivered"), "lost": n.get("lost"), "to_unconnected": n.get("to_unconnected"),
                     "p50_ms": n.get("latency_ms", {}).get("p50_ms"), "p99_ms": n.get("latency_ms", {}).get("p99_ms"),
                     "max_ms": n.get("latency_ms", {}).get("max_ms"), "publish_s": n.get("publish_s")}
    res["drain"] = {"closed": d.get("closed"), "back": d.get("back"), "gave_up": d.get("gave_up"),
                    "all_back_ms": d.get("all_back_ms"), "reconnect_p50_ms": (d.get("reconnect_ms") or {}).get("p50_ms"),
                    "reconnect_p99_ms": (d.get("reconnect_ms") or {}).get("p99_ms"), "complete": d.get("complete"),
                    "node_exited": d.get("node_exited")}
if os.path.exists(os.path.join(out, "memory_stop")):
    res["stopped_by"] = "MemAvailable below MILLION_MIN_AVAIL_MIB: " + open(os.path.join(out, "memory_stop")).read()
peak = max(rows, key=lambda r: r["tcp"].get("inuse", 0)) if rows else None
if peak:
    res["peak"] = {"unix_s": peak["t"], "tcp_inuse": peak["tcp"].get("inuse"), "mem_available_mib": peak["mem_available_kib"] // 1024,
                   "min_mem_available_mib": min(r["mem_available_kib"] for r in rows) // 1024}
json.dump(res, open(os.path.join(out, "million.json"), "w"), indent=1)
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump(res, open(os.path.join(os.path.dirname(out), "latest.json"), "w"), indent=1)

def f(v, nd=0):
    return "–" if v is None else (f"{v:,.{nd}f}" if isinstance(v, (int, float)) else str(v))
s, mm, ic = res["sockets"], res.get("memory", {}), res.get("idle_cpu", {})
bb, nn, dd = res.get("broadcast", {}), res.get("notify", {}), res.get("drain", {})
print(f"""
== million: {f(s['held_at_end_of_hold'])} sockets held of {f(int(target))} ({nodes} nodes, broker {broker}); wsbench exit {rc}
sockets    connected {f(s['connected'])}  failed {f(s['failed'])} {s['failures'] or ''}  dropped {f(s['dropped'])}  retried(503) {f(s['retried_503'])}  ramp {f(s['ramp_s'],1)} s at {f(s['connect_rate_per_s'])}/s
memory     servers {f(mm.get('server_rss_total_mib'),1)} MiB ({f(mm.get('server_rss_per_socket_bytes'))} B/socket above base)  generator {f(mm.get('generator_rss_total_mib'),1)} MiB ({f(mm.get('generator_rss_per_socket_bytes'))} B/socket)  redis {f(mm.get('redis_rss_total_mib'),1)} MiB
kernel     per connection (both ends): socket slabs {f(mm.get('kernel_socket_slabs_per_connection_bytes'))} B, tcp buffers {f(mm.get('kernel_tcp_mem_per_connection_bytes'))} B; slab total {f(mm.get('kernel_slab_mib'),1)} MiB; MemAvailable {f(mm.get('mem_available_mib'))} MiB (used {f(mm.get('mem_used_growth_per_connection_bytes'))} B/conn)
idle CPU   servers {f(ic.get('server_us_per_socket_per_s'),3)} µs/socket/s ({f(ic.get('servers_cores'),2)} cores; {f(ic.get('server_us_per_socket_per_s_above_base'),3)} above the {f(ic.get('servers_cores_without_sockets'),3)} cores of idle nodes)  generator {f(ic.get('generator_us_per_socket_per_s'),3)} µs/socket/s
broadcast  {f(bb.get('delivered'))} of {f(bb.get('expected'))}, lost {f(bb.get('lost'))}; p50 {f(bb.get('p50_ms'),1)} ms  p99 {f(bb.get('p99_ms'),1)} ms  max {f(bb.get('max_ms'),1)} ms
notify     {f(nn.get('delivered'))} of {f(nn.get('expected'))}, lost {f(nn.get('lost'))}; p50 {f(nn.get('p50_ms'),1)} ms  p99 {f(nn.get('p99_ms'),1)} ms
drain      {f(dd.get('closed'))} closed, {f(dd.get('back'))} back, {f(dd.get('gave_up'))} gave up; all back {f(dd.get('all_back_ms'))} ms after SIGTERM (reconnect p50 {f(dd.get('reconnect_p50_ms'),1)} / p99 {f(dd.get('reconnect_p99_ms'),1)} ms)
problems   {(res.get('outcome') or {}).get('problems')}{'  STOPPED: ' + res['stopped_by'][:80] if 'stopped_by' in res else ''}
results    {out}/million.json""")
EOF
exit "$WSB_RC"
