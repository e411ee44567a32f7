//! Server-side subscriptions (the token's / connect proxy's `subs`, `connect.subs` recovery,
//! `POST /api/subscribe` across a fleet) and the subscribe and publish proxies, against the real
//! binary with real WebSocket clients and a real HTTP backend.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::redis::standalone;
use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// A token with server-side subscriptions.
fn token_subs(user: &str, subs: &[&str]) -> String {
    let claims = json!({"sub": user, "exp": now_secs() + 3600, "subs": subs});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET.as_bytes()),
    )
    .expect("encode token")
}

fn is_subscribe_push(v: &Value, channel: &str) -> bool {
    v["channel"] == channel && v.get("subscribe").is_some() && v.get("id").is_none()
}

#[tokio::test]
async fn token_subs_are_subscribed_at_connect_without_a_round_trip() {
    let server = Server::start("").await;
    let mut c = server
        .connect_token(&token_subs("17", &["user:17", "news:all"]))
        .await;
    for ch in ["user:17", "news:all"] {
        let (push, _) = c.recv_matching(SHORT, |v| is_subscribe_push(v, ch)).await;
        assert!(push["subscribe"]["epoch"].is_string(), "{push}");
        assert!(push["subscribe"]["offset"].is_u64(), "{push}");
    }
    server
        .publish("user:17", json!({"notice": "your reservation arrived"}))
        .await;
    let (p, _) = c.recv_pub("user:17", SHORT).await;
    assert_eq!(p["pub"]["data"]["notice"], "your reservation arrived");
    // Subscribing again by hand is "already subscribed": the server-side one is real.
    assert_eq!(
        c.err_code(1, json!({"subscribe": {"channel": "user:17"}}))
            .await,
        105
    );
    // `news` is read-only for clients, but a `subs` channel is readable like a `channels` one.
    server.publish("news:all", json!({"n": 1})).await;
    c.recv_pub("news:all", SHORT).await;
}

#[tokio::test]
async fn connect_subs_recover_what_was_missed_and_signal_what_cannot_be() {
    let server = Server::start("").await;
    let tok = token_subs("17", &["room:lib-17"]);
    let mut c = ws_connect(&server.ws_url(None)).await;
    c.ok(1, json!({"connect": {"token": &tok}})).await;
    let (push, _) = c
        .recv_matching(SHORT, |v| is_subscribe_push(v, "room:lib-17"))
        .await;
    let epoch = push["subscribe"]["epoch"].as_str().unwrap().to_string();
    let first = server.publish("room:lib-17", json!({"n": 1})).await;
    c.recv_pub("room:lib-17", SHORT).await;
    c.close().await;

    // Missed while away: 2 and 3.
    for n in [2, 3] {
        server.publish("room:lib-17", json!({"n": n})).await;
    }
    let mut c = ws_connect(&server.ws_url(None)).await;
    let offset = first["offset"].as_u64().unwrap();
    c.ok(
        1,
        json!({"connect": {"token": &tok, "subs": {"room:lib-17": {"offset": offset, "epoch": epoch}}}}),
    )
    .await;
    let (push, _) = c
        .recv_matching(SHORT, |v| is_subscribe_push(v, "room:lib-17"))
        .await;
    let s = &push["subscribe"];
    assert_eq!(s["recovered"], true, "{push}");
    let got: Vec<i64> = s["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![2, 3], "exactly what was missed, in order: {push}");

    // A position from another epoch can't be recovered: said so, not silently skipped.
    let mut c = ws_connect(&server.ws_url(None)).await;
    c.ok(
        1,
        json!({"connect": {"token": &tok, "subs": {"room:lib-17": {"offset": 1, "epoch": "gone"}}}}),
    )
    .await;
    let (push, _) = c
        .recv_matching(SHORT, |v| is_subscribe_push(v, "room:lib-17"))
        .await;
    assert_eq!(push["subscribe"]["recovered"], false, "{push}");

    // Positions for channels the client may not subscribe to are ignored, not granted.
    let mut c = ws_connect(&server.ws_url(None)).await;
    c.ok(
        1,
        json!({"connect": {"token": &tok, "subs": {"user:99": {"offset": 0, "epoch": "x"}}}}),
    )
    .await;
    c.recv_matching(SHORT, |v| is_subscribe_push(v, "room:lib-17"))
        .await;
    server.publish("user:99", json!({"secret": true})).await;
    server.publish("room:lib-17", json!({"n": 4})).await;
    let (p, _) = c
        .recv_matching(SHORT, |v| {
            v["channel"] == "user:99" || (v["channel"] == "room:lib-17" && v.get("pub").is_some())
        })
        .await;
    assert_eq!(
        p["channel"], "room:lib-17",
        "user:99 is not this user's: {p}"
    );
}

#[tokio::test]
async fn api_subscribe_reaches_every_device_of_the_user_only() {
    let server = Server::start("").await;
    let mut phone = server.connect("ada").await;
    let mut laptop = server.connect("ada").await;
    let mut other = server.connect("bob").await;
    let (status, body) = server
        .api(
            "/api/subscribe",
            json!({"user": "ada", "channel": "room:desk"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({})));
    for c in [&mut phone, &mut laptop] {
        c.recv_matching(SHORT, |v| is_subscribe_push(v, "room:desk"))
            .await;
    }
    server.publish("room:desk", json!({"x": 1})).await;
    phone.recv_pub("room:desk", SHORT).await;
    laptop.recv_pub("room:desk", SHORT).await;
    other.assert_no_pub(QUIET, "bob was not subscribed").await;

    // Errors: unknown namespace, missing user.
    let (status, body) = server
        .api(
            "/api/subscribe",
            json!({"user": "ada", "channel": "nope:1"}),
        )
        .await;
    assert_eq!((status, body["error"]["code"].as_i64()), (400, Some(102)));
    let (status, _) = server
        .api("/api/subscribe", json!({"user": "", "channel": "room:1"}))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn api_subscribe_crosses_nodes_through_redis() {
    let redis = standalone();
    let toml = format!("[broker]\nkind = \"redis\"\nurls = [{:?}]\n", redis.url());
    let a = Server::start(&toml).await;
    let b = Server::start(&toml).await;
    let mut on_a = a.connect("ada").await;
    let mut on_b = b.connect("ada").await;
    let (status, _) = a
        .api(
            "/api/subscribe",
            json!({"user": "ada", "channel": "room:fleet"}),
        )
        .await;
    assert_eq!(status, 200);
    for c in [&mut on_a, &mut on_b] {
        c.recv_matching(SHORT, |v| is_subscribe_push(v, "room:fleet"))
            .await;
    }
    b.publish("room:fleet", json!({"via": "b"})).await;
    on_a.recv_pub("room:fleet", SHORT).await;
    on_b.recv_pub("room:fleet", SHORT).await;
}

/// A backend for the subscribe and publish proxies: answers by what the request body holds, and
/// keeps the bodies it got.
struct Backend {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

async fn start_backend() -> Backend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(body) = read_body(&mut sock).await else {
                    return;
                };
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                seen.lock().unwrap().push(v.clone());
                let channel = v["channel"].as_str().unwrap_or("");
                let (status, answer) = match channel {
                    "room:club" => ("200 OK", "{}".to_string()),
                    "room:busy" => ("500 Internal Server Error", "{}".to_string()),
                    "chat:rewrite" => (
                        "200 OK",
                        json!({"data": {"text": v["data"]["text"].as_str().unwrap_or("").to_uppercase(), "moderated": true}})
                            .to_string(),
                    ),
                    "chat:ok" => ("200 OK", String::new()),
                    "chat:limited" => (
                        "429 Too Many Requests",
                        json!({"error": {"code": 110, "message": "slow down"}}).to_string(),
                    ),
                    _ => ("403 Forbidden", "{}".to_string()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Backend { url, bodies }
}

/// The body of one HTTP/1.1 request.
async fn read_body(sock: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let request = read_http_request(sock).await?;
    let (_, body) = request.split_once("\r\n\r\n")?;
    Some(body.as_bytes().to_vec())
}

#[tokio::test]
async fn subscribe_proxy_allows_what_the_token_does_not_list() {
    let backend = start_backend().await;
    let server = Server::start(&format!(
        "[auth]\nsubscribe_proxy_url = \"{}/subscribe\"\nproxy_timeout = \"2s\"\n\
         [namespaces.room]\nprivate = true\n",
        backend.url
    ))
    .await;
    let mut c = server.connect("ada").await;
    // The backend allows room:club, refuses room:secret, fails on room:busy.
    c.subscribe(1, "room:club").await;
    assert_eq!(
        c.err_code(2, json!({"subscribe": {"channel": "room:secret"}}))
            .await,
        103
    );
    assert_eq!(
        c.err_code(3, json!({"subscribe": {"channel": "room:busy"}}))
            .await,
        108,
        "a failing backend fails closed with 'not available'"
    );
    // Another user's personal channel is never delegated to the backend.
    assert_eq!(
        c.err_code(4, json!({"subscribe": {"channel": "user:bob"}}))
            .await,
        103
    );
    {
        let bodies = backend.bodies.lock().unwrap();
        assert_eq!(bodies.len(), 3, "{bodies:?}");
        assert_eq!(bodies[0]["user"], "ada");
        assert_eq!(bodies[0]["channel"], "room:club");
        assert!(bodies[0]["client"].is_string());
    }
    server.publish("room:club", json!({"hi": 1})).await;
    c.recv_pub("room:club", SHORT).await;
    let m = server.metrics().await;
    assert_eq!(
        metric_in(
            &m,
            r#"ferrocast_proxy_requests_total{proxy="subscribe",result="allowed"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_in(
            &m,
            r#"ferrocast_proxy_requests_total{proxy="subscribe",result="unavailable"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn publish_proxy_approves_rewrites_and_refuses_client_publications() {
    let backend = start_backend().await;
    let server = Server::start(&format!(
        "[auth]\npublish_proxy_url = \"{}/publish\"\nproxy_timeout = \"2s\"\n",
        backend.url
    ))
    .await;
    let mut c = server.connect("ada").await;
    for (i, ch) in ["chat:ok", "chat:rewrite"].iter().enumerate() {
        c.subscribe(i as u64 + 1, ch).await;
    }
    c.ok(
        10,
        json!({"publish": {"channel": "chat:ok", "data": {"text": "as is"}}}),
    )
    .await;
    let (p, _) = c.recv_pub("chat:ok", SHORT).await;
    assert_eq!(p["pub"]["data"], json!({"text": "as is"}));
    c.ok(
        11,
        json!({"publish": {"channel": "chat:rewrite", "data": {"text": "quiet please"}}}),
    )
    .await;
    let (p, _) = c.recv_pub("chat:rewrite", SHORT).await;
    assert_eq!(
        p["pub"]["data"],
        json!({"text": "QUIET PLEASE", "moderated": true}),
        "the backend's data replaced the client's"
    );
    assert_eq!(
        c.err_code(12, json!({"publish": {"channel": "chat:spam", "data": {}}}))
            .await,
        103
    );
    assert_eq!(
        c.err_code(
            13,
            json!({"publish": {"channel": "chat:limited", "data": {}}})
        )
        .await,
        110,
        "the backend's own protocol error code is passed on"
    );
    let body = backend.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["data"], json!({"text": "as is"}));
    assert_eq!(body["user"], "ada");
    // Namespaces still decide first: `news` refuses client publications without asking.
    let before = backend.bodies.lock().unwrap().len();
    assert_eq!(
        c.err_code(14, json!({"publish": {"channel": "news:x", "data": {}}}))
            .await,
        103
    );
    assert_eq!(backend.bodies.lock().unwrap().len(), before);
}

#[tokio::test]
async fn an_unreachable_publish_proxy_publishes_nothing() {
    let port = free_port();
    let server = Server::start(&format!(
        "[auth]\npublish_proxy_url = \"http://127.0.0.1:{port}/publish\"\nproxy_timeout = \"1s\"\n"
    ))
    .await;
    let mut c = server.connect("ada").await;
    c.subscribe(1, "chat:x").await;
    assert_eq!(
        c.err_code(2, json!({"publish": {"channel": "chat:x", "data": {}}}))
            .await,
        108
    );
    c.assert_no_pub(Duration::from_millis(500), "refused publication delivered")
        .await;
}
