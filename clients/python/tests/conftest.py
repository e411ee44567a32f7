"""Fixtures: a real ferrocast node (the repository's binary) on free loopback ports, the two API
clients behind one interface, and a small WebSocket client (the `websockets` package)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from ferrocast import AsyncClient, Client, make_token

REPO = Path(__file__).resolve().parents[3]
SECRET = "py-test-secret"
API_KEY = "py-test-api-key"

CONFIG = """
[listen]
public = "127.0.0.1:{public}"
admin = "127.0.0.1:{admin}"
shards = 2

[auth]
token_secret = "{secret}"
timeout = "5s"

[api]
key = "{api_key}"

[broker]
kind = "memory"

[shutdown]
drain_seconds = 1

[namespaces.user]
history_size = 16
history_ttl = "10m"

[namespaces.room]
publish = true
presence = true
join_leave = true
history_size = 5
history_ttl = "1h"

[namespaces.public]
anonymous = true
history_size = 1
history_ttl = "1h"

# no presence, no history: 108 for presence/presence_stats/history
[namespaces.plain]
publish = true

# private: only channels the token lists (or that the backend subscribes it to)
[namespaces.secret]
private = true
history_size = 4
history_ttl = "10m"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary() -> Path:
    env = os.environ.get("FERROCAST_BIN")
    if env:
        return Path(env)
    found = [p for p in (REPO / "target/debug/ferrocast", REPO / "target/release/ferrocast") if p.exists()]
    if not found:
        subprocess.run(["cargo", "build", "--bin", "ferrocast"], cwd=REPO, check=True)
        found = [REPO / "target/debug/ferrocast"]
    return max(found, key=lambda p: p.stat().st_mtime)  # the most recently built one


class Node:
    def __init__(self, binary: Path, extra_config: str = ""):
        self.public, self.admin = free_port(), free_port()
        self.dir = tempfile.mkdtemp(prefix="ferrocast-py-")
        self.config = Path(self.dir) / "ferrocast.toml"
        self.config.write_text(
            CONFIG.format(public=self.public, admin=self.admin, secret=SECRET, api_key=API_KEY) + extra_config
        )
        self.log = open(Path(self.dir) / "node.log", "wb")
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--config", str(self.config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        self.url = f"http://127.0.0.1:{self.public}"
        self.ws_url = f"ws://127.0.0.1:{self.public}/ws"
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferrocast exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ferrocast not ready within 20s:\n{self.logs()}")
            time.sleep(0.05)

    def logs(self) -> str:
        self.log.flush()
        return (Path(self.dir) / "node.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def node():
    n = Node(find_binary())
    yield n
    n.stop()


class AsyncAdapter:
    """Runs an AsyncClient's coroutines on a private loop, so one test body covers both clients."""

    def __init__(self, client: AsyncClient):
        self.client = client
        self.loop = asyncio.new_event_loop()

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        def call(*args, **kwargs):
            return self.loop.run_until_complete(attr(*args, **kwargs))

        return call

    def close(self):
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


def make_api(kind: str, url: str, key: str = API_KEY, **kw):
    if kind == "sync":
        return Client(url, key, **kw)
    return AsyncAdapter(AsyncClient(url, key, **kw))


@pytest.fixture(params=["sync", "async"])
def kind(request):
    return request.param


@pytest.fixture
def api(node, kind):
    c = make_api(kind, node.url)
    yield c
    c.close()


class WS:
    """One real WebSocket client connection, authenticated with ?token=."""

    def __init__(self, node: Node, user, connect: dict = None, **token_kw):
        """``connect``: authenticate with a ``connect`` command carrying these extra fields
        (e.g. ``{"subs": {...}}`` to recover server-side subscriptions) instead of ``?token=``."""
        token = make_token(SECRET, user, **token_kw)
        url = node.ws_url if connect is not None else f"{node.ws_url}?token={token}"
        # __enter__: websockets >= 17 wants connect() used as a context manager.
        self.conn = ws_connect(url, open_timeout=5, close_timeout=1, max_size=None).__enter__()
        self.next_id = 0
        self.backlog = []
        if connect is not None:
            self.next_id = 1
            self.conn.send(json.dumps({"id": 1, "connect": {"token": token, **connect}}))
            reply = self.recv(5)
            assert reply.get("id") == 1 and "result" in reply, reply
        first = self.recv(5)
        assert "connected" in first, first
        self.client_id = first["connected"]["client"]
        self.user = first["connected"]["user"]

    def recv(self, timeout: float = 5.0) -> dict:
        if self.backlog:
            return self.backlog.pop(0)
        return json.loads(self.conn.recv(timeout=timeout))

    def call(self, method: str, body: dict, timeout: float = 5.0) -> dict:
        """Sends a command and returns its reply, keeping other frames for later."""
        self.next_id += 1
        mid = self.next_id
        self.conn.send(json.dumps({"id": mid, method: body}))
        deadline = time.monotonic() + timeout
        while True:
            frame = json.loads(self.conn.recv(timeout=max(0.01, deadline - time.monotonic())))
            if frame.get("id") == mid:
                return frame
            self.backlog.append(frame)

    def subscribe(self, channel: str) -> dict:
        reply = self.call("subscribe", {"channel": channel})
        assert "result" in reply, reply
        return reply["result"]

    def wait_for(self, pred, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        for i, f in enumerate(self.backlog):
            if pred(f):
                return self.backlog.pop(i)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching frame")
            frame = json.loads(self.conn.recv(timeout=left))
            if pred(frame):
                return frame
            self.backlog.append(frame)

    def publication(self, channel: str, timeout: float = 5.0) -> dict:
        return self.wait_for(lambda f: f.get("channel") == channel and "pub" in f, timeout)["pub"]

    def close(self):
        self.conn.close()


@pytest.fixture
def ws(node):
    opened = []

    def open_ws(user, **kw):
        c = WS(node, user, **kw)
        opened.append(c)
        return c

    yield open_ws
    for c in opened:
        try:
            c.close()
        except Exception:
            pass


def pytest_report_header(config):
    try:
        return f"ferrocast binary: {find_binary()}"
    except Exception as e:  # pragma: no cover
        return f"ferrocast binary: not found ({e}); python {sys.version.split()[0]}"
