"""Failure handling of both clients: unreachable node, timeouts, stale keep-alive connections,
error bodies from proxies in front of a node. Uses tiny raw-socket HTTP servers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from conftest import free_port, make_api
from ferrocast import AsyncClient, Client, FerrocastError, FerrocastUnavailable
from ferrocast.errors import error_from_response


class RawServer:
    """Accepts connections on a thread and answers each request with `handler(conn, n)`."""

    def __init__(self, handler):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.handler = handler
        self.requests = 0
        self.connections = 0
        self.stop = False
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                self.requests += 1
                if self.handler(conn, self.requests) == "close":
                    return

    def close(self):
        self.stop = True
        self.sock.close()


def answer(conn, status, body=b"{}", extra=""):
    conn.sendall(
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


def test_connection_refused_is_unavailable(kind):
    c = make_api(kind, f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(FerrocastUnavailable) as e:
            c.publish("room:1", {"a": 1})
        assert e.value.code == 108 and e.value.status is None
    finally:
        c.close()


def test_timeout_is_unavailable(kind):
    srv = RawServer(lambda conn, n: time.sleep(3))
    c = make_api(kind, srv.url, timeout=0.3)
    try:
        t0 = time.monotonic()
        with pytest.raises(FerrocastUnavailable) as e:
            c.info()
        assert time.monotonic() - t0 < 2
        assert e.value.code == 108 and "within" in e.value.message
    finally:
        c.close()
        srv.close()


def test_stale_keepalive_connection_is_retried_once(kind):
    """The server closes each connection after its answer without saying so (as an idle timeout
    would): the next call finds a dead connection, and is sent again on a fresh one."""

    def once_then_close(conn, n):
        answer(conn, "200 OK", b'{"offset":%d,"epoch":"e"}' % n)
        return "close"

    srv = RawServer(once_then_close)
    c = make_api(kind, srv.url)
    try:
        for i in range(1, 6):
            assert c.publish("room:1", i)["offset"] == i
            time.sleep(0.05)  # let the close arrive
        assert srv.requests == 5 and srv.connections == 5
    finally:
        c.close()
        srv.close()


def test_keepalive_reuses_one_connection(kind):
    srv = RawServer(lambda conn, n: answer(conn, "200 OK", b'{"n":%d}' % n))
    c = make_api(kind, srv.url)
    try:
        for i in range(1, 21):
            assert c.info() == {"n": i}
        assert srv.connections == 1
    finally:
        c.close()
        srv.close()


def test_chunked_answer(kind):
    def chunked(conn, n):
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\n{\"a\":\r\n4\r\n[1]}\r\n0\r\n\r\n"
        )

    srv = RawServer(chunked)
    c = make_api(kind, srv.url)
    try:
        assert c.info() == {"a": [1]}
        assert c.info() == {"a": [1]}
    finally:
        c.close()
        srv.close()


@pytest.mark.parametrize(
    "status,body,extra,cls,code",
    [
        ("503 Service Unavailable", b"", "retry-after: 1\r\n", FerrocastUnavailable, 108),
        ("502 Bad Gateway", b"<html>nginx</html>", "", FerrocastUnavailable, 108),
        ("500 Internal Server Error", b'{"error":{"code":100,"message":"internal error"}}', "", FerrocastError, 100),
        ("503 Service Unavailable", b'{"error":{"code":108,"message":"not available"}}', "", FerrocastUnavailable, 108),
        ("409 Conflict", b'{"error":{"code":112,"message":"unrecoverable position"}}', "", FerrocastError, 112),
        ("413 Payload Too Large", b'{"error":{"code":106,"message":"request body too large"}}', "", FerrocastError, 106),
    ],
)
def test_error_answers(kind, status, body, extra, cls, code):
    srv = RawServer(lambda conn, n: answer(conn, status, body, extra))
    c = make_api(kind, srv.url)
    try:
        with pytest.raises(FerrocastError) as e:
            c.publish("room:1", 1)
        assert type(e.value) is cls
        assert e.value.code == code and e.value.status == int(status.split()[0])
        if "retry-after" in extra:
            assert e.value.retry_after == 1.0
    finally:
        c.close()
        srv.close()


def test_error_from_response_mapping():
    e = error_from_response(401, b"")
    assert type(e) is FerrocastError and e.code == 101
    assert str(error_from_response(400, b'{"error":{"code":102,"message":"unknown channel"}}')) == (
        "102 unknown channel (HTTP 400)"
    )
    assert "FerrocastUnavailable(code=108" in repr(error_from_response(504, b""))


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_request_is_well_formed(cls):
    """The bytes of a real request: path under a URL prefix, API key header, compact UTF-8 JSON."""
    got = {}
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]

    def grab():
        conn, _ = s.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
        length = int(length[0].split(b":")[1])
        while len(body) < length:
            body += conn.recv(65536)
        got["head"], got["body"] = head.decode(), body
        answer(conn, "200 OK", b'{"scheduled":"1-1"}')
        conn.close()

    t = threading.Thread(target=grab)
    t.start()
    c = make_api("sync" if cls is Client else "async", f"http://127.0.0.1:{port}/prefix", key="k3y")
    try:
        assert c.publish("room:1", {"t": "《x》"}, idempotency_key="abc") == {"scheduled": "1-1"}
    finally:
        t.join()
        c.close()
        s.close()
    head = got["head"].split("\r\n")
    assert head[0] == "POST /prefix/api/publish HTTP/1.1"
    assert "Authorization: apikey k3y" in head
    assert "Content-Type: application/json" in head
    assert f"Host: 127.0.0.1:{port}" in head
    assert got["body"] == '{"channel":"room:1","data":{"t":"《x》"},"idempotency_key":"abc"}'.encode()


def test_async_client_survives_event_loop_changes():
    srv = RawServer(lambda conn, n: answer(conn, "200 OK", b'{"n":%d}' % n))
    c = AsyncClient(srv.url, "k")
    try:
        assert asyncio.run(c.info()) == {"n": 1}
        assert asyncio.run(c.info()) == {"n": 2}  # a new loop: the old loop's connection is dropped

        async def many():
            return await asyncio.gather(*(c.info() for _ in range(10)))

        assert len(asyncio.run(many())) == 10
    finally:
        asyncio.run(c.aclose())
        srv.close()


def test_sync_client_shared_between_threads(node):
    c = Client(node.url, "py-test-api-key")
    errors = []

    def worker(i):
        try:
            for j in range(20):
                c.publish(f"room:threads-{i}", j)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert c.history("room:threads-3")["offset"] == 20
    c.close()
