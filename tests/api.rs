//! The server API: API key, JSON errors, publish (also idempotent and scheduled), broadcast,
//! disconnect, unsubscribe, info, and the OpenAPI document's routes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::{json, Value};

fn assert_json_error(status: u16, body: &Value, want_status: u16, want_code: Option<i64>) {
    assert_eq!(status, want_status, "HTTP status; body {body}");
    assert!(
        body["error"]["code"].is_i64() && body["error"]["message"].is_string(),
        "error body is {{\"error\": {{\"code\", \"message\"}}}}, got {body}"
    );
    if let Some(code) = want_code {
        assert_eq!(body["error"]["code"], code, "{body}");
    }
}

#[tokio::test]
async fn api_without_valid_key_is_401_with_json_error() {
    let server = Server::start("").await;
    let body = r#"{"channel":"room:1","data":{}}"#;
    let wrong = format!("apikey {API_KEY}x");
    let bearer = format!("Bearer {API_KEY}");
    for auth in [
        None,
        Some(wrong.as_str()),
        Some(bearer.as_str()),
        Some("apikey"),
    ] {
        let (status, json) = server.api_raw("publish", body, auth).await;
        assert_json_error(status, &json, 401, None);
    }
    // Every route needs the key.
    for route in ["broadcast", "presence", "history", "info", "disconnect"] {
        let (status, json) = server.api_raw(route, "{}", None).await;
        assert_json_error(status, &json, 401, None);
    }
    // Counted by route and status.
    server
        .wait_metric(
            "ferrocast_api_requests_total{status=\"401\"}",
            |v| v >= 9.0,
            SHORT,
        )
        .await;
}

#[tokio::test]
async fn api_bad_json_and_bad_channel_are_400_107() {
    let server = Server::start("").await;
    let auth = format!("apikey {API_KEY}");
    let (status, body) = server.api_raw("publish", "{not json", Some(&auth)).await;
    assert_json_error(status, &body, 400, Some(107));
    let (status, body) = server
        .api_raw("publish", r#"{"data": {}}"#, Some(&auth))
        .await;
    assert_json_error(status, &body, 400, Some(107));
    let (status, body) = server
        .api("publish", json!({"channel": "room:bad name", "data": {}}))
        .await;
    assert_json_error(status, &body, 400, Some(107));
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": format!("room:{}", "x".repeat(300)), "data": {}}),
        )
        .await;
    assert_json_error(status, &body, 400, Some(107));
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "room:x", "data": {}, "deliver_at": "tomorrow-ish"}),
        )
        .await;
    assert_json_error(status, &body, 400, Some(107));
}

#[tokio::test]
async fn api_publish_to_unknown_namespace_is_an_error_102() {
    let server = Server::start("").await;
    let (status, body) = server
        .api("publish", json!({"channel": "nope:x", "data": {}}))
        .await;
    assert!((400..500).contains(&status), "4xx, got {status} {body}");
    assert_eq!(body["error"]["code"], 102, "{body}");
}

#[tokio::test]
async fn api_body_over_max_body_size_is_refused() {
    let server = Server::start("[api]\nmax_body_size = 1024\n").await;
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "room:x", "data": "y".repeat(4096)}),
        )
        .await;
    assert!((400..500).contains(&status), "4xx, got {status} {body}");
    assert!(body["error"]["code"].is_i64(), "JSON error: {body}");
    // Small bodies still pass.
    server.publish("room:x", json!({"ok": true})).await;
}

#[tokio::test]
async fn api_publish_answers_offset_and_epoch_and_delivers_without_info() {
    let server = Server::start("").await;
    let mut c = server.connect("17").await;
    let sub = c.subscribe(1, "room:api").await;
    let r1 = server.publish("room:api", json!({"a": 1})).await;
    let r2 = server.publish("room:api", json!({"a": 2})).await;
    assert!(r1["offset"].is_u64() && r1["epoch"].is_string(), "{r1}");
    assert!(r2["offset"].as_u64() > r1["offset"].as_u64(), "{r1} {r2}");
    assert_eq!(r1["epoch"], sub["epoch"], "one epoch per channel");
    let (p, _) = c.recv_pub("room:api", SHORT).await;
    assert_eq!(p["pub"]["data"], json!({"a": 1}));
    assert_eq!(p["pub"]["offset"], r1["offset"]);
    assert!(
        p["pub"].get("info").is_none(),
        "API publications carry no info: {p}"
    );
    // Publishing needs no subscriber and works in read-only namespaces.
    server.publish("news:nobody", json!({})).await;
}

#[tokio::test]
async fn api_publish_with_idempotency_key_publishes_once() {
    let server = Server::start("").await;
    let mut c = server.connect("17").await;
    c.subscribe(1, "room:idem").await;
    let body = json!({"channel": "room:idem", "data": {"charge": 1}, "idempotency_key": "k-1"});
    let (s1, r1) = server.api("publish", body.clone()).await;
    let (s2, r2) = server.api("publish", body).await;
    assert_eq!((s1, s2), (200, 200), "{r1} {r2}");
    assert_eq!(r1["offset"], r2["offset"], "same answer for the same key");
    c.recv_pub("room:idem", SHORT).await;
    c.assert_no_pub(QUIET, "delivered once").await;
}

#[tokio::test]
async fn api_broadcast_reaches_many_channels() {
    let server = Server::start("").await;
    let channels: Vec<String> = (0..10)
        .map(|i| {
            if i % 2 == 0 {
                format!("room:b{i}")
            } else {
                format!("chat:b{i}")
            }
        })
        .collect();
    let mut a = server.connect("17").await;
    let mut b = server.connect("18").await;
    for (i, ch) in channels.iter().enumerate() {
        a.subscribe(i as u64 + 1, ch).await;
    }
    b.subscribe(1, &channels[3]).await;

    let (status, body) = server
        .api(
            "broadcast",
            json!({"channels": channels, "data": {"alert": "all"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let responses = body["responses"]
        .as_array()
        .unwrap_or_else(|| panic!("responses: {body}"));
    assert_eq!(responses.len(), channels.len(), "one response per channel");
    assert!(responses.iter().all(|r| r.get("error").is_none()), "{body}");

    let mut got = BTreeSet::new();
    for _ in 0..channels.len() {
        let (p, _) = a.recv_matching(SHORT, |v| v.get("pub").is_some()).await;
        assert_eq!(p["pub"]["data"], json!({"alert": "all"}));
        got.insert(p["channel"].as_str().unwrap().to_string());
    }
    assert_eq!(got, channels.iter().cloned().collect::<BTreeSet<_>>());
    let (p, _) = b.recv_pub(&channels[3], SHORT).await;
    assert_eq!(p["pub"]["data"], json!({"alert": "all"}));
    a.assert_no_pub(QUIET, "once per channel").await;
}

#[tokio::test]
async fn api_broadcast_and_scheduled_publications_over_outbound_queue_bytes_are_refused() {
    let server = Server::start(
        "[limits]\noutbound_queue_bytes = 65536\nmax_message_size = 16384\n\
         [api]\nmax_body_size = 1048576\n",
    )
    .await;
    let too_large =
        json!({"code": 106, "message": "publication larger than limits.outbound_queue_bytes"});
    let mut c = server.connect("17").await;
    c.subscribe(1, "room:big").await;
    let big = json!({"pad": "x".repeat(100_000)});

    // Broadcast: each channel's entry carries the error, the HTTP status stays 200.
    let (status, body) = server
        .api(
            "broadcast",
            json!({"channels": ["room:big", "nope:x", "chat:big"], "data": big}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let responses = body["responses"].as_array().expect("responses");
    assert_eq!(responses[0]["error"], too_large, "{body}");
    assert_eq!(responses[1]["error"]["code"], 102, "{body}");
    assert_eq!(responses[2]["error"], too_large, "{body}");

    // Scheduled: refused when scheduled, not when due.
    let at = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(200);
    let at = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "room:big", "data": big, "deliver_at": at}),
        )
        .await;
    assert_json_error(status, &body, 413, Some(106));
    assert_eq!(body["error"], too_large);
    assert_eq!(
        server.metric_value("ferrocast_scheduled_pending").await,
        0.0,
        "nothing was scheduled"
    );
    c.assert_no_pub(Duration::from_millis(500), "nothing delivered")
        .await;
    assert!(
        server
            .metric_value("ferrocast_client_errors_total{code=\"106\"}")
            .await
            >= 3.0,
        "counted as errors"
    );
    // The subscriber is still there.
    let (status, body) = server
        .api(
            "broadcast",
            json!({"channels": ["room:big"], "data": {"ok": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (p, _) = c.recv_pub("room:big", SHORT).await;
    assert_eq!(p["pub"]["data"], json!({"ok": 1}));
}

#[tokio::test]
async fn api_disconnect_closes_every_connection_of_the_user() {
    let server = Server::start("").await;
    let mut phone = server.connect("42").await;
    let mut laptop = server.connect("42").await;
    let mut other = server.connect("43").await;
    let (status, body) = server
        .api(
            "disconnect",
            json!({"user": "42", "code": 4000, "reason": "kicked"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({}));
    for c in [&mut phone, &mut laptop] {
        let (code, reason) = c.expect_close(SHORT).await;
        assert_eq!(code, 4000);
        assert_eq!(reason, "kicked");
    }
    other.ok(1, json!({"ping": {}})).await;

    // Without code: some close still arrives.
    let mut again = server.connect("42").await;
    let (status, _) = server.api("disconnect", json!({"user": "42"})).await;
    assert_eq!(status, 200);
    again.expect_close(SHORT).await;
}

#[tokio::test]
async fn api_unsubscribe_removes_the_user_from_the_channel() {
    let server = Server::start("").await;
    let mut c = server.connect("42").await;
    let mut other = server.connect("43").await;
    c.subscribe(1, "room:kick").await;
    c.subscribe(2, "room:stay").await;
    other.subscribe(1, "room:kick").await;

    let (status, body) = server
        .api("unsubscribe", json!({"user": "42", "channel": "room:kick"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({}));
    let (push, _) = c
        .recv_matching(SHORT, |v| v.get("unsubscribe").is_some())
        .await;
    assert_eq!(push, json!({"channel": "room:kick", "unsubscribe": {}}));

    server.publish("room:kick", json!({"n": 1})).await;
    server.publish("room:stay", json!({"n": 2})).await;
    let (p, _) = c.recv_pub("room:stay", SHORT).await;
    assert_eq!(p["pub"]["data"]["n"], 2);
    c.assert_no_pub(QUIET, "nothing from room:kick").await;
    // The other user keeps the channel.
    let (p, _) = other.recv_pub("room:kick", SHORT).await;
    assert_eq!(p["pub"]["data"]["n"], 1);
}

#[tokio::test]
async fn api_info_lists_the_node() {
    let server = Server::start("").await;
    let mut c = server.connect("17").await;
    c.subscribe(1, "room:i").await;
    let (status, body) = server.api("info", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let nodes = body["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("info has a nodes array: {body}"));
    assert_eq!(nodes.len(), 1, "{body}");
    let node = &nodes[0];
    let text = node.to_string();
    assert!(text.contains(NODE_NAME), "node name in info: {body}");
    for key in ["connections", "subscriptions", "channels"] {
        assert!(node[key].is_u64(), "{key} in node info: {body}");
    }
    assert!(text.contains("uptime"), "uptime in node info: {body}");
    assert_eq!(node["connections"], 1, "{body}");
    // Subscription and channel counts may be refreshed periodically (each second): poll.
    let deadline = std::time::Instant::now() + SHORT;
    loop {
        let (_, body) = server.api("info", json!({})).await;
        let node = &body["nodes"][0];
        if node["subscriptions"] == 1 && node["channels"] == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "one subscription on one channel: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn scheduled_publication_arrives_once_within_100ms_of_its_time() {
    let server = Server::start("").await;
    let mut c = server.connect("17").await;
    c.subscribe(1, "room:later").await;

    let at = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    let at_text = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let due = SystemTime::UNIX_EPOCH + Duration::from_nanos(at.unix_timestamp_nanos() as u64);
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "room:later", "data": {"remind": "now"}, "deliver_at": at_text}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("scheduled").is_some_and(|s| !s.is_null()),
        "scheduled answer: {body}"
    );
    assert_eq!(
        server.metric_value("ferrocast_scheduled_pending").await,
        1.0,
        "one publication pending"
    );

    let (p, _) = c.recv_pub("room:later", Duration::from_secs(4)).await;
    let arrived = SystemTime::now();
    assert_eq!(p["pub"]["data"], json!({"remind": "now"}));
    match arrived.duration_since(due) {
        Ok(late) => assert!(
            late <= Duration::from_millis(100),
            "arrived {late:?} after its time (≤ 100 ms allowed)"
        ),
        Err(early) => {
            let early = early.duration();
            assert!(
                early <= Duration::from_millis(2),
                "arrived {early:?} before its time"
            )
        }
    }
    // Once: nothing more in the next second.
    c.assert_no_pub(Duration::from_secs(1), "delivered exactly once")
        .await;
    assert_eq!(
        server.metric_value("ferrocast_scheduled_pending").await,
        0.0
    );
}

/// Routes listed under `paths:` in docs/openapi.yaml (the keys of that mapping), each with the
/// text of its block.
fn openapi_paths(yaml: &str) -> BTreeMap<String, String> {
    let mut paths = BTreeMap::new();
    let mut in_paths = false;
    let mut key_indent: Option<usize> = None;
    let mut current: Option<String> = None;
    for line in yaml.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if !in_paths {
            if indent == 0 && trimmed.starts_with("paths:") {
                in_paths = true;
            }
            continue;
        }
        if indent == 0 {
            break;
        }
        let key_indent = *key_indent.get_or_insert(indent);
        if indent == key_indent {
            let key = trimmed.trim_end().trim_end_matches(':');
            let key = key.trim_matches(|c| c == '"' || c == '\'').to_string();
            paths.insert(key.clone(), String::new());
            current = Some(key);
        } else if let Some(key) = &current {
            let block = paths.get_mut(key).unwrap();
            block.push_str(trimmed);
            block.push('\n');
        }
    }
    paths
}

#[test]
fn openapi_document_lists_exactly_the_api_routes() {
    let path = repo_path("docs/openapi.yaml");
    let yaml =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let want: BTreeSet<String> = [
        "/api/publish",
        "/api/broadcast",
        "/api/disconnect",
        "/api/unsubscribe",
        "/api/presence",
        "/api/presence_stats",
        "/api/history",
        "/api/info",
        "/api/cancel",
        "/api/subscribe",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let served: BTreeSet<String> = ferrocast::api::ROUTES
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(served, want, "the routes the server serves");
    let mut got = openapi_paths(&yaml);
    // The document also describes the clients' SSE endpoint (a GET on the same listener).
    let sse = got.remove("/sse").expect("/sse is documented");
    assert!(sse.lines().any(|l| l.starts_with("get:")), "{sse}");
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "paths in {}",
        path.display()
    );
    for (route, block) in &got {
        assert!(
            block.lines().any(|l| l.starts_with("post:")),
            "{route} is documented as a POST:\n{block}"
        );
    }
}

#[test]
fn openapi_path_scanner_reads_a_small_document() {
    let yaml = "openapi: 3.0.3\npaths:\n  /api/a:\n    post:\n      summary: x\n  \"/api/b\":\n    summary: y\n    post: {}\ncomponents:\n  schemas: {}\n";
    let got = openapi_paths(yaml);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["/api/a", "/api/b"]);
    assert!(got["/api/b"].contains("post: {}"));
}

#[tokio::test]
async fn api_disconnect_reason_defaults_to_the_code_text_and_is_bounded() {
    let server = Server::start("").await;
    let mut c = server.connect("7").await;
    let (status, _) = server
        .api("disconnect", json!({"user": "7", "code": 4003}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(c.expect_close(SHORT).await, (4003, "forbidden".to_string()));
    let (status, body) = server
        .api(
            "disconnect",
            json!({"user": "7", "code": 4000, "reason": "x".repeat(124)}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (400, Some(107)),
        "{body}"
    );
}
