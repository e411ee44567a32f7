"""make_token: the JWT itself, and that the real node accepts (or rejects) it."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import timedelta

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from conftest import SECRET, WS, find_binary
from ferrocast import decode_token, make_token


def test_token_shape():
    t = make_token("s3cret", 17, ttl=60, channels=["room:vip"], info={"name": "Ada"}, now=1_000_000)
    head, claims, sig = t.split(".")
    assert "=" not in t and "+" not in t and "/" not in t
    assert decode_token(t, "s3cret") == {
        "sub": "17",
        "exp": 1_000_060,
        "channels": ["room:vip"],
        "info": {"name": "Ada"},
    }
    with pytest.raises(ValueError):
        decode_token(t, "other")
    assert decode_token(make_token("s", "u", ttl=0)) == {"sub": "u"}
    assert decode_token(make_token("s", "u", ttl=None)) == {"sub": "u"}
    assert decode_token(make_token("s", None))["sub"] == ""
    assert decode_token(make_token("s", 1, ttl=timedelta(minutes=2), now=10))["exp"] == 130
    assert decode_token(make_token("s", 1, channels="room:1"))["channels"] == ["room:1"]
    assert decode_token(make_token("s", 1, subs=["user:1", "room:2"]))["subs"] == ["user:1", "room:2"]
    assert decode_token(make_token("s", 1, subs="user:1"))["subs"] == ["user:1"]
    assert "subs" not in decode_token(make_token("s", 1))
    with pytest.raises(ValueError):
        make_token("", 1)
    with pytest.raises(ValueError):
        make_token("s", 1, ttl=-5)


def test_same_signature_as_the_servers_token_command():
    """`ferrocast token` and make_token sign the same way: both verify with the other's check."""
    out = subprocess.run(
        [str(find_binary()), "token", "--secret", "cmp-secret", "--user", "42", "--ttl", "1h"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    claims = decode_token(out, "cmp-secret")  # the binary's token passes our HMAC check
    assert claims["sub"] == "42"


def test_server_accepts_token(node, ws):
    c = ws("17", info={"name": "Ada"})
    assert c.user == "17"
    assert c.subscribe("user:17")["offset"] >= 0


def test_server_accepts_token_in_connect_frame(node):
    with ws_connect(node.ws_url, open_timeout=5, close_timeout=1) as conn:
        conn.send(json.dumps({"id": 1, "connect": {"token": make_token(SECRET, "99", ttl=60)}}))
        reply = json.loads(conn.recv(timeout=5))
        assert reply["id"] == 1 and reply["result"]["user"] == "99"


def test_channels_claim_grants_another_users_channel(node, ws):
    denied = ws("a1")
    assert denied.call("subscribe", {"channel": "user:b2"})["error"]["code"] == 103
    granted = ws("a1", channels=["user:b2"])
    assert "result" in granted.call("subscribe", {"channel": "user:b2"})


def test_anonymous_token(node, ws):
    anon = ws("")
    assert anon.user == ""
    assert "result" in anon.call("subscribe", {"channel": "public:board"})
    assert anon.call("subscribe", {"channel": "room:1"})["error"]["code"] == 103


@pytest.mark.parametrize(
    "token,code",
    [
        (make_token("wrong-secret", "17"), 4003),
        (make_token(SECRET, "17", ttl=1, now=time.time() - 100), 4011),
    ],
    ids=["bad-signature", "expired"],
)
def test_server_rejects_bad_tokens(node, token, code):
    with ws_connect(f"{node.ws_url}?token={token}", open_timeout=5, close_timeout=1) as conn:
        with pytest.raises(ConnectionClosed) as e:
            conn.recv(timeout=5)
        assert e.value.rcvd.code == code


def test_token_expiry_closes_connection(node):
    c = WS(node, "exp", ttl=1)
    with pytest.raises(ConnectionClosed) as e:
        c.conn.recv(timeout=5)
    assert e.value.rcvd.code == 4011
