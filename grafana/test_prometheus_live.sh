#!/usr/bin/env bash
# test_prometheus_live.sh -- the dashboards and alert rules against the real programs: a real
# ferrocast node (target/debug/ferrocast, memory broker, 2 shards) under a little load, a real
# Prometheus (Debian package `prometheus`) scraping it as job "ferrocast" with grafana/alerts.yml
# loaded, then:
#   * the load (grafana/load_node.py: subscribers, API and client publications, scheduled ones,
#     every error path with its documented answer, a slow consumer) behaves as documented and
#     shows up in /metrics (grafana/live_checks.py counters);
#   * docs/metrics.md and grafana/testdata/fake_metrics.prom list exactly the node's metric
#     families, types and label names; every job label in the kit is "ferrocast";
#   * every dashboard panel query and every alert expression goes through Prometheus' HTTP API
#     (grafana/check_queries.py --require-data --fail-nan): each parses, each panel returns data
#     (and not only NaN), legends name labels the results have, and every ferrocast_* metric a
#     dashboard or alert names exists in the node's /metrics; again with one node and one shard
#     selected; Prometheus evaluates every rule without error and none is pending or firing;
#   * a connection handler that panics (debug builds: FERROCAST_TEST_PANIC) is closed, counted in
#     ferrocast_connection_panics_total and as disconnect 1011, and FerrocastConnectionPanics fires;
#   * SIGTERM drains the node: /health/ready 503 and ferrocast_draining 1 while it drains, every
#     load socket closed with 4010, exit status 0; Prometheus saw ferrocast_draining=1 (alert
#     FerrocastDrainStuck pending) and, once the node is gone, FerrocastNodeDown goes pending.
# Prints "N passed, N failed"; exit 1 on any failure, 77 when a prerequisite is missing.
# FERROCAST_BIN=path uses that binary instead of building target/debug/ferrocast. ~40 s.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
for bin in prometheus promtool python3 curl; do
    command -v "$bin" >/dev/null || { echo "SKIP: $bin not installed (apt-get install -y prometheus curl python3)"; exit 77; }
done
if [[ -n "${FERROCAST_BIN:-}" ]]; then
    BIN="$FERROCAST_BIN"
else
    command -v cargo >/dev/null || { echo "SKIP: cargo not installed and FERROCAST_BIN not set"; exit 77; }
    (cd "$ROOT" && cargo build --quiet --bin ferrocast) || { echo "FAIL  cargo build"; exit 1; }
    BIN="$ROOT/target/debug/ferrocast"
fi
[[ -x "$BIN" ]] || { echo "SKIP: no ferrocast binary at $BIN"; exit 77; }

. "$ROOT"/tests/lib.sh promlive

check() { # check NAME COMMAND... : pass when the command exits 0; its output is shown either way
    local name="$1" out; shift
    if out="$("$@" 2>&1)"; then pass "$name: $(tail -1 <<<"$out")"; else fail "$name" "$out"; fi
}
LIVE=(python3 "$HERE/live_checks.py")

# --- the node ---------------------------------------------------------------------------------
PUB="$(free_port)"; ADM="$(free_port)"; PP="$(free_port)"; HOOK="$(free_port)"
SECRET="live-secret"; KEY="live-key"
# A webhook receiver (answers 204 to every POST), so the webhook panels have data.
python3 -c '
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
' "$HOOK" >"$TMP/hook.log" 2>&1 & PIDS+=($!)
cat >"$TMP/ferrocast.toml" <<EOF
[listen]
public = "127.0.0.1:$PUB"
admin = "127.0.0.1:$ADM"
shards = 2
[node]
name = "live-1"
[auth]
token_secret = "$SECRET"
timeout = "2s"
allow_anonymous = false
[api]
key = "$KEY"
[broker]
kind = "memory"
[limits]
max_message_size = 32768
outbound_queue_bytes = 65536
commands_per_second = 50
frames_per_second = 200
handshake_timeout = "1s"
[shutdown]
drain_seconds = 3
[webhooks]
url = "http://127.0.0.1:$HOOK/ferrocast"
secret = "live-hook-secret"
events = ["user_online", "user_offline", "channel_occupied", "channel_vacated", "client_publish"]
vacate_delay = "1s"
offline_delay = "1s"
batch_wait = "50ms"
[namespaces.room]
publish = true
presence = true
join_leave = true
history_size = 100
history_ttl = "1h"
[[pusher.apps]]
app_id = "live-app"
key = "live-app-key"
secret = "live-app-secret"
EOF
check "ferrocast config check" "$BIN" config check "$TMP/ferrocast.toml"
# FERROCAST_TEST_PANIC: debug builds panic on the message "__panic__" (the panic check below)
FERROCAST_TEST_PANIC=1 "$BIN" serve --config "$TMP/ferrocast.toml" >"$TMP/node.log" 2>&1 & NODE_PID=$!; PIDS+=($NODE_PID)
ADMIN="http://127.0.0.1:$ADM"
for _ in $(seq 1 100); do curl -fs "$ADMIN/health/ready" >/dev/null && break; sleep 0.1; done
if curl -fs "$ADMIN/health/ready" >/dev/null; then pass "node ready (public :$PUB, admin :$ADM)"
else fail "node ready" "$(tail -20 "$TMP/node.log")"; echo; echo "$PASSED passed, $FAILED failed"; exit 1; fi

# --- Prometheus: job "ferrocast" = the node, plus Prometheus itself as a second job -------------
cp "$HERE/alerts.yml" "$TMP/alerts.yml"
cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: ferrocast
    static_configs:
      - targets: ["127.0.0.1:$ADM"]
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:$PP"]
EOF
check "promtool check config (test config)" promtool check config "$TMP/prometheus.yml"
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/prom" \
    --web.listen-address="127.0.0.1:$PP" --log.level=warn >"$TMP/prometheus.log" 2>&1 & PIDS+=($!)
PROM="http://127.0.0.1:$PP"
ok=0
for _ in $(seq 1 60); do
    "${LIVE[@]}" query "$PROM" 'count_over_time(up{job="ferrocast"}[1m]) and up{job="ferrocast"} == 1' 2 >/dev/null && { ok=1; break; }
    sleep 0.5
done
(( ok )) && pass "prometheus scrapes the node as job ferrocast" || fail "prometheus scrapes the node as job ferrocast" "$(tail -20 "$TMP/prometheus.log")"

# --- load ---------------------------------------------------------------------------------------
python3 "$HERE/load_node.py" --public "127.0.0.1:$PUB" --secret "$SECRET" --key "$KEY" \
    --ready "$TMP/ready.json" --summary "$TMP/summary.json" --max-seconds 90 >"$TMP/load.log" 2>&1 & LOAD_PID=$!; PIDS+=($LOAD_PID)
for _ in $(seq 1 600); do [[ -s "$TMP/ready.json" ]] && break; kill -0 "$LOAD_PID" 2>/dev/null || break; sleep 0.1; done
if [[ -s "$TMP/ready.json" ]]; then
    out="$(python3 - "$TMP/ready.json" <<'EOF' 2>&1
import json, sys
d = json.load(open(sys.argv[1]))
print("\n".join(d["failures"]) or f"{d['sockets']} sockets, {d['published']} publications checked")
sys.exit(1 if d["failures"] else 0)
EOF
)" && pass "load: every publication delivered once, in order; every error case answered as documented ($out)" \
   || fail "load: publications and error cases as documented (docs/protocol.md)" "$out"
else
    fail "load generator finished its first phase" "$(tail -30 "$TMP/load.log")"
fi
sleep 3   # a few scrapes of the steady phase

check "node /metrics counts what the load did" "${LIVE[@]}" counters "$ADMIN/metrics"
check "promtool check metrics (node's exposition)" bash -c "curl -fs '$ADMIN/metrics' | promtool check metrics"
check "docs/metrics.md matches the node's /metrics" "${LIVE[@]}" docs "$ADMIN/metrics"
check "grafana/testdata/fake_metrics.prom matches the node's /metrics" "${LIVE[@]}" fake "$ADMIN/metrics"
check "job label" "${LIVE[@]}" jobs
check "Nodes up counts job ferrocast only" "${LIVE[@]}" query "$PROM" 'sum(up{job="ferrocast"}) == 1' 1

# --- every panel and alert through Prometheus ----------------------------------------------------
out="$(python3 "$HERE/check_queries.py" "$PROM" "$ADMIN/metrics" --require-data --fail-nan --wait 20 2>&1)"; rc=$?
if [[ $rc -eq 0 ]] && grep -q '^PASSED' <<<"$out"; then
    pass "check_queries --require-data --fail-nan: $(head -1 <<<"$out")"
    grep -A30 '^note' <<<"$out" | sed 's/^/      /'
else
    fail "check_queries --require-data --fail-nan (rc=$rc)" "$out"
fi
INSTANCE="127.0.0.1:$ADM"
out="$(python3 "$HERE/check_queries.py" "$PROM" "$ADMIN/metrics" --require-data --wait 5 --var "node=$INSTANCE" --var shard=1 2>&1)"; rc=$?
[[ $rc -eq 0 ]] && pass "check_queries with node=$INSTANCE shard=1" || fail "check_queries with node=$INSTANCE shard=1 (rc=$rc)" "$out"
check "alert rules evaluate cleanly" "${LIVE[@]}" rules "$PROM"

# --- a connection handler panics (debug builds only: the FERROCAST_TEST_PANIC hook) ---------------
out="$(python3 - "$ROOT" "$PUB" "$SECRET" <<'EOF' 2>&1
import os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "deploy"))
from wsclient import WS, Closed, mint_token
ws = WS.connect("127.0.0.1", int(sys.argv[2]), f"/ws?token={mint_token(sys.argv[3], 'panic-user')}")
ws.wait_for(lambda m: "connected" in m)
ws.send_text('"__panic__"')
try:
    while True:
        ws.recv_frame(5)
except Closed as e:
    print(f"the panicking connection was closed ({e.code})")
except TimeoutError:
    print("the connection was not closed within 5 s")
    sys.exit(1)
EOF
)"; rc=$?
if [[ "$BIN" == */release/* ]]; then
    pass "connection panic: skipped, $BIN is a release build (no FERROCAST_TEST_PANIC hook)"
else
    (( rc == 0 )) && pass "connection panic: $out" || fail "a panicking connection is closed" "$out"
    check "alert FerrocastConnectionPanics fires (no for:, one evaluation)" "${LIVE[@]}" alert "$PROM" FerrocastConnectionPanics firing 15
    check "ferrocast_connection_panics_total counts the panic" "${LIVE[@]}" query "$PROM" 'ferrocast_connection_panics_total{job="ferrocast"}' 1
    check "the panic is counted as disconnect 1011" "${LIVE[@]}" query "$PROM" 'ferrocast_disconnects_total{job="ferrocast", code="1011"}' 1
    check "the node still serves after the panic" curl -fs "$ADMIN/health/ready"
fi

# --- drain (SIGTERM) ----------------------------------------------------------------------------
kill -TERM "$NODE_PID"
t0=$(date +%s.%N)
saw_draining=0; saw_503=0; refused=0; accepted=0
for _ in $(seq 1 100); do
    kill -0 "$NODE_PID" 2>/dev/null || break
    m="$(curl -fs "$ADMIN/metrics" 2>/dev/null)" && grep -q '^ferrocast_draining 1' <<<"$m" && saw_draining=1
    code="$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/health/ready" 2>/dev/null)"; [[ "$code" == 503 ]] && saw_503=1
    # a new WebSocket upgrade: refused (listener closed) or 503, never 101
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 -H 'Upgrade: websocket' -H 'Connection: Upgrade' \
        -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' -H 'Sec-WebSocket-Version: 13' "http://127.0.0.1:$PUB/ws?token=x")"
    case "$code" in 000|503) refused=$((refused + 1)) ;; 101) accepted=1 ;; esac
    sleep 0.1
done
wait "$NODE_PID"; node_rc=$?
t1=$(date +%s.%N)
(( saw_draining )) && pass "ferrocast_draining is 1 during the drain" || fail "ferrocast_draining is 1 during the drain"
(( refused > 0 && ! accepted )) && pass "new WebSocket upgrades are refused during the drain" || fail "new WebSocket upgrades are refused during the drain (got a 101)"
(( saw_503 )) && pass "/health/ready answers 503 during the drain" || fail "/health/ready answers 503 during the drain"
secs="$(python3 -c "print(f'{$t1 - $t0:.1f}')")"
if [[ $node_rc -eq 0 ]] && python3 -c "import sys; sys.exit(0 if $t1 - $t0 < 3 + 3 else 1)"; then pass "node exits 0 after SIGTERM, ${secs}s (drain_seconds = 3)"
else fail "node exits 0 within drain_seconds + 3 s after SIGTERM (rc=$node_rc, ${secs}s)" "$(tail -5 "$TMP/node.log")"; fi
wait "$LOAD_PID" 2>/dev/null
out="$(python3 - "$TMP/summary.json" <<'EOF' 2>&1
import json, sys
d = json.load(open(sys.argv[1]))
closes = d["closes"]
print(f"{d['sockets']} sockets: closes {closes}, {d['received']} publications received in the steady phase")
sys.exit(0 if closes == {"4010": d["sockets"]} and d["received"] > 0 else 1)
EOF
)" && pass "every load socket closed with 4010: $out" || fail "every load socket closed with 4010" "$out"
check "Prometheus saw the drain" "${LIVE[@]}" query "$PROM" 'max_over_time(ferrocast_draining{job="ferrocast"}[1m])' 1
check "alert FerrocastDrainStuck went pending during the drain" "${LIVE[@]}" query "$PROM" 'max_over_time(ALERTS{alertname="FerrocastDrainStuck", alertstate="pending"}[1m])' 1
check "alert FerrocastNodeDown pending once the node is gone" "${LIVE[@]}" alert "$PROM" FerrocastNodeDown pending 15

summary
