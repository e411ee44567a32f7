//! `/metrics` counts what the test did: connections, subscriptions, publications by source,
//! deliveries, client errors by code, API requests, disconnects by code, handshake failures.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn metrics_count_what_the_test_did() {
    let server = Server::start("").await;
    let m = server.metrics().await;
    for name in [
        "ferrocast_build_info",
        "ferrocast_socket_capacity",
        "ferrocast_broker_up",
    ] {
        assert!(metric_in(&m, name) >= 1.0, "{name} ≥ 1 at start:\n{m}");
    }
    assert_eq!(metric_in(&m, "ferrocast_connects_total"), 0.0);
    assert_eq!(metric_in(&m, "ferrocast_draining"), 0.0);

    let mut a = server.connect("a").await;
    let mut b = server.connect("b").await;
    let mut c = server.connect("c").await;
    a.subscribe(1, "room:m").await;
    b.subscribe(1, "room:m").await;
    c.subscribe(1, "chat:m").await;
    server
        .wait_metric("ferrocast_connects_total", |v| v == 3.0, SHORT)
        .await;
    server
        .wait_metric("ferrocast_sockets", |v| v == 3.0, SHORT)
        .await;
    server
        .wait_metric("ferrocast_subscriptions", |v| v == 3.0, SHORT)
        .await;
    // Channels with local subscribers, per shard: room:m may be on both shards.
    server
        .wait_metric("ferrocast_channels", |v| (2.0..=3.0).contains(&v), SHORT)
        .await;

    // Two API publications, one client publication; each delivered to two subscribers.
    server.publish("room:m", json!({"n": 1})).await;
    server.publish("room:m", json!({"n": 2})).await;
    a.ok(
        2,
        json!({"publish": {"channel": "room:m", "data": {"n": 3}}}),
    )
    .await;
    for cl in [&mut a, &mut b] {
        for _ in 0..3 {
            cl.recv_pub("room:m", SHORT).await;
        }
    }
    server
        .wait_metric(
            "ferrocast_publications_total{source=\"api\"}",
            |v| v == 2.0,
            SHORT,
        )
        .await;
    server
        .wait_metric(
            "ferrocast_publications_total{source=\"client\"}",
            |v| v == 1.0,
            SHORT,
        )
        .await;
    server
        .wait_metric("ferrocast_deliveries_total", |v| v >= 6.0, SHORT)
        .await;
    server
        .wait_metric("ferrocast_bytes_out_total", |v| v > 0.0, SHORT)
        .await;
    server
        .wait_metric(
            "ferrocast_delivery_latency_seconds_count",
            |v| v >= 1.0,
            SHORT,
        )
        .await;

    // Errors by code.
    let code = c
        .err_code(3, json!({"subscribe": {"channel": "user:a"}}))
        .await;
    assert_eq!(code, 103);
    let code = c.err_code(4, json!({"frobnicate": {}})).await;
    assert_eq!(code, 104);
    server
        .wait_metric(
            "ferrocast_client_errors_total{code=\"103\"}",
            |v| v == 1.0,
            SHORT,
        )
        .await;
    server
        .wait_metric(
            "ferrocast_client_errors_total{code=\"104\"}",
            |v| v == 1.0,
            SHORT,
        )
        .await;
    server
        .wait_metric(
            "ferrocast_client_commands_total{command=\"subscribe\"}",
            |v| v >= 3.0,
            SHORT,
        )
        .await;
    server
        .wait_metric(
            "ferrocast_client_commands_total{command=\"publish\"}",
            |v| v >= 1.0,
            SHORT,
        )
        .await;

    // API requests by route and status.
    let (status, _) = server.api_raw("publish", "{}", None).await;
    assert_eq!(status, 401);
    server
        .wait_metric(
            "ferrocast_api_requests_total{status=\"200\"}",
            |v| v >= 2.0,
            SHORT,
        )
        .await;
    server
        .wait_metric(
            "ferrocast_api_requests_total{status=\"401\"}",
            |v| v == 1.0,
            SHORT,
        )
        .await;
    let m = server.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("ferrocast_api_requests_total")
                && l.contains("route=")
                && l.contains("publish")),
        "API requests carry the route:\n{m}"
    );

    // A bad token is a handshake failure (auth).
    let bad = token_full("wrong-secret", "x", 3600, &[], None);
    let mut rejected = ws_connect(&server.ws_url(Some(&bad))).await;
    assert_eq!(rejected.expect_close(SHORT).await.0, 4003);
    server
        .wait_metric(
            "ferrocast_handshake_failures_total{reason=\"auth\"}",
            |v| v >= 1.0,
            SHORT,
        )
        .await;

    // A client leaves: the socket gauge drops and the disconnect is counted by code.
    c.close().await;
    server
        .wait_metric("ferrocast_sockets", |v| v == 2.0, SHORT)
        .await;
    server
        .wait_metric("ferrocast_subscriptions", |v| v == 2.0, SHORT)
        .await;
    // Counted by close code (1000 for the client's own close, or however the server labels it).
    server
        .wait_metric("ferrocast_disconnects_total", |v| v >= 1.0, SHORT)
        .await;
}

#[tokio::test]
async fn metrics_text_is_prometheus_exposition_with_fixed_names() {
    let server = Server::start("").await;
    let mut c = server.connect("a").await;
    c.subscribe(1, "room:x").await;
    let names = [
        "ferrocast_build_info",
        "ferrocast_sockets",
        "ferrocast_socket_capacity",
        "ferrocast_connects_total",
        "ferrocast_subscriptions",
        "ferrocast_channels",
        "ferrocast_outbound_queue_bytes",
        "ferrocast_slow_consumer_closes_total",
        "ferrocast_broker_up",
        "ferrocast_scheduled_pending",
        "ferrocast_draining",
    ];
    // Per-shard gauges may first appear at the shards' periodic update: poll.
    let exposed = eventually(SHORT, || {
        let server = &server;
        async move {
            let m = server.metrics().await;
            names.iter().all(|n| m.contains(&format!("# TYPE {n} ")))
        }
    })
    .await;
    let m = server.metrics().await;
    let missing: Vec<&&str> = names
        .iter()
        .filter(|n| !m.contains(&format!("# TYPE {n} ")))
        .collect();
    assert!(
        exposed && missing.is_empty(),
        "metrics without a TYPE line: {missing:?}\n{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("ferrocast_build_info{") && l.contains("version=")),
        "build_info has a version label:\n{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("ferrocast_sockets{") && l.contains("shard=")),
        "sockets are labelled by shard:\n{m}"
    );
}

#[test]
fn metric_query_matches_label_subsets_and_sums() {
    let text = "# HELP x y\n# TYPE ferrocast_sockets gauge\nferrocast_sockets{shard=\"0\"} 2\n\
                ferrocast_sockets{shard=\"1\"} 3\nferrocast_disconnects_total{code=\"4005\"} 1\n\
                ferrocast_disconnects_total{code=\"1000\"} 4\nferrocast_connects_total 7\n\
                ferrocast_api_requests_total{route=\"/api/publish\",status=\"200\"} 5\n";
    assert_eq!(metric_in(text, "ferrocast_sockets"), 5.0);
    assert_eq!(metric_in(text, "ferrocast_sockets{shard=\"1\"}"), 3.0);
    assert_eq!(
        metric_in(text, "ferrocast_disconnects_total{code=\"4005\"}"),
        1.0
    );
    assert_eq!(metric_in(text, "ferrocast_disconnects_total"), 5.0);
    assert_eq!(metric_in(text, "ferrocast_connects_total"), 7.0);
    assert_eq!(
        metric_in(text, "ferrocast_api_requests_total{status=\"200\"}"),
        5.0
    );
    assert_eq!(
        metric_in(text, "ferrocast_api_requests_total{status=\"401\"}"),
        0.0
    );
    assert_eq!(metric_in(text, "ferrocast_connects"), 0.0);
}
