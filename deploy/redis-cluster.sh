#!/usr/bin/env bash
# redis-cluster.sh -- a throwaway 6-node Redis Cluster (3 masters, 3 replicas) on loopback, for
# tests and local fleets (Debian packages redis-server + redis-tools).
#
#   deploy/redis-cluster.sh start DIR BASEPORT
#       Starts redis-server on 127.0.0.1:BASEPORT .. BASEPORT+5 (cluster bus ports +10000),
#       daemonized, every file under DIR (redis-PORT.conf/.pid/.log, nodes-PORT.conf), no
#       persistence (no RDB, no AOF), cluster-node-timeout 2000 ms; creates the cluster with
#       `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes` and waits until every
#       node reports cluster_state:ok and knows all 6 nodes. Prints the seed URLs for ferrocast:
#           urls = ["redis://127.0.0.1:BASEPORT", ...]
#       Exit 1 when a port is taken or the cluster does not form (what is started is stopped).
#   deploy/redis-cluster.sh stop DIR
#       Stops every server started under DIR (SHUTDOWN NOSAVE, then SIGTERM/SIGKILL by pidfile).
#   deploy/redis-cluster.sh status DIR
#       One line per node: port, role, cluster_state.
#
# Env: REDIS_SERVER, REDIS_CLI (default: from PATH or /usr/bin), CLUSTER_TIMEOUT (seconds, 30).
set -uo pipefail

REDIS_SERVER="${REDIS_SERVER:-$(command -v redis-server || echo /usr/bin/redis-server)}"
REDIS_CLI="${REDIS_CLI:-$(command -v redis-cli || echo /usr/bin/redis-cli)}"
NODES=6

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

ports_of() { # the ports recorded under DIR
    local dir="$1" f
    for f in "$dir"/redis-*.conf; do
        [[ -e "$f" ]] || continue
        f="${f##*/redis-}"; echo "${f%.conf}"
    done | sort -n
}

stop_cluster() {
    local dir="$1" port pid i
    for port in $(ports_of "$dir"); do
        "$REDIS_CLI" -h 127.0.0.1 -p "$port" SHUTDOWN NOSAVE >/dev/null 2>&1
    done
    for port in $(ports_of "$dir"); do
        [[ -s "$dir/redis-$port.pid" ]] || continue
        pid="$(cat "$dir/redis-$port.pid")"
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            (( i == 10 )) && kill -TERM "$pid" 2>/dev/null
            (( i == 40 )) && kill -KILL "$pid" 2>/dev/null
            sleep 0.1
        done
        rm -f "$dir/redis-$port.pid"
    done
}

ports_free() { # ports_free PORT...: names the first port something already uses on 127.0.0.1
    python3 - "$@" <<'EOF'
import socket, sys
for p in sys.argv[1:]:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", int(p)))
    except OSError:
        print(f"port {p} is in use", file=sys.stderr)
        sys.exit(1)
    finally:
        s.close()
EOF
}

start_cluster() {
    local dir="$1" base="$2" i port addrs=() out deadline ok
    [[ -x "$REDIS_SERVER" && -x "$REDIS_CLI" ]] || { echo "redis-server/redis-cli not installed (apt-get install -y redis-server redis-tools)" >&2; return 1; }
    [[ "$base" =~ ^[0-9]+$ ]] && (( base >= 1024 && base + NODES - 1 + 10000 <= 65535 )) || { echo "BASEPORT must be 1024..$((65535 - 10000 - NODES + 1))" >&2; return 2; }
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    local all=()
    for ((i = 0; i < NODES; i++)); do all+=("$((base + i))" "$((base + i + 10000))"); done
    ports_free "${all[@]}" || return 1
    for ((i = 0; i < NODES; i++)); do
        port=$((base + i))
        rm -f "$dir/nodes-$port.conf"
        cat >"$dir/redis-$port.conf" <<EOF
port $port
bind 127.0.0.1
daemonize yes
pidfile $dir/redis-$port.pid
logfile $dir/redis-$port.log
dir $dir
cluster-enabled yes
cluster-config-file nodes-$port.conf
cluster-node-timeout 2000
save ""
appendonly no
EOF
        "$REDIS_SERVER" "$dir/redis-$port.conf" || { echo "redis-server on $port did not start" >&2; stop_cluster "$dir"; return 1; }
        addrs+=("127.0.0.1:$port")
    done
    for ((i = 0; i < NODES; i++)); do # each answers PING
        port=$((base + i)); ok=0
        for _ in $(seq 1 100); do
            [[ "$("$REDIS_CLI" -h 127.0.0.1 -p "$port" PING 2>/dev/null)" == PONG ]] && { ok=1; break; }
            sleep 0.05
        done
        (( ok )) || { echo "redis-server on $port does not answer:" >&2; tail -5 "$dir/redis-$port.log" >&2; stop_cluster "$dir"; return 1; }
    done
    if ! out="$("$REDIS_CLI" --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes 2>&1)"; then
        echo "redis-cli --cluster create failed:" >&2; echo "$out" >&2; stop_cluster "$dir"; return 1
    fi
    deadline=$((SECONDS + ${CLUSTER_TIMEOUT:-30}))
    while (( SECONDS < deadline )); do
        ok=1
        for ((i = 0; i < NODES; i++)); do
            out="$("$REDIS_CLI" -h 127.0.0.1 -p $((base + i)) CLUSTER INFO 2>/dev/null | tr -d '\r')"
            grep -q '^cluster_state:ok' <<<"$out" && grep -q "^cluster_known_nodes:$NODES" <<<"$out" || { ok=0; break; }
        done
        (( ok )) && break
        sleep 0.2
    done
    if (( ! ok )); then
        echo "cluster did not reach cluster_state:ok within ${CLUSTER_TIMEOUT:-30}s" >&2
        "$REDIS_CLI" -h 127.0.0.1 -p "$base" CLUSTER INFO >&2
        stop_cluster "$dir"; return 1
    fi
    local urls=()
    for ((i = 0; i < NODES; i++)); do urls+=("\"redis://127.0.0.1:$((base + i))\""); done
    echo "urls = [$(IFS=,; echo "${urls[*]}" | sed 's/,/, /g')]"
}

status_cluster() {
    local dir="$1" port role state
    for port in $(ports_of "$dir"); do
        role="$("$REDIS_CLI" -h 127.0.0.1 -p "$port" ROLE 2>/dev/null | head -1)"
        state="$("$REDIS_CLI" -h 127.0.0.1 -p "$port" CLUSTER INFO 2>/dev/null | tr -d '\r' | grep '^cluster_state:')"
        echo "127.0.0.1:$port ${role:-down} ${state:-}"
    done
}

case "${1:-}" in
    start) [[ $# -eq 3 ]] || usage; start_cluster "$2" "$3" ;;
    stop) [[ $# -eq 2 ]] || usage; stop_cluster "$2" ;;
    status) [[ $# -eq 2 ]] || usage; status_cluster "$2" ;;
    *) usage ;;
esac
