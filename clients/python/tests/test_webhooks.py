"""ferrocast.webhooks: signature and replay checks, typed events, and real deliveries from a node
with `[webhooks]` to a local HTTP receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import Node, WS, find_binary, free_port
from ferrocast import webhooks
from ferrocast.webhooks import (
    ChannelOccupied,
    ChannelVacated,
    ClientPublish,
    InvalidSignature,
    MalformedWebhook,
    StaleWebhook,
    UnknownEvent,
    UserOffline,
    UserOnline,
    WebhookError,
)

HOOK_SECRET = "py-webhook-secret"
NOW = 1_764_960_000.0  # seconds


def batch(time_ms=int(NOW * 1000), events=None, node="edge-1") -> bytes:
    if events is None:
        events = [{"id": "e1", "name": "user_online", "user": "17", "time_ms": time_ms}]
    return json.dumps({"time_ms": time_ms, "node": node, "events": events}).encode()


# -- verify ----------------------------------------------------------------------------------------


def test_sign_is_hmac_sha256_hex_of_the_raw_body():
    body = batch()
    want = hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert webhooks.sign(body, HOOK_SECRET) == "sha256=" + want
    assert webhooks.sign(body, HOOK_SECRET.encode()) == "sha256=" + want


def test_verify_returns_the_batch():
    body = batch()
    payload = webhooks.verify(body, webhooks.sign(body, HOOK_SECRET), HOOK_SECRET, now=NOW)
    assert payload == json.loads(body)
    # upper-case hex and surrounding spaces are tolerated; a bytes secret works
    upper = "sha256=" + webhooks.sign(body, HOOK_SECRET)[7:].upper()
    assert webhooks.verify(body, f" {upper} ", HOOK_SECRET.encode(), now=NOW) == payload
    assert webhooks.verify(bytearray(body), webhooks.sign(body, HOOK_SECRET), HOOK_SECRET, now=NOW) == payload


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha1=abc",
        "deadbeef",
        "sha256=",
        "sha256=zz",
        "sha256=ü" * 3,
        "sha256=" + "0" * 64,
    ],
)
def test_verify_rejects_missing_or_malformed_signatures(header):
    with pytest.raises(InvalidSignature):
        webhooks.verify(batch(), header, HOOK_SECRET, now=NOW)


def test_verify_rejects_a_wrong_secret_or_an_altered_body():
    body = batch()
    sig = webhooks.sign(body, HOOK_SECRET)
    with pytest.raises(InvalidSignature):
        webhooks.verify(body, sig, "another-secret", now=NOW)
    altered = body.replace(b'"17"', b'"18"')
    with pytest.raises(InvalidSignature):
        webhooks.verify(altered, sig, HOOK_SECRET, now=NOW)
    # re-serializing the JSON (spaces, key order) breaks it too: the raw body is what's signed
    reserialized = json.dumps(json.loads(body), indent=1).encode()
    with pytest.raises(InvalidSignature):
        webhooks.verify(reserialized, sig, HOOK_SECRET, now=NOW)


def test_verify_replay_window():
    def check(sent_s, **kw):
        body = batch(time_ms=int(sent_s * 1000))
        return webhooks.verify(body, webhooks.sign(body, HOOK_SECRET), HOOK_SECRET, now=NOW, **kw)

    assert check(NOW - 299)
    assert check(NOW + 299)  # the node's clock may run ahead of ours
    for off in (-301, +301, -86400):
        with pytest.raises(StaleWebhook):
            check(NOW + off)
    assert check(NOW - 3000, tolerance=3600)
    assert check(NOW - 50, tolerance=timedelta(minutes=1))
    with pytest.raises(StaleWebhook):
        check(NOW - 61, tolerance=timedelta(minutes=1))
    assert check(NOW - 10**6, tolerance=None)
    # `now` defaults to the current time
    body = batch(time_ms=int(time.time() * 1000))
    assert webhooks.verify(body, webhooks.sign(body, HOOK_SECRET), HOOK_SECRET)
    old = batch(time_ms=int((time.time() - 600) * 1000))
    with pytest.raises(StaleWebhook):
        webhooks.verify(old, webhooks.sign(old, HOOK_SECRET), HOOK_SECRET)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"\xff\xfe", b"[1, 2]", b'{"events": []}', b'{"time_ms": "1", "events": []}',
     b'{"time_ms": true, "events": []}', b'{"time_ms": 1764960000000}'],
)
def test_verify_rejects_signed_bodies_that_are_not_batches(body):
    with pytest.raises(MalformedWebhook):
        webhooks.verify(body, webhooks.sign(body, HOOK_SECRET), HOOK_SECRET, now=NOW)


def test_error_types_and_argument_checks():
    for cls in (InvalidSignature, StaleWebhook, MalformedWebhook):
        assert issubclass(cls, WebhookError) and issubclass(cls, ValueError)
    body = batch()
    with pytest.raises(TypeError):  # a str is not the raw body
        webhooks.verify(body.decode(), webhooks.sign(body, HOOK_SECRET), HOOK_SECRET, now=NOW)
    with pytest.raises(TypeError):
        webhooks.verify(json.loads(body), webhooks.sign(body, HOOK_SECRET), HOOK_SECRET, now=NOW)
    with pytest.raises(ValueError):
        webhooks.verify(body, webhooks.sign(body, HOOK_SECRET), "", now=NOW)
    assert webhooks.SIGNATURE_HEADER == "X-Ferrocast-Signature"


# -- parse -----------------------------------------------------------------------------------------


def test_parse_gives_typed_events():
    t = int(NOW * 1000)
    events = [
        {"id": "a", "name": "user_online", "user": "17", "time_ms": t},
        {"id": "b", "name": "user_offline", "user": "17", "time_ms": t + 1},
        {"id": "c", "name": "channel_occupied", "channel": "room:42", "time_ms": t + 2},
        {"id": "d", "name": "channel_vacated", "channel": "room:42", "time_ms": t + 3},
        {"id": "e", "name": "client_publish", "channel": "room:42", "user": "17", "client": "c-1",
         "data": {"text": "hi"}, "time_ms": t + 4},
        {"id": "f", "name": "from_the_future", "time_ms": t + 5, "x": 1},
    ]
    body = batch(events=events)
    b = webhooks.parse(webhooks.verify(body, webhooks.sign(body, HOOK_SECRET), HOOK_SECRET, now=NOW))
    assert b.node == "edge-1" and b.time_ms == t
    assert b.time == datetime(2025, 12, 5, 18, 40, tzinfo=timezone.utc)
    assert [type(e) for e in b.events] == [UserOnline, UserOffline, ChannelOccupied, ChannelVacated,
                                           ClientPublish, UnknownEvent]
    on, off, occ, vac, pub, unknown = b.events
    assert (on.id, on.name, on.user, on.time_ms) == ("a", "user_online", "17", t)
    assert on.time == datetime.fromtimestamp(t / 1000, tz=timezone.utc)
    assert off.user == "17" and occ.channel == vac.channel == "room:42"
    assert (pub.channel, pub.user, pub.client, pub.data) == ("room:42", "17", "c-1", {"text": "hi"})
    assert unknown.name == "from_the_future" and unknown.raw["x"] == 1
    assert webhooks.parse(body) == b  # raw bytes are accepted too (tests; no signature check)


@pytest.mark.parametrize(
    "event",
    [
        "nope",
        {"name": "user_online", "user": "1", "time_ms": 1},
        {"id": "", "name": "user_online", "user": "1", "time_ms": 1},
        {"id": "x", "user": "1", "time_ms": 1},
        {"id": "x", "name": "user_online", "user": "1"},
        {"id": "x", "name": "user_online", "user": 1, "time_ms": 1},
    ],
)
def test_parse_rejects_malformed_events(event):
    with pytest.raises(MalformedWebhook):
        webhooks.parse(batch(events=[event]))


# -- real deliveries from a node -------------------------------------------------------------------


class Receiver:
    """A local HTTP endpoint for the node's webhooks: keeps every request (headers, raw body)
    and answers 500 to the first delivery that mentions a string put in `fail_once`."""

    def __init__(self):
        self.requests: "queue.Queue[tuple]" = queue.Queue()
        self.fail_once = set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    hit = [s for s in receiver.fail_once if s.encode() in body]
                    receiver.fail_once.difference_update(hit)
                    fail = bool(hit)
                headers = {k.lower(): v for k, v in self.headers.items()}  # hyper sends lower case
                receiver.requests.put((self.path, headers, body, time.time(), fail))
                self.send_response(500 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.seen = []  # (request, verified payload)

    def events(self, pred, timeout=10.0, accepted_only=True):
        """Waits for an event matching pred among verified deliveries; returns (event, request)."""
        deadline = time.monotonic() + timeout
        while True:
            for req, payload in self.seen:
                if accepted_only and req[4]:
                    continue
                for e in webhooks.parse(payload).events:
                    if pred(e):
                        return e, req
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching webhook event")
            try:
                req = self.requests.get(timeout=left)
            except queue.Empty:
                continue
            path, headers, body, _, _ = req
            payload = webhooks.verify(body, headers.get(webhooks.SIGNATURE_HEADER.lower()), HOOK_SECRET)
            self.seen.append((req, payload))

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hooked():
    rec = Receiver()
    node = Node(
        find_binary(),
        f"""
[webhooks]
url = "http://127.0.0.1:{rec.port}/hooks/ferrocast"
secret = "{HOOK_SECRET}"
events = ["user_online", "user_offline", "channel_occupied", "channel_vacated", "client_publish"]
offline_delay = "300ms"
vacate_delay = "300ms"
batch_wait = "20ms"
""",
    )
    yield node, rec
    node.stop()
    rec.stop()


def test_real_node_sends_signed_lifecycle_events(hooked):
    node, rec = hooked
    user = "wh" + uuid.uuid4().hex[:8]
    ch = f"room:wh-{uuid.uuid4().hex[:8]}"
    c = WS(node, user)
    on, req = rec.events(lambda e: isinstance(e, UserOnline) and e.user == user)
    path, headers, body, received, _ = req
    assert path == "/hooks/ferrocast"
    assert headers["content-type"].startswith("application/json")
    sig = headers[webhooks.SIGNATURE_HEADER.lower()]
    assert sig.startswith("sha256=") and sig == webhooks.sign(body, HOOK_SECRET)
    assert abs(on.time_ms / 1000 - received) < 5
    with pytest.raises(InvalidSignature):
        webhooks.verify(body, sig, "not-the-secret")
    assert webhooks.parse(webhooks.verify(body, sig, HOOK_SECRET)).node

    c.subscribe(ch)
    rec.events(lambda e: isinstance(e, ChannelOccupied) and e.channel == ch)
    assert "result" in c.call("publish", {"channel": ch, "data": {"text": "from the browser"}})
    pub, _ = rec.events(lambda e: isinstance(e, ClientPublish) and e.channel == ch)
    assert (pub.user, pub.client, pub.data) == (user, c.client_id, {"text": "from the browser"})

    closed = time.monotonic()
    c.close()
    off, _ = rec.events(lambda e: isinstance(e, UserOffline) and e.user == user)
    assert time.monotonic() - closed >= 0.25  # after offline_delay
    rec.events(lambda e: isinstance(e, ChannelVacated) and e.channel == ch)
    assert len({on.id, pub.id, off.id}) == 3


def test_a_quick_reconnect_sends_no_offline(hooked):
    node, rec = hooked
    user = "wr" + uuid.uuid4().hex[:8]
    WS(node, user).close()
    c = WS(node, user)  # back within offline_delay
    rec.events(lambda e: isinstance(e, UserOnline) and e.user == user)
    with pytest.raises(TimeoutError):
        rec.events(lambda e: isinstance(e, UserOffline) and e.user == user, timeout=1.0)
    c.close()
    rec.events(lambda e: isinstance(e, UserOffline) and e.user == user)


def test_a_refused_batch_comes_again_with_the_same_event_ids(hooked):
    node, rec = hooked
    user = "wf" + uuid.uuid4().hex[:8]
    with rec.lock:
        rec.fail_once.add(f'"{user}"')
    c = WS(node, user)
    first, req1 = rec.events(lambda e: isinstance(e, UserOnline) and e.user == user, accepted_only=False)
    assert req1[4], "the first delivery was answered 500"
    again, req2 = rec.events(lambda e: isinstance(e, UserOnline) and e.user == user)
    assert again.id == first.id and req2 is not req1
    c.close()
