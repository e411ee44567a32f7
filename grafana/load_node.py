#!/usr/bin/env python3
"""Put a little, varied load on a real ferrocast node so every dashboard panel has data.

    python3 grafana/load_node.py --public 127.0.0.1:PORT --secret S --key K \
        --ready READY.json --summary SUMMARY.json [--clients 24] [--max-seconds 90]

Used by grafana/test_prometheus_live.sh. The node's config must have a `room` namespace with
`publish = true`, `presence = true` and a history, `auth.allow_anonymous = false`, and for the
error cases `limits.max_message_size = 32768` (less than 70000), `limits.commands_per_second = 50`,
`limits.frames_per_second = 200`, `limits.outbound_queue_bytes = 65536`,
`limits.handshake_timeout = "1s"`, `auth.timeout = "2s"`.

Phase 1 (then READY.json is written, with one entry per check that failed):
  * --clients sockets, half authenticated by ?token=, half by the `connect` command, each on
    `room:load-(i % 4)` and its own `user:load-i`; client publish, presence, presence_stats,
    history, ping, refresh, unsubscribe + subscribe with recover;
  * server API: publish to rooms and to every user channel, broadcast, history, presence,
    presence_stats, info; one publication scheduled 2 s ahead (delivered during the run), one an
    hour ahead (keeps ferrocast_scheduled_pending at 1), one cancelled (/api/cancel, then 404);
  * every subscriber must receive every publication of its channels exactly once, in order;
  * error cases, each checked against the documented answer (docs/protocol.md): bad and expired
    ?token= (close 4003 / 4011), bad token in `connect` (101, 4003), malformed JSON before auth
    (107, 4004) and after (107, stays open), unknown command (104), unknown namespace (102),
    another user's channel (103), client publish where the namespace forbids it (103), too many
    commands (110, then 4006), a frame over max_message_size (4009), a text frame with invalid
    UTF-8 (1007), a frame with a reserved opcode (1002), more frames in one second than
    frames_per_second (4006), no auth within auth.timeout
    (4001), /api/disconnect (4000), an aborted TCP connection (1006), a client close (1000), a
    plain GET /ws (426), a handshake that never completes (handshake timeout), API with a wrong
    key (401), an unknown API route (404), a malformed API body (400), and a subscriber that
    stops reading while 50 KB publications pile up (slow consumer: 4005, or 1006 when its TCP
    buffer was already full).
Phase 2: the sockets stay open, the API publishes ~10/s and one client publishes ~1/s, each
  socket reads and counts, until every socket has been closed by the server (SIGTERM drain: 4010)
  or --max-seconds pass. SUMMARY.json then holds close codes and counts.
"""
import argparse
import datetime
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy"))
from wsclient import OP_PING, OP_TEXT, WS, APIClient, Closed, HandshakeRefused, mint_token  # noqa: E402

ROOMS = 4


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--public", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--clients", type=int, default=24)
    p.add_argument("--ready", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--max-seconds", type=float, default=90)
    a = p.parse_args()
    host, port = a.public.rsplit(":", 1)
    port = int(port)
    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(what)
        return cond

    def token(user, **kw):
        return mint_token(a.secret, user, **kw)

    api = APIClient(host, port, a.key)

    # ---------------------------------------------------------------- good clients
    clients = []
    for i in range(a.clients):
        user = f"load-{i}"
        try:
            if i % 2 == 0:
                ws = WS.connect(host, port, f"/ws?token={token(user)}")
                _, conn = ws.wait_for(lambda m: "connected" in m)
            else:
                ws = WS.connect(host, port, "/ws")
                conn = ws.call({"connect": {"token": token(user)}})
                ws.wait_for(lambda m: "connected" in m)
                expect("result" in conn, f"client {i}: connect reply {conn}")
        except (Closed, HandshakeRefused, OSError, TimeoutError) as e:
            failures.append(f"client {i}: cannot connect: {e}")
            continue
        ws.user, ws.room = user, f"room:load-{i % ROOMS}"
        ws.got = {}          # channel -> [data.seq...]
        ws.offsets = {}      # channel -> last offset seen
        ws.epochs = {}       # channel -> epoch
        for ch in (ws.room, f"user:{user}"):
            r = ws.call({"subscribe": {"channel": ch}})
            if expect("result" in r, f"client {i}: subscribe {ch}: {r}"):
                ws.offsets[ch] = r["result"]["offset"]
                ws.epochs[ch] = r["result"]["epoch"]
        clients.append(ws)
    expect(len(clients) == a.clients, f"only {len(clients)}/{a.clients} clients connected")

    published = {}  # channel -> [seq...] in publish order

    def api_publish(ch, seq, **extra):
        status, body = api.post("publish", {"channel": ch, "data": {"seq": seq}, **extra})
        if expect(status == 200, f"API publish {ch}: {status} {body}") and "offset" in body:
            published.setdefault(ch, []).append(seq)
        return status, body

    seq = 0
    for _ in range(3):
        for r in range(ROOMS):
            seq += 1
            api_publish(f"room:load-{r}", seq)
    for ws in clients:
        seq += 1
        api_publish(f"user:{ws.user}", seq)
    # client publications (namespace room has publish = true)
    for ws in clients[:ROOMS * 2]:
        seq += 1
        r = ws.call({"publish": {"channel": ws.room, "data": {"seq": seq}}})
        if expect("result" in r, f"client publish: {r}"):
            published.setdefault(ws.room, []).append(seq)
    seq += 1
    status, body = api.post("broadcast", {"channels": [f"room:load-{r}" for r in range(ROOMS)],
                                          "data": {"seq": seq}})
    if expect(status == 200, f"API broadcast: {status} {body}"):
        for r, resp in enumerate(body.get("responses", [])):
            if expect("result" in resp, f"broadcast room:load-{r}: {resp}"):
                published.setdefault(f"room:load-{r}", []).append(seq)
    for method, body in (("history", {"channel": "room:load-0", "limit": 5}),
                         ("presence", {"channel": "room:load-0"}),
                         ("presence_stats", {"channel": "room:load-0"}),
                         ("info", {})):
        status, reply = api.post(method, body)
        expect(status == 200, f"API {method}: {status} {reply}")
    # scheduled: one delivered during the run, one that stays pending
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    seq += 1
    status, body = api.post("publish", {"channel": "room:load-1", "data": {"seq": seq},
                                        "deliver_at": soon.isoformat().replace("+00:00", "Z")})
    if expect(status == 200 and "scheduled" in body, f"API scheduled publish: {status} {body}"):
        published.setdefault("room:load-1", []).append(seq)
    status, body = api.post("publish", {"channel": "room:load-2", "data": {"seq": -1},
                                        "deliver_at": later.isoformat().replace("+00:00", "Z")})
    expect(status == 200 and "scheduled" in body, f"API scheduled publish (1h): {status} {body}")
    # one more, cancelled (POST /api/cancel); cancelling it twice answers 404
    status, body = api.post("publish", {"channel": "room:load-3", "data": {"seq": -2},
                                        "deliver_at": later.isoformat().replace("+00:00", "Z")})
    if expect(status == 200 and "scheduled" in body, f"API scheduled publish to cancel: {status} {body}"):
        status, reply = api.post("cancel", {"id": body["scheduled"]})
        expect(status == 200, f"API cancel: {status} {reply}")
        status, reply = api.post("cancel", {"id": body["scheduled"]})
        expect(status == 404, f"API cancel of a cancelled publication: {status} {reply}")

    # client commands other than subscribe/publish
    c0 = clients[0] if clients else None
    if c0:
        for cmd, ok in (({"presence": {"channel": c0.room}}, "result"),
                        ({"presence_stats": {"channel": c0.room}}, "result"),
                        ({"history": {"channel": c0.room, "limit": 3}}, "result"),
                        ({"ping": {}}, "result"),
                        ({"refresh": {"token": token(c0.user)}}, "result")):
            r = c0.call(cmd)
            expect(ok in r, f"client {list(cmd)[0]}: {r}")

    # every subscriber gets every publication of its channels, once, in order (the scheduled
    # one arrives ~2 s after it was made)
    deadline = time.monotonic() + 10
    for ws in clients:
        want = {ch: published.get(ch, []) for ch in (ws.room, f"user:{ws.user}")}
        while any(len(ws.got.get(ch, [])) < len(v) for ch, v in want.items()):
            try:
                m = ws.recv_json(max(0.01, deadline - time.monotonic()))
            except (TimeoutError, Closed):
                break
            if "pub" in m:
                ws.got.setdefault(m["channel"], []).append(m["pub"]["data"]["seq"])
                ws.offsets[m["channel"]] = m["pub"]["offset"]
        for ch, v in want.items():
            expect(ws.got.get(ch, []) == v,
                   f"{ws.user} on {ch}: got {ws.got.get(ch, [])}, published {v}")

    # unsubscribe, miss one publication, subscribe with recover
    if c0:
        r = c0.call({"unsubscribe": {"channel": c0.room}})
        expect("result" in r, f"unsubscribe: {r}")
        seq += 1
        api_publish(c0.room, seq)
        r = c0.call({"subscribe": {"channel": c0.room,
                                   "recover": {"offset": c0.offsets[c0.room], "epoch": c0.epochs[c0.room]}}})
        res = r.get("result", {})
        expect(res.get("recovered") is True and [p["data"]["seq"] for p in res.get("publications", [])] == [seq],
               f"recover after unsubscribe: {r}")
        for ws in clients[1:]:
            if ws.room == c0.room:
                try:
                    ws.wait_for(lambda m, s=seq: m.get("pub", {}).get("data", {}).get("seq") == s, 5)
                except (TimeoutError, Closed) as e:
                    failures.append(f"{ws.user}: missed publication {seq}: {e}")

    # ---------------------------------------------------------------- error cases
    def closes_with(ws, codes, what, timeout=5):
        try:
            while True:
                ws.recv_frame(timeout)
        except Closed as e:
            return expect(e.code in codes, f"{what}: closed with {e.code}, expected {codes}")
        except TimeoutError:
            return expect(False, f"{what}: not closed within {timeout}s")

    def connect_raw(path="/ws", **kw):
        try:
            return WS.connect(host, port, path, **kw)
        except (HandshakeRefused, OSError) as e:
            failures.append(f"connect {path}: {e}")
            return None

    # no auth within auth.timeout (2 s): 4001 -- started first, checked last
    idle = connect_raw()

    ws = connect_raw(f"/ws?token={token('x')[:-4]}AAAA")           # bad signature
    if ws:
        closes_with(ws, {4003}, "bad ?token=")
    ws = connect_raw(f"/ws?token={token('x', exp=int(time.time()) - 60)}")
    if ws:
        closes_with(ws, {4011}, "expired ?token=")
    ws = connect_raw()
    if ws:
        r = ws.call({"connect": {"token": "not-a-jwt"}})
        expect(r.get("error", {}).get("code") == 101, f"connect with a bad token: {r}")
        closes_with(ws, {4003}, "connect with a bad token")
    ws = connect_raw()
    if ws:
        ws.send_text("{not json")
        try:
            r = ws.recv_json()
            expect(r.get("error", {}).get("code") == 107, f"malformed JSON before auth: {r}")
        except (Closed, TimeoutError) as e:
            failures.append(f"malformed JSON before auth: no 107 reply ({e})")
        closes_with(ws, {4004}, "malformed JSON before auth")

    ws = connect_raw(f"/ws?token={token('err-user')}")
    if ws:
        try:
            ws.wait_for(lambda m: "connected" in m)
            ws.send_text("[[[")
            r = ws.recv_json()
            expect(r.get("error", {}).get("code") == 107, f"malformed JSON after auth: {r}")
            for cmd, code in (({"frobnicate": {}}, 104),
                              ({"subscribe": {"channel": "nosuchns:1"}}, 102),
                              ({"subscribe": {"channel": "user:someone-else"}}, 103),
                              ({"publish": {"channel": "user:err-user", "data": 1}}, 103),
                              ({"subscribe": {"channel": "bad channel!"}}, 107)):
                r = ws.call(cmd)
                expect(r.get("error", {}).get("code") == code, f"{cmd}: expected {code}, got {r}")
        except (Closed, TimeoutError) as e:
            failures.append(f"error-case client: {e}")
        ws.close()                                                    # 1000

    ws = connect_raw(f"/ws?token={token('flood-user')}")
    if ws:
        # 2 x commands_per_second + 1 in one write: 50 results, 51 x 110, then close 4006 (one
        # write, so nothing is left unread when the node closes, which would turn into a reset)
        try:
            ws.send_json_batch([{"id": i + 1, "ping": {}} for i in range(101)])
        except Closed:
            pass
        codes, code = set(), None
        try:
            while True:
                m = ws.recv_json()
                if "error" in m:
                    codes.add(m["error"]["code"])
        except Closed as e:
            code = e.code
        except TimeoutError:
            pass
        expect(110 in codes and code == 4006, f"command flood: errors {codes}, close {code}")

    ws = connect_raw(f"/ws?token={token('big-user')}")
    if ws:
        try:
            ws.wait_for(lambda m: "connected" in m)
            ws.send_text(json.dumps({"ping": {}, "pad": "x" * 70000}))   # > max_message_size
        except (Closed, TimeoutError):
            pass
        closes_with(ws, {4009}, "frame over max_message_size")

    # the frame layer (ferrocast_protocol_errors_total by kind): invalid UTF-8 -> 1007 (utf8), a
    # reserved opcode -> 1002 (protocol), 300 pings in one write with frames_per_second = 200 ->
    # 4006 (frame_rate); the frame over max_message_size above was too_big
    for user, frames, codes, what in (
            ("utf8-user", WS.frame(OP_TEXT, b'{"ping":{}}\xff'), {1007}, "text frame with invalid UTF-8"),
            ("proto-user", WS.frame(0x3, b""), {1002}, "frame with a reserved opcode"),
            ("frames-user", b"".join(WS.frame(OP_PING, b"") for _ in range(300)), {4006},
             "more frames in one second than limits.frames_per_second")):
        ws = connect_raw(f"/ws?token={token(user)}")
        if ws:
            try:
                ws.wait_for(lambda m: "connected" in m)
                ws._send(frames)
            except (Closed, TimeoutError):
                pass
            closes_with(ws, codes, what)

    ws = connect_raw(f"/ws?token={token('kick-user')}")
    if ws:
        try:
            ws.wait_for(lambda m: "connected" in m)
        except (Closed, TimeoutError):
            pass
        status, body = api.post("disconnect", {"user": "kick-user"})
        expect(status == 200, f"API disconnect: {status} {body}")
        closes_with(ws, {4000}, "API disconnect")

    ws = connect_raw(f"/ws?token={token('abort-user')}")
    if ws:
        try:
            ws.wait_for(lambda m: "connected" in m)
        except (Closed, TimeoutError):
            pass
        ws.abort()                                                    # server sees 1006

    # plain GET /ws: 426 (handshake failure bad_request)
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(f"GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = s.recv(4096).decode("latin-1")
        s.close()
        expect(" 426 " in head.split("\r\n")[0] + " ", f"plain GET /ws: {head.splitlines()[:1]}")
    except OSError as e:
        failures.append(f"plain GET /ws: {e}")
    # a handshake that never completes: handshake_timeout (1 s)
    stalled = socket.create_connection((host, port), timeout=5)
    stalled.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")

    # server API errors
    status, body = api.post("publish", {"channel": "room:load-0", "data": 1}, key="wrong-key")
    expect(status == 401, f"API with a wrong key: {status} {body}")
    status, body = api.post("no_such_call", {})
    expect(status == 404, f"unknown API route: {status} {body}")
    status, body = api.post("publish", None, raw="{oops")
    expect(status == 400, f"malformed API body: {status} {body}")

    # slow consumer: subscribes, stops reading, 50 KB publications pile up
    slow = connect_raw(f"/ws?token={token('slow-user')}", rcvbuf=4096)
    if slow:
        try:
            slow.wait_for(lambda m: "connected" in m)
            r = slow.call({"subscribe": {"channel": "room:slow"}})
            expect("result" in r, f"slow consumer subscribe: {r}")
        except (Closed, TimeoutError) as e:
            failures.append(f"slow consumer setup: {e}")
        pad = "p" * 50000
        for i in range(200):
            status, _ = api.post("publish", {"channel": "room:slow", "data": {"i": i, "pad": pad}})
            if status != 200:
                failures.append(f"slow consumer publish {i}: {status}")
                break
        got = 0
        try:
            while True:
                slow.recv_frame(10)
                got += 1
        except Closed as e:
            expect(e.code in (4005, 1006), f"slow consumer: closed with {e.code}, expected 4005 (or 1006)")
        except TimeoutError:
            failures.append(f"slow consumer: not closed (read {got} messages)")

    if idle:
        closes_with(idle, {4001}, "no auth within auth.timeout", timeout=6)
    # the stalled handshake is cut by the node (handshake_timeout)
    try:
        stalled.settimeout(5)
        stalled.recv(4096)
    except OSError:
        pass
    stalled.close()

    with open(a.ready, "w") as f:
        json.dump({"failures": failures, "sockets": len(clients),
                   "published": sum(len(v) for v in published.values())}, f)

    # ---------------------------------------------------------------- steady phase
    stop = threading.Event()
    closes, recv_counts, lock = {}, {"pubs": 0}, threading.Lock()

    def reader(ws):
        while not stop.is_set():
            try:
                m = ws.recv_json(0.5)
            except TimeoutError:
                continue
            except Closed as e:
                with lock:
                    closes[str(e.code)] = closes.get(str(e.code), 0) + 1
                return
            except (OSError, ValueError):
                return
            if "pub" in m:
                with lock:
                    recv_counts["pubs"] += 1

    threads = [threading.Thread(target=reader, args=(ws,), daemon=True) for ws in clients[1:]]
    for t in threads:
        t.start()
    api_errors, n = 0, 0
    end = time.monotonic() + a.max_seconds
    while time.monotonic() < end and any(t.is_alive() for t in threads):
        n += 1
        try:
            api.post("publish", {"channel": f"room:load-{n % ROOMS}", "data": {"tick": n}})
        except OSError:
            api_errors += 1
        if n % 10 == 0 and c0 and not c0.closed:
            try:   # c0 publishes (its replies/publications are read here)
                c0.call({"publish": {"channel": c0.room, "data": {"tick": n}}}, timeout=2)
                c0.pending.clear()
            except Closed as e:
                with lock:
                    closes[str(e.code)] = closes.get(str(e.code), 0) + 1
            except (TimeoutError, OSError):
                pass
        time.sleep(0.1)
    if c0 and not c0.closed:
        try:
            while True:
                c0.recv_frame(3)
        except Closed as e:
            closes[str(e.code)] = closes.get(str(e.code), 0) + 1
        except (TimeoutError, OSError):
            pass
    stop.set()
    for t in threads:
        t.join(2)
    with open(a.summary, "w") as f:
        json.dump({"closes": closes, "received": recv_counts["pubs"], "ticks": n,
                   "api_errors": api_errors, "sockets": len(clients)}, f)


if __name__ == "__main__":
    main()
