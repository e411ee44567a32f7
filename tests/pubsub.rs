//! Subscribe, unsubscribe, client publish, ping, and the error replies of the client protocol:
//! unknown command, bad JSON, bad channel name, unknown namespace, forbidden, already subscribed.
//! Also personal `user:` channels on several devices and room chat between two users.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn subscribe_success_returns_offset_and_epoch() {
    let server = Server::start("").await;
    let mut c = server.connect("17").await;
    let result = c.subscribe(1, "room:1").await;
    assert!(result["offset"].is_u64(), "offset: {result}");
    assert!(
        result["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "epoch: {result}"
    );
    // Subscribed: an API publication reaches it.
    server.publish("room:1", json!({"n": 1})).await;
    let (p, _) = c.recv_pub("room:1", SHORT).await;
    assert_eq!(p["pub"]["data"], json!({"n": 1}));
    assert!(p.get("id").is_none(), "a publication has no id: {p}");
    assert!(p["pub"]["offset"].is_u64(), "publication offset: {p}");
}

#[tokio::test]
async fn subscribe_errors() {
    let server = Server::start("").await;
    let mut c = server.connect("17").await;
    c.subscribe(1, "room:1").await;
    let cases: Vec<(String, i64, &str)> = vec![
        ("room:1".into(), 105, "already subscribed"),
        (
            "room:bad name".into(),
            107,
            "space is not allowed in a channel name",
        ),
        (
            "room:bad/slash".into(),
            107,
            "slash is not allowed in a channel name",
        ),
        (
            "room:ä".into(),
            107,
            "non-ASCII is not allowed in a channel name",
        ),
        (
            format!("room:{}", "x".repeat(300)),
            107,
            "channel name over 255 bytes",
        ),
        ("nope:x".into(), 102, "unknown namespace"),
        (
            "lobby".into(),
            102,
            "bare name while the default namespace is not configured",
        ),
        ("user:18".into(), 103, "another user's personal channel"),
    ];
    for (i, (channel, want, why)) in cases.into_iter().enumerate() {
        let got = c
            .err_code(10 + i as u64, json!({"subscribe": {"channel": channel}}))
            .await;
        assert_eq!(got, want, "subscribe {channel:?}: {why}");
    }
    // Exactly 255 bytes is allowed.
    let longest = format!("room:{}", "x".repeat(250));
    assert_eq!(longest.len(), 255);
    c.subscribe(30, &longest).await;
    // Every allowed character.
    c.subscribe(31, "room:Az09_-:.@=,").await;
    // A missing channel field is a bad request.
    let got = c.err_code(32, json!({"subscribe": {}})).await;
    assert_eq!(got, 107, "subscribe without a channel");
    // The connection still works after all those errors.
    c.ok(33, json!({"ping": {}})).await;
}

#[tokio::test]
async fn bare_channel_uses_the_default_namespace_when_configured() {
    let server = Server::start("[namespaces.\"\"]\npublish = true\n").await;
    let mut a = server.connect("17").await;
    let mut b = server.connect("18").await;
    a.subscribe(1, "lobby").await;
    b.subscribe(1, "lobby").await;
    b.ok(
        2,
        json!({"publish": {"channel": "lobby", "data": {"x": 1}}}),
    )
    .await;
    let (p, _) = a.recv_pub("lobby", SHORT).await;
    assert_eq!(p["pub"]["data"], json!({"x": 1}));
}

#[tokio::test]
async fn unsubscribe_stops_publications() {
    let server = Server::start("").await;
    let mut c = server.connect("17").await;
    c.subscribe(1, "room:u").await;
    server.publish("room:u", json!({"n": 1})).await;
    c.recv_pub("room:u", SHORT).await;

    let result = c.ok(2, json!({"unsubscribe": {"channel": "room:u"}})).await;
    assert!(result.is_object(), "unsubscribe result: {result}");
    server.publish("room:u", json!({"n": 2})).await;
    c.assert_no_pub(QUIET, "no publication after unsubscribe")
        .await;
    // Subscribing again works (no 105 left behind).
    c.subscribe(3, "room:u").await;
}

#[tokio::test]
async fn unsubscribe_errors() {
    let server = Server::start("").await;
    let mut c = server.connect("17").await;
    let got = c
        .err_code(1, json!({"unsubscribe": {"channel": "room:bad name"}}))
        .await;
    assert_eq!(got, 107, "unsubscribe with a bad channel name");
    let got = c.err_code(2, json!({"unsubscribe": {}})).await;
    assert_eq!(got, 107, "unsubscribe without a channel");
    c.ok(3, json!({"ping": {}})).await;
}

#[tokio::test]
async fn room_chat_between_two_users_with_identical_bytes_and_info_user() {
    let server = Server::start("").await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.subscribe(1, "room:chat").await;
    bob.subscribe(1, "room:chat").await;

    alice
        .ok(
            2,
            json!({"publish": {"channel": "room:chat", "data": {"text": "hi bob"}}}),
        )
        .await;
    let (a1, a1_raw) = alice.recv_pub("room:chat", SHORT).await;
    let (b1, b1_raw) = bob.recv_pub("room:chat", SHORT).await;
    assert_eq!(b1["pub"]["data"], json!({"text": "hi bob"}));
    assert_eq!(
        b1["pub"]["info"]["user"], "alice",
        "client publish carries info.user: {b1}"
    );
    assert_eq!(
        a1_raw, b1_raw,
        "a publication's bytes are identical for every subscriber"
    );
    assert_eq!(a1["pub"]["offset"], b1["pub"]["offset"]);

    bob.ok(
        2,
        json!({"publish": {"channel": "room:chat", "data": {"text": "hi alice"}}}),
    )
    .await;
    let (a2, _) = alice.recv_pub("room:chat", SHORT).await;
    let (b2, _) = bob.recv_pub("room:chat", SHORT).await;
    assert_eq!(a2["pub"]["data"], json!({"text": "hi alice"}));
    assert_eq!(a2["pub"]["info"]["user"], "bob");
    assert_eq!(b2["pub"]["info"]["user"], "bob");
    assert!(
        a2["pub"]["offset"].as_u64() > a1["pub"]["offset"].as_u64(),
        "offsets increase: {a1} then {a2}"
    );
}

#[tokio::test]
async fn client_publish_in_namespace_without_history_works() {
    let server = Server::start("").await;
    let mut a = server.connect("17").await;
    let mut b = server.connect("18").await;
    a.subscribe(1, "chat:x").await;
    b.subscribe(1, "chat:x").await;
    a.ok(
        2,
        json!({"publish": {"channel": "chat:x", "data": "plain string"}}),
    )
    .await;
    let (p, _) = b.recv_pub("chat:x", SHORT).await;
    assert_eq!(p["pub"]["data"], "plain string");
    assert_eq!(p["pub"]["info"]["user"], "17");
}

#[tokio::test]
async fn publish_errors() {
    let server = Server::start("").await;
    let mut c = server.connect("17").await;
    c.subscribe(1, "news:x").await;
    let cases: Vec<(Value, i64, &str)> = vec![
        (
            json!({"publish": {"channel": "news:x", "data": {}}}),
            103,
            "namespace with publish = false",
        ),
        (
            json!({"publish": {"channel": "room:bad name", "data": {}}}),
            107,
            "bad channel name",
        ),
        (
            json!({"publish": {"channel": "nope:x", "data": {}}}),
            102,
            "unknown namespace",
        ),
        (
            json!({"publish": {"channel": "user:18", "data": {}}}),
            103,
            "another user's personal channel",
        ),
        (json!({"publish": {"data": {}}}), 107, "no channel"),
    ];
    for (i, (body, want, why)) in cases.into_iter().enumerate() {
        let got = c.err_code(10 + i as u64, body.clone()).await;
        assert_eq!(got, want, "{body}: {why}");
    }
    c.assert_no_pub(QUIET, "a refused publish delivers nothing")
        .await;
}

#[tokio::test]
async fn ping_replies_with_empty_result() {
    let server = Server::start("").await;
    let mut c = server.connect("17").await;
    let reply = c.command(8, json!({"ping": {}})).await;
    assert_eq!(reply["id"], 8);
    assert!(reply.get("error").is_none(), "ping: {reply}");
    assert!(
        reply["result"].is_object(),
        "ping result is an object: {reply}"
    );
}

#[tokio::test]
async fn unknown_command_is_104() {
    let server = Server::start("").await;
    let mut c = server.connect("17").await;
    let got = c.err_code(5, json!({"frobnicate": {}})).await;
    assert_eq!(got, 104);
    c.ok(6, json!({"ping": {}})).await;
}

/// Malformed input answers 107 (the connection stays) or closes 4004; either way others are served.
async fn assert_bad_frame(server: &Server, frame: &str) {
    let mut bystander = server.connect("18").await;
    bystander.subscribe(1, "room:b").await;
    let mut c = server.connect("17").await;
    c.send_text(frame).await;
    match c.next_event(SHORT).await {
        Event::Json(v, _) => {
            assert_eq!(
                v["error"]["code"], 107,
                "bad frame {frame:?} → 107, got {v}"
            );
        }
        Event::Close(code, _) => assert_eq!(code, 4004, "bad frame {frame:?} → close 4004"),
        other => panic!("bad frame {frame:?}: expected error 107 or close 4004, got {other:?}"),
    }
    server.publish("room:b", json!({"still": "here"})).await;
    bystander.recv_pub("room:b", SHORT).await;
    bystander.ok(2, json!({"ping": {}})).await;
}

#[tokio::test]
async fn bad_json_is_107_or_close_4004() {
    let server = Server::start("").await;
    assert_bad_frame(&server, "{not json").await;
    assert_bad_frame(&server, "").await;
    assert_bad_frame(&server, "[1,2,3]").await;
    assert_bad_frame(&server, r#"{"id": "one", "ping": {}}"#).await;
    assert_bad_frame(&server, r#"{"id": 1, "subscribe": "room:1"}"#).await;
}

#[tokio::test]
async fn two_devices_of_one_user_both_receive_personal_publications() {
    let server = Server::start("").await;
    let mut phone = server.connect("42").await;
    let mut laptop = server.connect("42").await;
    let mut stranger = server.connect("43").await;
    phone.subscribe(1, "user:42").await;
    laptop.subscribe(1, "user:42").await;
    let code = stranger
        .err_code(1, json!({"subscribe": {"channel": "user:42"}}))
        .await;
    assert_eq!(code, 103, "another user may not subscribe to user:42");

    server.publish("user:42", json!({"reminder": "pay"})).await;
    let (p1, raw1) = phone.recv_pub("user:42", SHORT).await;
    let (_, raw2) = laptop.recv_pub("user:42", SHORT).await;
    assert_eq!(p1["pub"]["data"], json!({"reminder": "pay"}));
    assert_eq!(raw1, raw2, "same bytes on every device");
    stranger.assert_no_pub(QUIET, "nothing more").await;
}

#[tokio::test]
async fn many_subscribers_each_get_every_publication_in_order() {
    let server = Server::start("").await;
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut c = server.connect(&format!("u{i}")).await;
        c.subscribe(1, "room:fan").await;
        clients.push(c);
    }
    for n in 0..20 {
        server.publish("room:fan", json!({"n": n})).await;
    }
    for c in clients.iter_mut() {
        let mut last = None;
        for n in 0..20 {
            let (p, _) = c.recv_pub("room:fan", SHORT).await;
            assert_eq!(p["pub"]["data"]["n"], n, "in publish order");
            let offset = p["pub"]["offset"].as_u64().unwrap();
            if let Some(prev) = last {
                assert!(offset > prev, "offsets increase: {prev} then {offset}");
            }
            last = Some(offset);
        }
        c.assert_no_pub(Duration::from_millis(50), "nothing more")
            .await;
    }
}
