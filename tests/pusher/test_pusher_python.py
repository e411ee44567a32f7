"""The `pusher` Python package (Pusher's official HTTP library) against a real ferrocast node:
trigger, trigger_batch, channel info and channel lists, and a wrong secret refused (401). A raw
Pusher WebSocket client (the `websocket` handshake by hand is avoided: we use pusher-js's
subscription state through the HTTP API's channel info, and a small stdlib WebSocket reader)."""
import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

import pusher

APP_ID, KEY, SECRET = "77", "py-key", "py-secret"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class WS:
    """A minimal RFC 6455 client (text frames only), enough to speak Pusher's JSON."""

    def __init__(self, port, path):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.buf = b""

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            if b0 & 0x0F == 1:
                return json.loads(payload)
            if b0 & 0x0F == 8:
                raise EOFError(payload)

    def send(self, obj):
        data = json.dumps(obj).encode()
        mask = os.urandom(4)
        head = bytes([0x81])
        if len(data) < 126:
            head += bytes([0x80 | len(data)])
        else:
            head += bytes([0x80 | 126]) + struct.pack(">H", len(data))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def wait_for(self, event):
        while True:
            m = self.recv()
            if m.get("event") == event:
                return m


def main():
    port, admin = free_port(), free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(f"""
[listen]
public = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
shards = 2
[[pusher.apps]]
app_id = "{APP_ID}"
key = "{KEY}"
secret = "{SECRET}"
""")
    cfg.close()
    proc = subprocess.Popen([os.environ["FERROCAST_BIN"], "serve", "--config", cfg.name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        client = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host="127.0.0.1",
                               port=port, ssl=False)
        ws = WS(port, f"/app/{KEY}?protocol=7&client=py&version=1")
        est = ws.wait_for("pusher:connection_established")
        socket_id = json.loads(est["data"])["socket_id"]
        ws.send({"event": "pusher:subscribe", "data": {"channel": "py-public"}})
        ws.wait_for("pusher_internal:subscription_succeeded")
        sig = hmac.new(SECRET.encode(), f"{socket_id}:private-py".encode(), hashlib.sha256).hexdigest()
        ws.send({"event": "pusher:subscribe", "data": {"channel": "private-py", "auth": f"{KEY}:{sig}"}})
        ws.wait_for("pusher_internal:subscription_succeeded")
        cd = json.dumps({"user_id": "py-1", "user_info": {"lang": "python"}})
        sig = hmac.new(SECRET.encode(), f"{socket_id}:presence-py:{cd}".encode(), hashlib.sha256).hexdigest()
        ws.send({"event": "pusher:subscribe",
                 "data": {"channel": "presence-py", "auth": f"{KEY}:{sig}", "channel_data": cd}})
        ok = ws.wait_for("pusher_internal:subscription_succeeded")
        assert json.loads(ok["data"])["presence"]["ids"] == ["py-1"], ok

        # trigger on two channels at once
        client.trigger(["py-public", "private-py"], "hello", {"n": 1})
        got = [ws.wait_for("hello"), ws.wait_for("hello")]
        assert sorted(m["channel"] for m in got) == ["private-py", "py-public"], got
        assert json.loads(got[0]["data"]) == {"n": 1}
        # trigger_batch
        client.trigger_batch([{"channel": "py-public", "name": "b1", "data": "one"},
                              {"channel": "private-py", "name": "b2", "data": {"two": 2}}])
        assert ws.wait_for("b1")["data"] == "one"
        assert json.loads(ws.wait_for("b2")["data"]) == {"two": 2}
        # channel info and lists
        info = client.channel_info("presence-py", ["user_count"])
        assert info["occupied"] is True and info["user_count"] == 1, info
        assert client.channel_info("py-public")["occupied"] is True
        chans = client.channels_info(prefix_filter="presence-", attributes=["user_count"])
        assert chans["channels"]["presence-py"]["user_count"] == 1, chans
        assert "py-public" in client.channels_info()["channels"]
        users = client.users_info("presence-py")
        assert users["users"] == [{"id": "py-1"}], users
        # a channel name with ';' is refused with a pusher:error
        ws.send({"event": "pusher:subscribe", "data": {"channel": "a;b"}})
        err = ws.wait_for("pusher:error")
        assert "';'" in json.loads(err["data"])["message"] if isinstance(err["data"], str) else err["data"]["message"], err
        # a wrong secret is refused
        bad = pusher.Pusher(app_id=APP_ID, key=KEY, secret="wrong", host="127.0.0.1", port=port, ssl=False)
        try:
            bad.trigger("py-public", "x", {})
            raise AssertionError("a wrong signature was accepted")
        except pusher.errors.PusherBadAuth as e:
            assert "Invalid signature" in str(e), e
        print("python pusher: ok (trigger, trigger_batch, channel_info, channels_info, users_info, bad auth)")
    finally:
        proc.kill()
        proc.wait()
        os.unlink(cfg.name)


if __name__ == "__main__":
    sys.exit(main())
