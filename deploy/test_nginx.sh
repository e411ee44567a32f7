#!/usr/bin/env bash
# test_nginx.sh -- deploy/nginx-*.conf against a real nginx (Debian package `nginx`), no ferrocast
# needed: two fake nodes (a small Python server that answers the WebSocket upgrade with 101 and
# then echoes lines tagged with its name) behind each config, everything under a temp prefix.
#   * nginx -t on each file as shipped and as rendered by nginx-test-config.sh;
#   * the upgrade goes through (101, Upgrade/Connection headers reach the node, bytes flow);
#   * ip_hash: connections from many source addresses (127.0.X.1) spread over both nodes and
#     each source sticks to its node across reconnects;
#   * hash $arg_user consistent: users spread, each user sticks across reconnects and source
#     addresses, anonymous connections still spread;
#   * a node goes down: its clients reconnect to the other node; it comes back: after
#     fail_timeout they return to it (same mapping as before);
#   * /api/ reaches both nodes with keepalive (Connection not "upgrade"), other paths 404.
# Prints "N passed, N failed"; exit 1 on any failure, 77 when nginx is missing.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[[ -x "$NGINX" ]] || { echo "SKIP: nginx not installed (apt-get install -y nginx)"; exit 77; }

. "$HERE/.."/tests/lib.sh nginx
chmod 755 "$TMP"

check() { # check NAME COMMAND... : pass when the command exits 0, show its output otherwise
    local name="$1" out; shift
    if out="$("$@" 2>&1)"; then pass "$name"; else fail "$name" "$out"; fi
}


# --- static checks --------------------------------------------------------------------------
for conf in nginx-ip-hash.conf nginx-hash-user.conf; do
    # as shipped, included in http {} the way Debian's conf.d does
    P="$TMP/verbatim-$conf"; mkdir -p "$P"
    cat >"$P/nginx.conf" <<EOF
pid $P/nginx.pid;
error_log $P/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $P/body; proxy_temp_path $P/proxy; fastcgi_temp_path $P/fastcgi;
    uwsgi_temp_path $P/uwsgi; scgi_temp_path $P/scgi;
    include $HERE/$conf;
}
EOF
    check "nginx -t: $conf as shipped" "$NGINX" -t -q -p "$P" -e "$P/error.log" -c "$P/nginx.conf"

    # proxy_read_timeout on /ws must exceed ping_interval (25 s) + pong_timeout (10 s)
    t="$(awk '/location = \/ws/{w=1} w&&/proxy_read_timeout/{gsub(/[^0-9]/,"",$2); print $2; exit}' "$HERE/$conf")"
    if [[ -n "$t" ]] && (( t > 35 )); then pass "$conf: /ws proxy_read_timeout ${t}s > 25s ping + 10s pong"
    else fail "$conf: /ws proxy_read_timeout (${t:-unset}) must exceed 35s"; fi
    for want in 'max_fails=' 'fail_timeout=' 'proxy_set_header Upgrade $http_upgrade' \
                'proxy_set_header Connection $connection_upgrade' 'map $http_upgrade $connection_upgrade' \
                'location /api/'; do
        grep -qF "$want" "$HERE/$conf" && pass "$conf has $want" || fail "$conf has $want"
    done
done
grep -qE '^\s*ip_hash;' "$HERE/nginx-ip-hash.conf" && pass "nginx-ip-hash.conf uses ip_hash" || fail "nginx-ip-hash.conf uses ip_hash"
grep -qE '^\s*hash \$ferrocast_route_key consistent;' "$HERE/nginx-hash-user.conf" && \
    grep -qE '^\s*default \$arg_user;' "$HERE/nginx-hash-user.conf" && \
    pass "nginx-hash-user.conf hashes \$arg_user consistently" || fail "nginx-hash-user.conf hashes \$arg_user consistently"

# --- two fake nodes -------------------------------------------------------------------------
cat >"$TMP/fake_node.py" <<'EOF'
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME, PORT = sys.argv[1], int(sys.argv[2])

class Node(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("X-Node", NAME)
            self.send_header("X-Seen-Connection", self.headers.get("Connection", ""))
            self.send_header("X-Seen-Forwarded-For", self.headers.get("X-Forwarded-For", ""))
            self.end_headers()
            self.wfile.flush()
            for line in self.rfile:          # after the upgrade: echo lines, tagged
                self.wfile.write(NAME.encode() + b":" + line)
                self.wfile.flush()
            self.close_connection = True
            return
        self.reply()

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        self.reply()

    def reply(self):
        body = json.dumps({"node": NAME, "path": self.path,
                           "connection": self.headers.get("Connection", "")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Node).serve_forever()
EOF

# client.py MODE PORT ... : talks to nginx like a browser would (raw sockets, chosen source IP)
cat >"$TMP/client.py" <<'EOF'
import json, socket, sys

def upgrade(port, src, path):
    """WebSocket upgrade through nginx from source address src; returns (node, seen_conn) or error."""
    s = socket.socket()
    s.settimeout(5)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: ferrocast.test\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"closed before headers: {buf!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    if " 101 " not in lines[0] + " ":
        raise RuntimeError(f"no upgrade: {lines[0]}")
    h = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    s.sendall(b"hello\n")
    while not rest.endswith(b"\n"):
        rest += s.recv(4096)
    s.close()
    node = h["x-node"]
    if rest != node.encode() + b":hello\n":
        raise RuntimeError(f"echo mismatch: {rest!r}")
    return node, h.get("x-seen-connection", ""), h.get("x-seen-forwarded-for", "")

def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    out = {}
    if mode == "sources":          # one connection per source address 127.0.X.1
        for x in range(1, int(sys.argv[3]) + 1):
            src = f"127.0.{x}.1"
            out[src] = upgrade(port, src, "/ws?token=t")[0]
    elif mode == "users":          # one connection per user, from a rotating source address
        for i in range(1, int(sys.argv[3]) + 1):
            src = f"127.{int(sys.argv[4]) if len(sys.argv) > 4 else 0}.{i % 250 + 1}.1"
            out[f"u{i}"] = upgrade(port, src, f"/ws?user=u{i}&token=t")[0]
    elif mode == "headers":
        node, conn, xff = upgrade(port, "127.0.0.1", "/ws?token=t")
        out = {"node": node, "connection": conn, "xff": xff}
    print(json.dumps(out))

main()
EOF

B1="$(free_port)"; B2="$(free_port)"
python3 "$TMP/fake_node.py" n1 "$B1" >"$TMP/n1.log" 2>&1 & B1PID=$!; PIDS+=($B1PID)
python3 "$TMP/fake_node.py" n2 "$B2" >"$TMP/n2.log" 2>&1 & PIDS+=($!)

start_nginx() { # start_nginx CONF : runs nginx in front of both nodes; sets NGINX_PORT
    local conf="$1" prefix f
    NGINX_PORT="$(free_port)"; prefix="$TMP/run-$conf"
    f="$("$HERE/nginx-test-config.sh" "$HERE/$conf" "$prefix" "127.0.0.1:$NGINX_PORT" "127.0.0.1:$B1" "127.0.0.1:$B2")" || return 1
    "$NGINX" -p "$prefix" -e "$prefix/error.log" -c "$f" >"$prefix/stdout.log" 2>&1 &
    PIDS+=($!)
}
start_nginx nginx-ip-hash.conf; PA="$NGINX_PORT"
start_nginx nginx-hash-user.conf; PB="$NGINX_PORT"
wait_port() { for _ in $(seq 1 50); do python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
for p in "$B1" "$B2" "$PA" "$PB"; do wait_port "$p" || fail "port $p did not open"; done

client() { python3 "$TMP/client.py" "$@"; }
# py JSON-A [JSON-B] PYTHON-CONDITION : evaluate a condition over a and b (dicts); print a reason on failure
py() { python3 -c "import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2] or '{}'); ok=($3); print('' if ok else f'a={a} b={b}'); sys.exit(0 if ok else 1)" "$1" "${2:-}"; }

# --- upgrade through nginx ----------------------------------------------------------------------
for p in "$PA" "$PB"; do
    name=$([[ $p == "$PA" ]] && echo ip-hash || echo hash-user)
    h="$(client headers "$p" 2>&1)"
    check "$name: WebSocket upgrade passes through (101, bytes both ways)" py "$h" "" "a['node'] in ('n1','n2')"
    check "$name: node sees Connection: upgrade" py "$h" "" "a['connection'].lower() == 'upgrade'"
    check "$name: node sees X-Forwarded-For" py "$h" "" "a['xff'] == '127.0.0.1'"
done

# --- ip_hash: spread over both nodes, sticky per source -----------------------------------------
A1="$(client sources "$PA" 40 2>&1)"; A2="$(client sources "$PA" 40 2>&1)"
check "ip-hash: 40 source addresses spread over both nodes" py "$A1" "" "sorted(set(a.values())) == ['n1','n2'] and min(list(a.values()).count(n) for n in ('n1','n2')) >= 5"
check "ip-hash: every source reconnects to the same node" py "$A1" "$A2" "a == b"

# --- hash $arg_user consistent ------------------------------------------------------------------
U1="$(client users "$PB" 60 0 2>&1)"; U2="$(client users "$PB" 60 3 2>&1)"
check "hash-user: 60 users spread over both nodes" py "$U1" "" "sorted(set(a.values())) == ['n1','n2'] and min(list(a.values()).count(n) for n in ('n1','n2')) >= 10"
check "hash-user: every user reconnects to the same node, from other addresses too" py "$U1" "$U2" "a == b"
N1="$(client sources "$PB" 40 2>&1)"
check "hash-user: connections without ?user= still spread (fall back to the address)" py "$N1" "" "sorted(set(a.values())) == ['n1','n2']"

# --- /api/ and other paths ------------------------------------------------------------------------
api="$(python3 - "$PB" <<'EOF' 2>&1
import json, sys, urllib.request
seen = []
for i in range(10):
    r = urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{sys.argv[1]}/api/publish", data=b'{"channel":"room:1","data":{}}',
        headers={"Authorization": "apikey k", "Content-Type": "application/json"}), timeout=5)
    seen.append(json.load(r))
print(json.dumps({"nodes": sorted({s["node"] for s in seen}), "paths": sorted({s["path"] for s in seen}),
                  "conn": sorted({s["connection"] for s in seen})}))
EOF
)"
check "/api/ is proxied to both nodes" py "$api" "" "a['nodes'] == ['n1','n2'] and a['paths'] == ['/api/publish']"
check "/api/ keeps upstream connections alive (no Connection: upgrade/close)" py "$api" "" "a['conn'] == ['']"
code="$(python3 -c "
import urllib.request, urllib.error, sys
try: urllib.request.urlopen('http://127.0.0.1:$PA/metrics', timeout=5); print(200)
except urllib.error.HTTPError as e: print(e.code)" 2>&1)"
[[ "$code" == 404 ]] && pass "paths other than /ws and /api/ answer 404" || fail "paths other than /ws and /api/ answer 404 (got $code)"

# --- a node goes away, then comes back ----------------------------------------------------------
kill "$B1PID"; wait "$B1PID" 2>/dev/null
A3="$(client sources "$PA" 40 2>&1)"; U3="$(client users "$PB" 60 0 2>&1)"
check "ip-hash: with n1 down every client reconnects to n2" py "$A3" "" "set(a.values()) == {'n2'}"
check "hash-user: with n1 down every user reconnects to n2" py "$U3" "" "set(a.values()) == {'n2'}"
check "hash-user: n2's own users did not move" py "$U1" "$U3" "all(b[u] == 'n2' for u, n in a.items() if n == 'n2')"
python3 "$TMP/fake_node.py" n1 "$B1" >>"$TMP/n1.log" 2>&1 & PIDS+=($!)
wait_port "$B1"
sleep 11   # fail_timeout=10s: nginx retries n1 after it
A4="$(client sources "$PA" 40 2>&1)"; U4="$(client users "$PB" 60 0 2>&1)"
check "ip-hash: after n1 returns (fail_timeout) clients map as before" py "$A1" "$A4" "a == b"
check "hash-user: after n1 returns (fail_timeout) users map as before" py "$U1" "$U4" "a == b"

grep -q '\[emerg\]\|\[crit\]' "$TMP"/run-*/error.log && fail "nginx error logs are clean" "$(grep -h '\[emerg\]\|\[crit\]' "$TMP"/run-*/error.log)" || pass "nginx error logs have no emerg/crit entries"

summary
