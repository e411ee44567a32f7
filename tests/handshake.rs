//! Handshake and defaults (issue: hostile clients): `Origin` allow-list, per-source-IP caps,
//! sample secrets refused off loopback, and a panic inside one connection freeing its slot.
//! Real binary, real sockets.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn origin_outside_the_allow_list_is_refused_with_403() {
    let server = Server::start("[auth]\nallowed_origins = [\"https://library.example\"]\n").await;
    let url = server.ws_url(Some(&token("u1", 3600, &[])));
    let err = try_ws_connect_with(&url, &[("Origin", "https://evil.example")], None)
        .await
        .err()
        .expect("a foreign origin must be refused");
    assert!(err.contains("403"), "{err}");
    // The allowed origin (any case, trailing slash) and a non-browser client (no Origin) pass.
    let mut ok = ws_connect_with(&url, &[("Origin", "https://Library.example/")], None).await;
    ok.ok(1, json!({"ping": {}})).await;
    let mut no_origin = ws_connect(&url).await;
    no_origin.ok(1, json!({"ping": {}})).await;
    let refused = server
        .metric_value("ferrocast_handshake_failures_total{reason=\"origin\"}")
        .await;
    assert_eq!(refused, 1.0);
}

#[tokio::test]
async fn connections_per_ip_are_capped_and_slots_come_back() {
    let server = Server::start("[limits]\nmax_connections_per_ip = 2\n").await;
    let url = server.ws_url(Some(&token("u1", 3600, &[])));
    let a = ws_connect(&url).await;
    let mut b = ws_connect(&url).await;
    let err = try_ws_connect_with(&url, &[], None)
        .await
        .err()
        .expect("third refused");
    assert!(err.contains("429"), "{err}");
    // Another source address is not affected.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let addr = url.split('/').nth(2).unwrap().parse().unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut other, _) = tokio_tungstenite::client_async(url.as_str(), stream)
        .await
        .expect("another source address is not capped");
    use futures_util::SinkExt;
    other
        .send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await
        .unwrap();
    // A closed connection gives its slot back.
    a.close().await;
    assert!(
        eventually(SHORT, || async {
            try_ws_connect_with(&url, &[], None).await.is_ok()
        })
        .await,
        "slot not given back after close"
    );
    b.ok(1, json!({"ping": {}})).await;
    assert!(
        server
            .metric_value("ferrocast_handshake_failures_total{reason=\"per_ip\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn serve_refuses_sample_secrets_on_a_public_listener() {
    let port = free_port();
    let admin = free_port();
    let (code, _out, err) = run_bin(&[
        "serve",
        "--set",
        &format!("listen.public=0.0.0.0:{port}"),
        "--set",
        &format!("listen.admin=127.0.0.1:{admin}"),
        "--set",
        "auth.token_secret=demo-token-secret",
        "--set",
        "api.key=an-api-key-of-our-own",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("auth.token_secret"), "{err}");
    let (code, _out, err) = run_bin(&[
        "serve",
        "--set",
        &format!("listen.public=0.0.0.0:{port}"),
        "--set",
        &format!("listen.admin=127.0.0.1:{admin}"),
        "--set",
        "auth.token_secret=a-secret-of-our-own",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("api.key"), "{err}");
}

#[tokio::test]
async fn a_panic_in_one_connection_frees_its_slot_and_is_counted() {
    let server = Server::start_with(
        "[listen]\nshards = 1\n",
        &[("FERROCAST_TEST_PANIC", "1")],
        &[],
    )
    .await;
    let mut bystander = server.connect("bystander").await;
    bystander.subscribe(1, "user:bystander").await;
    let mut victim = server.connect("victim").await;
    victim.subscribe(1, "user:victim").await;
    server
        .wait_metric("ferrocast_sockets", |v| v == 2.0, Duration::from_secs(5))
        .await;
    // The debug-build hook panics on this exact message.
    victim.send_text("\"__panic__\"").await;
    let (code, _) = victim.expect_close(SHORT).await;
    assert_eq!(
        code, 1011,
        "a panicked connection is closed with 1011 (internal error)"
    );
    server
        .wait_metric("ferrocast_connection_panics_total", |v| v == 1.0, SHORT)
        .await;
    // The panicked connection's slot is freed.
    server
        .wait_metric("ferrocast_sockets", |v| v == 1.0, SHORT)
        .await;
    // The shard goes on serving.
    server.publish("user:bystander", json!({"n": 1})).await;
    bystander.recv_pub("user:bystander", SHORT).await;
    let mut again = server.connect("victim").await;
    again.subscribe(1, "user:victim").await;
}
