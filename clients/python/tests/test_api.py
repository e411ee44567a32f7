"""Every server-API call, through the sync and the async client (the `api` fixture runs each test
for both), against a real node, with real WebSocket subscribers where delivery matters."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from websockets.exceptions import ConnectionClosed

from conftest import API_KEY, make_api
from ferrocast import FerrocastError, FerrocastUnavailable


def uniq(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


# -- authentication --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["wrong-key", "", API_KEY + "x"])
def test_bad_api_key_is_401_code_101(node, kind, key):
    c = make_api(kind, node.url, key=key)
    try:
        for call in (
            lambda: c.publish("room:x", {"a": 1}),
            lambda: c.info(),
            lambda: c.presence_stats("room:x"),
        ):
            with pytest.raises(FerrocastError) as e:
                call()
            assert (e.value.code, e.value.status) == (101, 401)
            assert not isinstance(e.value, FerrocastUnavailable)
    finally:
        c.close()


def test_url_with_trailing_slash_or_api_suffix(node, kind):
    for url in (node.url + "/", node.url + "/api", node.url + "/api/", node.url.replace("http://", "")):
        c = make_api(kind, url)
        try:
            assert c.info()["nodes"]
        finally:
            c.close()


# -- publish ---------------------------------------------------------------------------------------


def test_publish_reaches_subscribers(api, ws):
    ch = uniq("room:pub-")
    sub = ws("alice")
    before = sub.subscribe(ch)
    res = api.publish(ch, {"text": "hello", "n": [1, 2, 3], "uni": "борщ《x》"})
    assert res["offset"] == before["offset"] + 1
    assert res["epoch"] == before["epoch"]
    pub = sub.publication(ch)
    assert pub["offset"] == res["offset"]
    assert pub["data"] == {"text": "hello", "n": [1, 2, 3], "uni": "борщ《x》"}
    assert "info" not in pub  # API publications carry no info


def test_publish_any_json_value(api, ws):
    ch = uniq("room:json-")
    sub = ws("alice")
    sub.subscribe(ch)
    for value in ("plain string", 42, None, [1, {"a": True}], 1.5):
        api.publish(ch, value)
        assert sub.publication(ch)["data"] == value


def test_publish_to_personal_channel_reaches_every_device(api, ws):
    user = uniq("u")
    phone, laptop = ws(user), ws(user)
    phone.subscribe(f"user:{user}")
    laptop.subscribe(f"user:{user}")
    api.publish(f"user:{user}", {"text": "borrowed《Dune》"})
    assert phone.publication(f"user:{user}")["data"] == {"text": "borrowed《Dune》"}
    assert laptop.publication(f"user:{user}")["data"] == {"text": "borrowed《Dune》"}


def test_publish_idempotency_key(api, ws):
    ch = uniq("room:idem-")
    key = uniq("key-")
    first = api.publish(ch, {"n": 1}, idempotency_key=key)
    again = api.publish(ch, {"n": 2}, idempotency_key=key)
    assert again == first
    assert api.history(ch)["offset"] == first["offset"]  # nothing new published


def test_empty_idempotency_key_means_no_key(api):
    ch = uniq("room:idem-empty-")
    assert api.publish(ch, 1, idempotency_key="")["offset"] == 1
    assert api.publish(ch, 2, idempotency_key="")["offset"] == 2


def test_publish_errors(api):
    with pytest.raises(FerrocastError) as e:
        api.publish("nosuchns:1", {"a": 1})
    assert (e.value.code, e.value.status) == (102, 400)
    for bad in ("room:has space", "room:ü", "x" * 256, ""):
        with pytest.raises(FerrocastError) as e:
            api.publish(bad, {"a": 1})
        assert (e.value.code, e.value.status) == (107, 400), bad
    with pytest.raises(FerrocastError) as e:
        api.publish("room:x", {"a": 1}, deliver_at="tomorrow at noon")
    assert (e.value.code, e.value.status) == (107, 400)


def test_publish_rejects_naive_datetime_and_unserializable_data(api):
    with pytest.raises(ValueError):
        api.publish_at("room:x", {"a": 1}, datetime.now())
    with pytest.raises(TypeError):
        api.publish("room:x", {"a": object()})
    with pytest.raises(TypeError):
        api.publish("room:x", {"a": float("nan")})


# -- publish_at / deliver_at -----------------------------------------------------------------------


def test_publish_at_is_delivered_at_its_time(api, ws):
    ch = uniq("room:sched-")
    sub = ws("alice")
    sub.subscribe(ch)
    when = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    res = api.publish_at(ch, {"reminder": "book due"}, when)
    assert set(res) == {"scheduled"} and res["scheduled"]
    with pytest.raises(TimeoutError):  # not before its time
        sub.publication(ch, timeout=1.0)
    pub = sub.publication(ch, timeout=5)
    arrived = datetime.now(timezone.utc)
    assert pub["data"] == {"reminder": "book due"}
    assert when - timedelta(milliseconds=50) <= arrived < when + timedelta(seconds=1.5), (when, arrived)


def test_cancel_a_waiting_publication(api, ws):
    ch = uniq("room:cancel-")
    sub = ws("alice")
    sub.subscribe(ch)
    when = datetime.now(timezone.utc) + timedelta(seconds=1)
    sid = api.publish_at(ch, {"reminder": "returned early"}, when)["scheduled"]
    assert api.cancel(sid) == {}
    with pytest.raises(FerrocastError) as e:
        api.cancel(sid)
    assert (e.value.status, e.value.code) == (404, 107)
    with pytest.raises(TimeoutError):  # never delivered
        sub.publication(ch, timeout=1.8)


def test_publish_at_in_another_timezone(api, ws):
    ch = uniq("room:tz-")
    sub = ws("alice")
    sub.subscribe(ch)
    tz = timezone(timedelta(hours=-7, minutes=-30))
    when = datetime.now(tz) + timedelta(seconds=1)
    api.publish_at(ch, "tz", when)
    pub = sub.publication(ch, timeout=4)
    assert pub["data"] == "tz"
    assert datetime.now(timezone.utc) >= when - timedelta(milliseconds=50)


def test_deliver_at_string_and_past_time(api, ws):
    ch = uniq("room:past-")
    sub = ws("alice")
    sub.subscribe(ch)
    res = api.publish(ch, {"late": True}, deliver_at="2001-02-03T04:05:06Z")
    assert "scheduled" in res
    assert sub.publication(ch, timeout=3)["data"] == {"late": True}  # past time: at once


def test_publish_at_with_idempotency_key_schedules_once(api, ws):
    ch = uniq("room:sched-idem-")
    sub = ws("alice")
    sub.subscribe(ch)
    when = datetime.now(timezone.utc) + timedelta(seconds=0.5)
    key = uniq("k-")
    a = api.publish_at(ch, {"n": 1}, when, idempotency_key=key)
    b = api.publish_at(ch, {"n": 1}, when, idempotency_key=key)
    assert a == b
    assert sub.publication(ch, timeout=3)["data"] == {"n": 1}
    with pytest.raises(TimeoutError):
        sub.publication(ch, timeout=1.0)


# -- broadcast -------------------------------------------------------------------------------------


def test_broadcast(api, ws):
    a, b = uniq("room:bc-a-"), uniq("public:bc-b-")
    sub = ws("alice")
    sub.subscribe(a)
    sub.subscribe(b)
    responses = api.broadcast([a, b, "nosuchns:1", "bad name"], {"top": ["Dune"]})
    assert len(responses) == 4
    assert responses[0]["result"]["offset"] >= 1 and responses[1]["result"]["epoch"]
    assert responses[2]["error"]["code"] == 102
    assert responses[3]["error"]["code"] == 107
    assert sub.publication(a)["data"] == {"top": ["Dune"]}
    assert sub.publication(b)["data"] == {"top": ["Dune"]}


def test_broadcast_errors(api):
    with pytest.raises(FerrocastError) as e:
        api.broadcast([], {"x": 1})
    assert (e.value.code, e.value.status) == (107, 400)
    with pytest.raises(TypeError):
        api.broadcast("room:1", {"x": 1})


# -- disconnect / unsubscribe ----------------------------------------------------------------------


def test_disconnect_closes_every_connection_of_the_user(api, ws):
    user = uniq("d")
    c1, c2 = ws(user), ws(user)
    other = ws(uniq("o"))
    assert api.disconnect(user, code=4003, reason="banned") == {}
    for c in (c1, c2):
        with pytest.raises(ConnectionClosed) as e:
            c.conn.recv(timeout=5)
        assert e.value.rcvd.code == 4003
    assert other.call("ping", {}) == {"id": 1, "result": {}}


def test_disconnect_default_code(api, ws):
    user = uniq("d")
    c = ws(user)
    assert api.disconnect(user) == {}
    with pytest.raises(ConnectionClosed) as e:
        c.conn.recv(timeout=5)
    assert e.value.rcvd.code == 4000


def test_disconnect_bad_code(api):
    for code in (1000, 3999, 5000):
        with pytest.raises(FerrocastError) as e:
            api.disconnect("17", code=code)
        assert (e.value.code, e.value.status) == (107, 400)


def test_unsubscribe(api, ws):
    user = uniq("s")
    ch = uniq("room:unsub-")
    c = ws(user)
    watcher = ws(uniq("w"))
    c.subscribe(ch)
    watcher.subscribe(ch)
    assert api.presence_stats(ch)["clients"] == 2
    assert api.unsubscribe(user, ch) == {}
    assert c.wait_for(lambda f: f.get("channel") == ch and "unsubscribe" in f) == {"channel": ch, "unsubscribe": {}}
    leave = watcher.wait_for(lambda f: f.get("channel") == ch and "leave" in f)
    assert leave["leave"]["user"] == user
    assert api.presence_stats(ch) == {"clients": 1, "users": 1}
    api.publish(ch, {"after": True})
    assert watcher.publication(ch)["data"] == {"after": True}
    with pytest.raises(TimeoutError):
        c.publication(ch, timeout=0.5)


def test_unsubscribe_bad_channel(api):
    with pytest.raises(FerrocastError) as e:
        api.unsubscribe("17", "room:bad name")
    assert (e.value.code, e.value.status) == (107, 400)


# -- server-side subscriptions --------------------------------------------------------------------


def is_sub_push(ch):
    return lambda f: f.get("channel") == ch and "subscribe" in f and "id" not in f


def test_subscribe_user_subscribes_every_connection(api, ws):
    user = uniq("ss")
    ch = uniq("room:ss-")
    phone, laptop = ws(user), ws(user)
    other = ws(uniq("o"))
    assert api.subscribe_user(user, ch) == {}
    for c in (phone, laptop):
        push = c.wait_for(is_sub_push(ch))["subscribe"]
        assert push["offset"] == 0 and push["epoch"]
        assert "recovered" not in push
    res = api.publish(ch, {"after": "subscribe_user"})
    for c in (phone, laptop):
        assert c.publication(ch) == {"offset": res["offset"], "data": {"after": "subscribe_user"}}
    with pytest.raises(TimeoutError):
        other.publication(ch, timeout=0.3)
    assert api.presence_stats(ch) == {"clients": 2, "users": 1}


def test_subscribe_user_ignores_the_token_permissions(api, ws):
    # `secret` is a private namespace: this token doesn't list the channel, the backend decides
    user = uniq("priv")
    ch = uniq("secret:s-")
    c = ws(user)
    refused = c.call("subscribe", {"channel": ch})
    assert refused["error"]["code"] == 103, refused
    api.subscribe_user(user, ch)
    c.wait_for(is_sub_push(ch))
    api.publish(ch, "for your eyes")
    assert c.publication(ch)["data"] == "for your eyes"


def test_subscribe_user_with_no_connection_and_errors(api):
    assert api.subscribe_user(uniq("nobody"), uniq("room:x-")) == {}
    assert api.subscribe_user(17, uniq("room:int-")) == {}  # int ids are sent as strings
    with pytest.raises(FerrocastError) as e:
        api.subscribe_user("17", "nosuchns:1")
    assert (e.value.code, e.value.status) == (102, 400)
    with pytest.raises(FerrocastError) as e:
        api.subscribe_user("17", "room:bad name")
    assert (e.value.code, e.value.status) == (107, 400)


def test_token_subs_are_subscribed_at_connect(api, ws):
    user = uniq("tsub")
    mine, also = f"user:{user}", uniq("secret:t-")
    api.publish(mine, {"n": 1})
    c = ws(user, subs=[mine, also])
    for ch, offset in ((mine, 1), (also, 0)):
        push = c.wait_for(is_sub_push(ch))["subscribe"]
        assert push["offset"] == offset and push["epoch"], push
    api.publish(also, "subs are permitted")  # a private channel: `subs` grants it
    assert c.publication(also)["data"] == "subs are permitted"
    # a reconnect with `connect.subs` positions recovers what was missed
    epoch = api.history(mine)["epoch"]
    c.close()
    api.publish(mine, {"n": 2})
    back = ws(user, subs=[mine], connect={"subs": {mine: {"offset": 1, "epoch": epoch}}})
    push = back.wait_for(is_sub_push(mine))["subscribe"]
    assert push["recovered"] is True, push
    assert [p["data"] for p in push["publications"]] == [{"n": 2}]
    assert push["offset"] == 2


# -- presence --------------------------------------------------------------------------------------


def test_presence_and_stats(api, ws):
    ch = uniq("room:pres-")
    ada = uniq("ada")
    a1 = ws(ada, info={"name": "Ada"})
    a2 = ws(ada, info={"name": "Ada"})
    bob = ws(uniq("bob"))
    assert api.presence_stats(ch) == {"clients": 0, "users": 0}
    assert api.presence(ch) == {"clients": {}}
    for c in (a1, a2, bob):
        c.subscribe(ch)
    assert api.presence_stats(ch) == {"clients": 3, "users": 2}
    clients = api.presence(ch)["clients"]
    assert set(clients) == {a1.client_id, a2.client_id, bob.client_id}
    assert clients[a1.client_id] == {"user": ada, "info": {"name": "Ada"}}
    assert clients[bob.client_id]["user"] == bob.user and "info" not in clients[bob.client_id]
    bob.close()
    deadline = time.monotonic() + 5
    while api.presence_stats(ch) != {"clients": 2, "users": 1}:
        assert time.monotonic() < deadline, api.presence_stats(ch)
        time.sleep(0.05)


def test_presence_errors(api):
    for call in (api.presence, api.presence_stats):
        with pytest.raises(FerrocastUnavailable) as e:  # presence off in the namespace
            call("plain:1")
        assert (e.value.code, e.value.status) == (108, 503)
        with pytest.raises(FerrocastError) as e:
            call("nosuchns:1")
        assert (e.value.code, e.value.status) == (102, 400)
        assert not isinstance(e.value, FerrocastUnavailable)
        with pytest.raises(FerrocastError) as e:
            call("room:a/b")
        assert (e.value.code, e.value.status) == (107, 400)


# -- history ---------------------------------------------------------------------------------------


def test_history(api):
    ch = uniq("room:hist-")
    empty = api.history(ch)
    assert empty["publications"] == [] and empty["offset"] == 0 and empty["epoch"]
    for i in range(1, 8):  # history_size = 5 keeps offsets 3..7
        api.publish(ch, {"i": i})
    h = api.history(ch)
    assert [p["offset"] for p in h["publications"]] == [3, 4, 5, 6, 7]
    assert [p["data"]["i"] for p in h["publications"]] == [3, 4, 5, 6, 7]
    assert h["offset"] == 7
    assert [p["offset"] for p in api.history(ch, limit=2)["publications"]] == [6, 7]
    assert api.history(ch, limit=0)["publications"] == []
    since = {"offset": 4, "epoch": h["epoch"]}
    assert [p["offset"] for p in api.history(ch, since=since)["publications"]] == [5, 6, 7]
    assert [p["offset"] for p in api.history(ch, since=(4, h["epoch"]), limit=1)["publications"]] == [5]


def test_history_errors(api):
    ch = uniq("room:hist-err-")
    h = api.history(ch)
    api.publish(ch, 1)
    for since in ({"offset": 0, "epoch": "not-the-epoch"}, {"offset": 99, "epoch": h["epoch"]}):
        with pytest.raises(FerrocastError) as e:
            api.history(ch, since=since)
        assert (e.value.code, e.value.status) == (112, 409)
    with pytest.raises(FerrocastUnavailable) as e:
        api.history("plain:1")
    assert (e.value.code, e.value.status) == (108, 503)
    with pytest.raises(FerrocastError) as e:
        api.history("nosuchns:1")
    assert e.value.code == 102
    with pytest.raises(FerrocastError) as e:
        api.history(ch, limit=-1)
    assert (e.value.code, e.value.status) == (107, 400)
    with pytest.raises(TypeError):
        api.history(ch, since=5)


# -- info ------------------------------------------------------------------------------------------


def test_info(api, ws):
    c = ws("alice")
    c.subscribe(uniq("room:info-"))
    nodes = api.info()["nodes"]
    assert len(nodes) == 1
    n = nodes[0]
    assert {"id", "name", "version", "connections", "subscriptions", "channels", "uptime_seconds"} <= set(n)
    assert n["connections"] >= 1
    # subscriptions/channels come from per-shard gauges the node refreshes once a second
    deadline = time.monotonic() + 3
    while api.info()["nodes"][0]["subscriptions"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)


# -- keep-alive ------------------------------------------------------------------------------------


def test_many_calls_on_one_client(api):
    ch = uniq("room:many-")
    for i in range(50):
        assert api.publish(ch, i)["offset"] == i + 1
