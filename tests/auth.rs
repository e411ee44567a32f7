//! Authentication: the `connect` command and `?token=`, bad and expired tokens, the auth timeout,
//! `refresh` and expiry at `exp`, the `channels` claim with private namespaces, anonymous
//! connections, and the connect proxy for cookie sessions.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

fn assert_connected_fields(body: &Value, user: &str) {
    assert!(
        body["client"].as_str().is_some_and(|c| !c.is_empty()),
        "client id missing: {body}"
    );
    assert_eq!(body["user"], user, "user: {body}");
    assert_eq!(body["node"], NODE_NAME, "node: {body}");
    assert_eq!(
        body["ping_interval"], 25,
        "ping_interval (default 25 s): {body}"
    );
}

#[tokio::test]
async fn connect_command_replies_then_pushes_connected() {
    let server = Server::start("").await;
    let mut c = ws_connect(&server.ws_url(None)).await;
    let reply = c
        .command(1, json!({"connect": {"token": token("17", 3600, &[])}}))
        .await;
    assert!(reply.get("error").is_none(), "connect failed: {reply}");
    assert_connected_fields(&reply["result"], "17");
    let (push, _) = c
        .recv_matching(SHORT, |v| v.get("connected").is_some())
        .await;
    assert_eq!(
        push["connected"], reply["result"],
        "the connected push repeats the connect result"
    );
    // The connection is usable.
    c.ok(2, json!({"ping": {}})).await;
}

#[tokio::test]
async fn token_in_url_gets_connected_push_right_after_upgrade() {
    let server = Server::start("").await;
    let mut c = ws_connect(&server.ws_url(Some(&token("17", 3600, &[])))).await;
    let push = c.recv_json(SHORT).await;
    assert_connected_fields(&push["connected"], "17");
    c.ok(1, json!({"ping": {}})).await;
}

#[tokio::test]
async fn connect_with_bad_token_gets_101_then_close_4003() {
    let server = Server::start("").await;
    for bad in [
        token_full("some-other-secret", "17", 3600, &[], None),
        "not.a.jwt".to_string(),
    ] {
        let mut c = ws_connect(&server.ws_url(None)).await;
        let code = c.err_code(1, json!({"connect": {"token": bad}})).await;
        assert_eq!(code, 101, "bad token → error 101");
        let (close, _) = c.expect_close(SHORT).await;
        assert_eq!(close, 4003, "bad token → close 4003 after the error");
    }
}

#[tokio::test]
async fn connect_with_expired_token_gets_109_then_close_4011() {
    let server = Server::start("").await;
    let mut c = ws_connect(&server.ws_url(None)).await;
    // An hour ago: far past any validation leeway.
    let code = c
        .err_code(1, json!({"connect": {"token": token("17", -3600, &[])}}))
        .await;
    assert_eq!(code, 109, "expired token → error 109");
    let (close, _) = c.expect_close(SHORT).await;
    assert_eq!(close, 4011, "expired token → close 4011 after the error");
}

#[tokio::test]
async fn bad_token_in_url_closes_4003_right_after_upgrade() {
    let server = Server::start("").await;
    let bad = token_full("some-other-secret", "17", 3600, &[], None);
    let mut c = ws_connect(&server.ws_url(Some(&bad))).await;
    let (close, _) = c.expect_close(SHORT).await;
    assert_eq!(close, 4003);
}

#[tokio::test]
async fn expired_token_in_url_closes_4011_right_after_upgrade() {
    let server = Server::start("").await;
    let mut c = ws_connect(&server.ws_url(Some(&token("17", -3600, &[])))).await;
    let (close, _) = c.expect_close(SHORT).await;
    assert_eq!(close, 4011);
}

#[tokio::test]
async fn unauthenticated_connection_is_closed_4001_after_auth_timeout() {
    let server = Server::start("[auth]\ntimeout = \"1s\"").await;
    // A healthy authenticated client beside it must be left alone.
    let mut other = server.connect("17").await;
    let started = Instant::now();
    let mut c = ws_connect(&server.ws_url(None)).await;
    let (close, _) = c.expect_close(Duration::from_secs(4)).await;
    let waited = started.elapsed();
    assert_eq!(close, 4001, "auth timeout → close 4001");
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before auth.timeout = 1s"
    );
    other.ok(1, json!({"ping": {}})).await;
    server
        .wait_metric(
            "ferrocast_disconnects_total{code=\"4001\"}",
            |v| v >= 1.0,
            SHORT,
        )
        .await;
}

#[tokio::test]
async fn refresh_extends_the_session_and_unrefreshed_token_closes_4011_at_exp() {
    let server = Server::start("").await;
    // Both tokens expire in 2 s (JWT `exp` has 1 s granularity: 1–2 s from now).
    let mut refreshed = server.connect_token(&token("17", 2, &[])).await;
    let mut expiring = server.connect_token(&token("18", 2, &[])).await;
    let result = refreshed
        .ok(1, json!({"refresh": {"token": token("17", 3600, &[])}}))
        .await;
    assert!(result.is_object(), "refresh result: {result}");

    let (close, _) = expiring.expect_close(Duration::from_secs(5)).await;
    assert_eq!(close, 4011, "token not refreshed → close 4011 at exp");

    // Past the first token's exp by now; the refreshed connection still answers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    refreshed.ok(2, json!({"ping": {}})).await;
}

#[tokio::test]
async fn refresh_with_expired_or_bad_token_is_refused() {
    let server = Server::start("").await;
    let mut c = server.connect("17").await;
    let code = c
        .err_code(1, json!({"refresh": {"token": token("17", -3600, &[])}}))
        .await;
    assert_eq!(code, 109, "refresh with an expired token → 109");

    let mut d = server.connect("17").await;
    let bad = token_full("some-other-secret", "17", 3600, &[], None);
    let code = d.err_code(1, json!({"refresh": {"token": bad}})).await;
    assert_eq!(code, 101, "refresh with a badly signed token → 101");
}

#[tokio::test]
async fn channels_claim_opens_private_namespace_channels() {
    let server = Server::start(
        r#"
[namespaces.secret]
private = true
publish = false
"#,
    )
    .await;
    let mut c = server
        .connect_token(&token("17", 3600, &["secret:a"]))
        .await;
    let result = c.subscribe(1, "secret:a").await;
    assert!(result["offset"].is_u64(), "subscribe result: {result}");
    let code = c
        .err_code(2, json!({"subscribe": {"channel": "secret:b"}}))
        .await;
    assert_eq!(
        code, 103,
        "private channel not in the token's channels → 103"
    );

    let mut other = server.connect("18").await;
    let code = other
        .err_code(1, json!({"subscribe": {"channel": "secret:a"}}))
        .await;
    assert_eq!(code, 103, "token without the channel → 103");
}

#[tokio::test]
async fn anonymous_connection_subscribes_only_where_the_namespace_allows() {
    let server = Server::start(
        r#"
[auth]
allow_anonymous = true

[namespaces.public]
anonymous = true
"#,
    )
    .await;
    let mut c = ws_connect(&server.ws_url(None)).await;
    // An anonymous session may be connected at upgrade or by a `connect` without a token.
    let connected = match c.try_recv_json(Duration::from_millis(300)).await {
        Some(push) => push["connected"].clone(),
        None => c.ok(1, json!({"connect": {}})).await,
    };
    assert_eq!(
        connected["user"], "",
        "anonymous user id is empty: {connected}"
    );
    c.subscribe(2, "public:lobby").await;
    let code = c
        .err_code(3, json!({"subscribe": {"channel": "room:1"}}))
        .await;
    assert_eq!(
        code, 103,
        "anonymous in a namespace without `anonymous` → 103"
    );
}

#[tokio::test]
async fn anonymous_token_refused_when_not_allowed() {
    // `sub` = "" is anonymous; the room namespace does not allow anonymous subscribers.
    let server = Server::start("").await;
    let mut c = server.connect_token(&token("", 3600, &[])).await;
    let code = c
        .err_code(1, json!({"subscribe": {"channel": "room:1"}}))
        .await;
    assert_eq!(code, 103);
}

/// A tiny HTTP backend for the connect proxy: 200 with user 42 when the request carries the cookie
/// `sessionid=good`, 403 otherwise. Keeps every request it got.
struct ProxyBackend {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn start_proxy_backend() -> ProxyBackend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/connect", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(request) = read_http_request(&mut sock).await else {
                    return;
                };
                let good = request.contains("sessionid=good");
                seen.lock().unwrap().push(request);
                let (status, body) = if good {
                    ("200 OK", r#"{"user":"42","channels":[],"info":{}}"#)
                } else {
                    ("403 Forbidden", r#"{"error":"forbidden"}"#)
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    ProxyBackend { url, requests }
}

#[tokio::test]
async fn connect_proxy_accepts_good_cookie_and_rejects_bad_one_with_4003() {
    let backend = start_proxy_backend().await;
    let server = Server::start(&format!(
        "[auth]\nproxy_url = \"{}\"\nproxy_headers = [\"X-Test\"]\n",
        backend.url
    ))
    .await;

    let mut good = ws_connect_with(
        &server.ws_url(None),
        &[("Cookie", "sessionid=good"), ("X-Test", "hello-proxy")],
        None,
    )
    .await;
    let push = good.recv_json(SHORT).await;
    assert_eq!(
        push["connected"]["user"], "42",
        "proxy answer's user: {push}"
    );
    good.ok(1, json!({"subscribe": {"channel": "user:42"}}))
        .await;
    {
        let requests = backend.requests.lock().unwrap();
        assert!(!requests.is_empty(), "the backend got no request");
        let first = requests[0].to_lowercase();
        assert!(
            first.starts_with("post "),
            "proxy request is a POST: {first}"
        );
        assert!(
            first.contains("hello-proxy"),
            "header X-Test (in auth.proxy_headers) forwarded: {first}"
        );
    }

    let mut bad = ws_connect_with(
        &server.ws_url(None),
        &[("Cookie", "sessionid=bad"), ("X-Test", "hello-proxy")],
        None,
    )
    .await;
    let (close, _) = bad.expect_close(SHORT).await;
    assert_eq!(close, 4003, "backend said 403 → close 4003");
}
