//! Presence, presence_stats and join/leave, through the client protocol and the server API.

mod common;

use common::*;
use serde_json::{json, Value};

async fn stats(c: &mut Client, id: u64, channel: &str) -> (u64, u64) {
    let r = c
        .ok(id, json!({"presence_stats": {"channel": channel}}))
        .await;
    (
        r["clients"]
            .as_u64()
            .unwrap_or_else(|| panic!("clients: {r}")),
        r["users"].as_u64().unwrap_or_else(|| panic!("users: {r}")),
    )
}

/// A join push on `channel` for `user` (a subscriber may also see its own join).
fn is_join(v: &Value, channel: &str, user: &str) -> bool {
    v["channel"] == channel && v["join"]["user"] == user
}

fn is_leave(v: &Value, channel: &str) -> bool {
    v["channel"] == channel && v.get("leave").is_some()
}

#[tokio::test]
async fn presence_stats_and_join_leave() {
    let server = Server::start("").await;
    let ch = "room:p";
    let mut alice = server
        .connect_token(&token_with_info("alice", json!({"name": "Alice"})))
        .await;
    alice.subscribe(1, ch).await;
    assert_eq!(stats(&mut alice, 2, ch).await, (1, 1));

    let mut bob = server
        .connect_token(&token_with_info("bob", json!({"name": "Bob"})))
        .await;
    let bob_client = bob.connected["client"].as_str().unwrap().to_string();
    bob.subscribe(1, ch).await;

    // Alice sees Bob join.
    let (join, _) = alice.recv_matching(SHORT, |v| is_join(v, ch, "bob")).await;
    assert_eq!(
        join["join"]["client"],
        bob_client.as_str(),
        "join push: {join}"
    );

    // Presence lists both connections with user and info.
    let p = alice.ok(3, json!({"presence": {"channel": ch}})).await;
    let clients = p["clients"].as_object().unwrap_or_else(|| panic!("{p}"));
    assert_eq!(clients.len(), 2, "presence: {p}");
    let bob_entry = &clients[&bob_client];
    assert_eq!(bob_entry["user"], "bob", "presence entry: {p}");
    assert_eq!(
        bob_entry["info"],
        json!({"name": "Bob"}),
        "token info shown: {p}"
    );
    assert!(clients.values().any(|e| e["user"] == "alice"));

    // A second device of Bob: 3 clients, 2 users.
    let mut bob2 = server.connect("bob").await;
    bob2.subscribe(1, ch).await;
    let (join2, _) = alice.recv_matching(SHORT, |v| is_join(v, ch, "bob")).await;
    assert_eq!(join2["join"]["client"], bob2.connected["client"], "{join2}");
    assert_eq!(stats(&mut alice, 4, ch).await, (3, 2));

    // Server API agrees.
    let (status, api_stats) = server.api("presence_stats", json!({"channel": ch})).await;
    assert_eq!(status, 200, "{api_stats}");
    assert_eq!(api_stats, json!({"clients": 3, "users": 2}));
    let (status, api_presence) = server.api("presence", json!({"channel": ch})).await;
    assert_eq!(status, 200, "{api_presence}");
    assert_eq!(api_presence["clients"].as_object().unwrap().len(), 3);
    assert_eq!(api_presence["clients"][&bob_client]["user"], "bob");

    // Bob unsubscribes: a leave push, 2 clients, 2 users.
    bob.ok(5, json!({"unsubscribe": {"channel": ch}})).await;
    let (leave, _) = alice.recv_matching(SHORT, |v| is_leave(v, ch)).await;
    assert_eq!(leave["leave"]["user"], "bob", "leave push: {leave}");
    assert_eq!(leave["leave"]["client"], bob_client.as_str());
    assert_eq!(stats(&mut alice, 6, ch).await, (2, 2));

    // Bob's second device disconnects: leave again, presence back to Alice alone.
    bob2.close().await;
    alice.recv_matching(SHORT, |v| is_leave(v, ch)).await;
    let ok = eventually(SHORT, || {
        let server = &server;
        async move {
            let (_, s) = server.api("presence_stats", json!({"channel": ch})).await;
            s == json!({"clients": 1, "users": 1})
        }
    })
    .await;
    assert!(ok, "presence back to 1 client after a disconnect");
}

#[tokio::test]
async fn no_join_leave_where_the_namespace_disables_it() {
    // chat: join_leave = false.
    let server = Server::start("").await;
    let mut a = server.connect("a").await;
    let mut b = server.connect("b").await;
    a.subscribe(1, "chat:q").await;
    b.subscribe(1, "chat:q").await;
    b.ok(2, json!({"unsubscribe": {"channel": "chat:q"}})).await;
    assert_eq!(a.try_recv_json(QUIET).await, None, "no join/leave pushes");
}

#[tokio::test]
async fn presence_errors() {
    let server = Server::start("").await;
    let mut c = server.connect("17").await;
    c.subscribe(1, "news:x").await;
    for (i, cmd) in ["presence", "presence_stats"].iter().enumerate() {
        let id = 10 * (i as u64 + 1);
        let got = c.err_code(id, json!({*cmd: {"channel": "news:x"}})).await;
        assert_eq!(got, 108, "{cmd} where presence = false → 108 not available");
        let got = c
            .err_code(id + 1, json!({*cmd: {"channel": "room:bad name"}}))
            .await;
        assert_eq!(got, 107, "{cmd} with a bad channel name");
        let got = c
            .err_code(id + 2, json!({*cmd: {"channel": "nope:x"}}))
            .await;
        assert_eq!(got, 102, "{cmd} in an unknown namespace");
    }
    let (status, body) = server
        .api("presence", json!({"channel": "room:bad name"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], 107, "{body}");
}
