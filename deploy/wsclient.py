"""A small, blocking WebSocket client for ferrocast's operational tests (Python standard library only).

Used by grafana/load_node.py (load on a real node for the live Prometheus test) and
deploy/test_nginx_fleet.py (nginx in front of two real nodes). It speaks RFC 6455 just far enough
to act like a browser: the upgrade (optionally from a chosen source address, so nginx's ip_hash
sees many clients), masked text frames out, unmasked frames in, automatic Pong, close codes, and
ferrocast protocol v1 request/reply on top (docs/protocol.md). Also mints HS256 client tokens.

    ws = WS.connect("127.0.0.1", 8080, "/ws?token=" + mint_token("secret", "17"), src="127.0.1.1")
    pushes, connected = ws.wait_for(lambda m: "connected" in m)
    reply = ws.call({"subscribe": {"channel": "room:1"}})      # -> the reply object (result or error)
    msg = ws.recv_json(timeout=5)                                # next message, or raises Closed
"""
import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import time

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeRefused(Exception):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, status, headers, body):
        super().__init__(f"upgrade refused: HTTP {status} {body[:200]!r}")
        self.status, self.headers, self.body = status, headers, body


class Closed(Exception):
    """The connection ended: a close frame (code, reason) or the TCP stream (code 1006)."""

    def __init__(self, code, reason=""):
        super().__init__(f"closed: {code} {reason}")
        self.code, self.reason = code, reason


def _b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def mint_token(secret, sub, exp=None, ttl=3600, channels=None, info=None):
    """An HS256 JWT as `ferrocast token` makes it (sub, exp, channels, info)."""
    claims = {"sub": str(sub)}
    if exp is None and ttl is not None:
        exp = int(time.time()) + ttl
    if exp is not None:
        claims["exp"] = int(exp)
    if channels:
        claims["channels"] = list(channels)
    if info is not None:
        claims["info"] = info
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64url(sig)}"


class WS:
    def __init__(self, sock, read_ahead=b""):
        self.sock = sock
        self.buf = bytearray(read_ahead)
        self.next_id = 1
        self.closed = None          # Closed exception once the connection has ended
        self.pending = []           # messages read while waiting for something else

    # ------------------------------------------------------------------ connection
    @classmethod
    def connect(cls, host, port, path="/ws", src=None, timeout=5.0, rcvbuf=None, headers=None):
        """Upgrade a new TCP connection (bound to source address `src` when given)."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            if src:
                s.bind((src, 0))
            s.connect((host, port))
            key = base64.b64encode(os.urandom(16)).decode()
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                       f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    raise HandshakeRefused(0, {}, data)
                data += chunk
            head, rest = data.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            hdrs = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            if status != 101:
                n = int(hdrs.get("content-length", "0") or 0)
                while len(rest) < n:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                raise HandshakeRefused(status, hdrs, rest)
            want = base64.b64encode(hashlib.sha1(
                (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            if hdrs.get("sec-websocket-accept") != want:
                raise HandshakeRefused(status, hdrs, b"bad Sec-WebSocket-Accept")
        except BaseException:
            s.close()
            raise
        ws = cls(s, rest)
        ws.headers = hdrs
        return ws

    def local_addr(self):
        return self.sock.getsockname()

    # ------------------------------------------------------------------ frames out
    def send_frame(self, opcode, payload, fin=True, mask=True):
        self._send(self.frame(opcode, payload, fin, mask))

    def send_json_batch(self, objs):
        """Several messages in one write (one TCP segment when small)."""
        self._send(b"".join(self.frame(OP_TEXT, json.dumps(o).encode()) for o in objs))

    def _send(self, data):
        if self.closed:
            raise self.closed
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.closed = Closed(1006, f"send: {e}")
            raise self.closed

    @staticmethod
    def frame(opcode, payload, fin=True, mask=True):
        """One RFC 6455 frame (masked, as a client must)."""
        b0 = (0x80 if fin else 0) | opcode
        n = len(payload)
        mbit = 0x80 if mask else 0
        if n < 126:
            head = struct.pack("!BB", b0, mbit | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, mbit | 126, n)
        else:
            head = struct.pack("!BBQ", b0, mbit | 127, n)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else \
                _mask_fast(payload, key)
            head += key
        return head + payload

    def send_text(self, text):
        self.send_frame(OP_TEXT, text.encode() if isinstance(text, str) else text)

    def send_json(self, obj):
        self.send_text(json.dumps(obj, separators=(",", ":")))

    def close(self, code=1000, wait=1.0):
        """Send a close frame, wait briefly for the echo, close the socket."""
        if not self.closed:
            try:
                self.send_frame(OP_CLOSE, struct.pack("!H", code))
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline:
                    self.recv_frame(max(0.01, deadline - time.monotonic()))
            except (Closed, OSError, TimeoutError, socket.timeout):
                pass
        try:
            self.sock.close()
        except OSError:
            pass
        if not self.closed:
            self.closed = Closed(1000, "closed by client")

    def abort(self):
        """Drop the TCP connection without a close frame (the server sees 1006)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass
        self.closed = Closed(1006, "aborted by client")

    # ------------------------------------------------------------------ frames in
    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("timed out waiting for a frame")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(262144)
            except socket.timeout:
                raise TimeoutError("timed out waiting for a frame") from None
            except OSError as e:
                self.closed = Closed(1006, f"recv: {e}")
                raise self.closed from None
            if not chunk:
                self.closed = Closed(1006, "EOF without close frame")
                raise self.closed
            self.buf += chunk

    def recv_frame(self, timeout=5.0):
        """(opcode, payload) of the next data frame; answers Pings; raises Closed on a close frame."""
        if self.closed:
            raise self.closed
        deadline = None if timeout is None else time.monotonic() + timeout
        message, msg_op = bytearray(), None
        while True:
            self._fill(2, deadline)
            b0, b1 = self.buf[0], self.buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                self._fill(4, deadline)
                n, off = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                self._fill(10, deadline)
                n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
            if b1 & 0x80:
                off += 4  # a masked server frame would be a server bug; tolerate it
            self._fill(off + n, deadline)
            payload = bytes(self.buf[off:off + n])
            if b1 & 0x80:
                key = self.buf[off - 4:off]
                payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            del self.buf[:off + n]
            op, fin = b0 & 0x0F, bool(b0 & 0x80)
            if op == OP_PING:
                try:
                    self.send_frame(OP_PONG, payload)
                except Closed:
                    pass
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                reason = payload[2:].decode("utf-8", "replace")
                try:  # echo the close like a browser does
                    self.send_frame(OP_CLOSE, payload[:2])
                except Closed:
                    pass
                self.closed = Closed(code, reason)
                try:
                    self.sock.close()
                except OSError:
                    pass
                raise self.closed
            if op in (OP_TEXT, OP_BINARY):
                msg_op, message = op, bytearray(payload)
            else:  # continuation
                message += payload
            if fin:
                return msg_op, bytes(message)

    def recv_json(self, timeout=5.0):
        """The next JSON message (earlier buffered ones first)."""
        if self.pending:
            return self.pending.pop(0)
        _, payload = self.recv_frame(timeout)
        return json.loads(payload)

    def wait_for(self, pred, timeout=5.0):
        """Read until pred(msg); returns (other messages read meanwhile, the matching message)."""
        deadline = time.monotonic() + timeout
        others = []
        while True:
            msg = self.recv_json(max(0.001, deadline - time.monotonic()))
            if pred(msg):
                return others, msg
            others.append(msg)

    def call(self, command, timeout=5.0):
        """Send a command with the next id and return its reply; messages read before the reply
        (publications, pushes) are kept for recv_json()."""
        cid = self.next_id
        self.next_id += 1
        self.send_json({"id": cid, **command})
        deadline = time.monotonic() + timeout
        pend = list(self.pending)
        self.pending = []
        try:
            for i, msg in enumerate(pend):
                if msg.get("id") == cid:
                    pend.pop(i)
                    return msg
            while True:
                msg = json.loads(self.recv_frame(max(0.001, deadline - time.monotonic()))[1])
                if msg.get("id") == cid:
                    return msg
                pend.append(msg)
        finally:
            self.pending = pend + self.pending


def _mask_fast(payload, key):
    """XOR-mask a large payload quickly (int arithmetic over the whole buffer)."""
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def api(host, port, method, body, key, timeout=5.0, headers=None):
    """POST /api/<method>; returns (status, parsed JSON or raw bytes)."""
    import http.client
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        h = {"Content-Type": "application/json"}
        if key is not None:
            h["Authorization"] = f"apikey {key}"
        h.update(headers or {})
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        conn.request("POST", f"/api/{method}", body=data, headers=h)
        r = conn.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw
    finally:
        conn.close()


class APIClient:
    """Keep-alive server-API client (one HTTP/1.1 connection, reopened on failure)."""

    def __init__(self, host, port, key, timeout=5.0):
        import http.client
        self._hc = http.client
        self.host, self.port, self.key, self.timeout = host, port, key, timeout
        self.conn = None

    def post(self, method, body, key=None, raw=None):
        h = {"Content-Type": "application/json",
             "Authorization": f"apikey {self.key if key is None else key}"}
        data = raw if raw is not None else json.dumps(body)
        for attempt in (1, 2):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = self._hc.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", f"/api/{method}", body=data, headers=h)
                r = self.conn.getresponse()
                payload = r.read()
                break
            except (BrokenPipeError, ConnectionResetError, self._hc.RemoteDisconnected):
                # the server closed an idle keep-alive connection before reading the request:
                # send it again on a new connection (what browsers and nginx do)
                self.close()
                if not reused or attempt == 2:
                    raise
            except (OSError, self._hc.HTTPException):
                self.close()
                raise
        if r.getheader("connection", "").lower() == "close":
            self.close()
        try:
            return r.status, json.loads(payload)
        except ValueError:
            return r.status, payload

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None
