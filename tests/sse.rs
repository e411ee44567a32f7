//! The SSE transport (`GET /sse`) against the real binary, read by a plain HTTP/1.1 client that
//! follows the EventSource rules (chunked body, `id:`/`data:` fields, comments, Last-Event-ID).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn token_subs(user: &str, subs: &[&str], ttl: i64) -> String {
    let claims = json!({"sub": user, "exp": now_secs() + ttl, "subs": subs});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET.as_bytes()),
    )
    .expect("encode token")
}

/// One SSE event as EventSource would see it (`comment` for a `:` heartbeat line).
#[derive(Debug, Clone)]
struct Event {
    id: Option<String>,
    data: Option<Value>,
    comment: bool,
}

struct Sse {
    sock: TcpStream,
    status: u16,
    head: String,
    raw: Vec<u8>,
    body: Vec<u8>,
    ended: bool,
    last_id: Option<String>,
}

impl Sse {
    async fn open(server: &Server, query: &str, headers: &[(&str, &str)]) -> Sse {
        Self::open_with(server, query, headers, None).await
    }

    async fn open_with(
        server: &Server,
        query: &str,
        headers: &[(&str, &str)],
        recv_buffer: Option<u32>,
    ) -> Sse {
        let addr: std::net::SocketAddr = server
            .public_url()
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut sock = socket.connect(addr).await.expect("connect");
        let mut req =
            format!("GET /sse?{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let n = tokio::time::timeout(SHORT, sock.read(&mut chunk))
                .await
                .expect("response head in time")
                .unwrap();
            assert!(n > 0, "connection closed before the response head");
            raw.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let status = head[9..12].parse().unwrap();
        let raw = raw[end + 4..].to_vec();
        Sse {
            sock,
            status,
            head,
            raw,
            body: Vec::new(),
            ended: false,
            last_id: None,
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// The whole (non-stream) body of an error response.
    async fn error_body(mut self) -> Value {
        let len: usize = self.header("content-length").unwrap().parse().unwrap();
        let mut chunk = [0u8; 4096];
        while self.raw.len() < len {
            let n = self.sock.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            self.raw.extend_from_slice(&chunk[..n]);
        }
        serde_json::from_slice(&self.raw[..len]).unwrap()
    }

    /// Moves complete chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&self.raw[..line_end]).unwrap().trim(),
                16,
            )
            .expect("chunk size");
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            let data = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            self.body.extend_from_slice(&data);
            self.raw.drain(..line_end + 2 + size + 2);
        }
    }

    /// The next event, or None when the stream ended (or nothing came within `timeout`).
    async fn next(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 16384];
        loop {
            self.dechunk();
            if let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.body[..end].to_vec()).unwrap();
                self.body.drain(..end + 2);
                let mut ev = Event {
                    id: None,
                    data: None,
                    comment: false,
                };
                let mut data = String::new();
                let mut has_data = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        ev.comment = true;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        if has_data {
                            data.push('\n');
                        }
                        data.push_str(v);
                        has_data = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_string());
                    }
                }
                if has_data {
                    ev.data = Some(serde_json::from_str(&data).expect("data is JSON"));
                }
                if ev.id.is_some() {
                    self.last_id = ev.id.clone();
                }
                if ev.data.is_none() && !ev.comment {
                    continue; // `retry:` only
                }
                return Some(ev);
            }
            if self.ended {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.sock.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.ended = true;
                    self.dechunk();
                    if !self.body.windows(2).any(|w| w == b"\n\n") {
                        return None;
                    }
                }
                Ok(Ok(n)) => self.raw.extend_from_slice(&chunk[..n]),
                Err(_) => return None,
            }
        }
    }

    /// The next event whose data matches `pred` (others are skipped).
    async fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SHORT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Event { data: Some(v), .. }) if pred(&v) => return v,
                Some(ev) => seen.push(format!("{ev:?}")),
                None => panic!("expected {what}; stream ended or timed out after {seen:?}"),
            }
        }
    }
}

fn is_sub(v: &Value, ch: &str) -> bool {
    v["channel"] == ch && v.get("subscribe").is_some()
}

fn is_pub(v: &Value, ch: &str) -> bool {
    v["channel"] == ch && v.get("pub").is_some()
}

#[tokio::test]
async fn sse_streams_every_channel_and_resumes_from_last_event_id() {
    let server = Server::start("").await;
    let tok = token_subs("17", &["user:17"], 3600);
    let mut s = Sse::open(&server, &format!("token={tok}&channel=room:1"), &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    let connected = s
        .expect("connected", |v| v.get("connected").is_some())
        .await;
    assert_eq!(connected["connected"]["transport"], "sse");
    assert_eq!(connected["connected"]["user"], "17");
    s.expect("user:17 subscribed", |v| is_sub(v, "user:17"))
        .await;
    s.expect("room:1 subscribed", |v| is_sub(v, "room:1")).await;
    server.publish("room:1", json!({"n": 1})).await;
    server.publish("user:17", json!({"notice": "due"})).await;
    let p = s.expect("room pub", |v| is_pub(v, "room:1")).await;
    assert_eq!(p["pub"]["data"]["n"], 1);
    s.expect("user pub", |v| is_pub(v, "user:17")).await;
    // Server-side subscription of the live stream (every device of user 17).
    let (status, _) = server
        .api(
            "/api/subscribe",
            json!({"user": "17", "channel": "room:desk"}),
        )
        .await;
    assert_eq!(status, 200);
    s.expect("room:desk subscribed", |v| is_sub(v, "room:desk"))
        .await;
    server.publish("room:desk", json!({"d": 1})).await;
    s.expect("room:desk pub", |v| is_pub(v, "room:desk")).await;
    let last = s.last_id.clone().expect("publications carry ids");
    drop(s);

    // Missed while away, on all three channels.
    server.publish("room:1", json!({"n": 2})).await;
    server.publish("room:1", json!({"n": 3})).await;
    server
        .publish("user:17", json!({"notice": "overdue"}))
        .await;
    server.publish("room:desk", json!({"d": 2})).await;

    let mut s = Sse::open(
        &server,
        &format!("token={tok}&channel=room:1"),
        &[("Last-Event-ID", &last)],
    )
    .await;
    let mut recovered = std::collections::BTreeMap::new();
    for ch in ["user:17", "room:1", "room:desk"] {
        let v = s.expect(ch, |v| is_sub(v, ch)).await;
        assert_eq!(v["subscribe"]["recovered"], true, "{v}");
        let pubs: Vec<Value> = v["subscribe"]["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["data"].clone())
            .collect();
        recovered.insert(ch, pubs);
    }
    assert_eq!(recovered["room:1"], vec![json!({"n": 2}), json!({"n": 3})]);
    assert_eq!(recovered["user:17"], vec![json!({"notice": "overdue"})]);
    assert_eq!(recovered["room:desk"], vec![json!({"d": 2})]);
    // And live again.
    server.publish("room:1", json!({"n": 4})).await;
    let p = s.expect("live", |v| is_pub(v, "room:1")).await;
    assert_eq!(p["pub"]["data"]["n"], 4);

    // `last_event_id` in the query does the same (a new EventSource has no header to send).
    let id = s.last_id.clone().unwrap();
    drop(s);
    server.publish("room:1", json!({"n": 5})).await;
    let mut s = Sse::open(
        &server,
        &format!(
            "token={tok}&channel=room:1&last_event_id={}",
            id.replace(';', "%3B").replace(':', "%3A")
        ),
        &[],
    )
    .await;
    let v = s.expect("room:1", |v| is_sub(v, "room:1")).await;
    assert_eq!(v["subscribe"]["publications"][0]["data"]["n"], 5, "{v}");
}

#[tokio::test]
async fn sse_refuses_bad_requests_with_http_errors() {
    let server = Server::start("").await;
    let s = Sse::open(&server, "token=garbage", &[]).await;
    assert_eq!(s.status, 401);
    assert_eq!(s.error_body().await["error"]["code"], 101);
    let s = Sse::open(
        &server,
        &format!("token={}", token_subs("1", &[], -10)),
        &[],
    )
    .await;
    assert_eq!(s.status, 401);
    assert_eq!(s.error_body().await["error"]["code"], 109);
    let s = Sse::open(&server, "channel=room:1", &[]).await;
    assert_eq!(s.status, 401, "no token, no proxy, no anonymous access");
    let status = http()
        .post(format!("{}/sse", server.public_url()))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 405);
}

#[tokio::test]
async fn sse_reports_a_refused_channel_and_keeps_the_others() {
    let server =
        Server::start("[auth]\nallowed_origins = [\"https://library.example.org\"]\n").await;
    let tok = token("ada", 3600, &[]);
    let mut s = Sse::open(
        &server,
        &format!("token={tok}&channel=user:bob&channel=room:1&channel=nope:1"),
        &[("Origin", "https://library.example.org")],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.header("access-control-allow-origin").as_deref(),
        Some("https://library.example.org")
    );
    assert_eq!(
        s.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let e = s
        .expect("error for user:bob", |v| {
            v["channel"] == "user:bob" && v.get("error").is_some()
        })
        .await;
    assert_eq!(e["error"]["code"], 103);
    s.expect("room:1", |v| is_sub(v, "room:1")).await;
    let e = s
        .expect("error for nope:1", |v| {
            v["channel"] == "nope:1" && v.get("error").is_some()
        })
        .await;
    assert_eq!(e["error"]["code"], 102);
    server.publish("room:1", json!({"ok": true})).await;
    s.expect("room pub", |v| is_pub(v, "room:1")).await;

    // Another site's page is refused before any stream opens.
    let s = Sse::open(
        &server,
        &format!("token={tok}&channel=room:1"),
        &[("Origin", "https://evil.example.com")],
    )
    .await;
    assert_eq!(s.status, 403);
}

#[tokio::test]
async fn sse_heartbeats_and_leaves_the_shard_when_the_client_goes() {
    let server = Server::start("[client]\nping_interval = \"1s\"\n").await;
    let tok = token("ada", 3600, &[]);
    let mut s = Sse::open(&server, &format!("token={tok}&channel=room:1"), &[]).await;
    let deadline = Instant::now() + SHORT;
    let mut heartbeat = false;
    while Instant::now() < deadline {
        if let Some(ev) = s.next(SHORT).await {
            if ev.comment {
                heartbeat = true;
                break;
            }
        }
    }
    assert!(heartbeat, "a heartbeat comment within ping_interval");
    assert_eq!(server.metric_value("ferrocast_sse_streams").await, 1.0);
    drop(s);
    assert!(
        eventually(SHORT, || async {
            server.metric_value("ferrocast_sse_streams").await == 0.0
                && server.metric_value("ferrocast_sockets").await == 0.0
        })
        .await,
        "a stream whose client left is removed"
    );
}

#[tokio::test]
async fn sse_drain_says_reconnect_elsewhere() {
    let mut server = Server::start("").await;
    let tok = token("ada", 3600, &[]);
    let mut s = Sse::open(&server, &format!("token={tok}&channel=room:1"), &[]).await;
    s.expect("room:1", |v| is_sub(v, "room:1")).await;
    server.sigterm();
    let d = s
        .expect("disconnect", |v| v.get("disconnect").is_some())
        .await;
    assert_eq!(d["disconnect"]["code"], 4010);
    assert_eq!(d["disconnect"]["reconnect"], true);
    assert!(s.next(SHORT).await.is_none(), "the stream ends after it");
    assert!(server.wait_exit(Duration::from_secs(10)).await.is_some());
}

#[tokio::test]
async fn sse_backend_disconnect_carries_the_backend_code() {
    let server = Server::start("").await;
    let tok = token("ada", 3600, &[]);
    let mut s = Sse::open(&server, &format!("token={tok}"), &[]).await;
    s.expect("connected", |v| v.get("connected").is_some())
        .await;
    let (status, _) = server
        .api(
            "/api/disconnect",
            json!({"user": "ada", "code": 4003, "reason": "banned"}),
        )
        .await;
    assert_eq!(status, 200);
    let d = s
        .expect("disconnect", |v| v.get("disconnect").is_some())
        .await;
    assert_eq!(
        d["disconnect"],
        json!({"code": 4003, "reason": "banned", "reconnect": false})
    );
}

#[tokio::test]
async fn sse_slow_reader_is_cut_off_without_holding_the_node() {
    let server =
        Server::start("[limits]\nmax_message_size = 4096\noutbound_queue_bytes = 65536\n").await;
    let tok = token("ada", 3600, &[]);
    // A reader that never reads, with a small receive buffer.
    let mut s = Sse::open_with(
        &server,
        &format!("token={tok}&channel=room:flood"),
        &[],
        Some(4096),
    )
    .await;
    s.expect("subscribed", |v| is_sub(v, "room:flood")).await;
    let big = "x".repeat(30_000);
    let mut cut = false;
    for _ in 0..400 {
        server.publish("room:flood", json!({ "pad": &big })).await;
        if server
            .metric_value("ferrocast_slow_consumer_closes_total")
            .await
            >= 1.0
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "the stream's queue passed outbound_queue_bytes");
    assert!(
        eventually(Duration::from_secs(6), || async {
            server.metric_value("ferrocast_sse_streams").await == 0.0
        })
        .await,
        "a closing stream whose client doesn't read is removed within seconds"
    );
    // The node is fine: a new stream works.
    let mut t = Sse::open(&server, &format!("token={tok}&channel=room:1"), &[]).await;
    t.expect("room:1", |v| is_sub(v, "room:1")).await;
}

/// A connect-proxy backend: user 42 with a server-side subscription when the cookie is good, 403
/// otherwise; it keeps the request bodies.
async fn proxy_backend() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/connect", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Some(request) = read_http_request(&mut sock).await else {
                    return;
                };
                let good = request.contains("sessionid=good");
                log.lock().unwrap().push(request);
                let (status, body) = if good {
                    ("200 OK", r#"{"user":"42","subs":["user:42"]}"#)
                } else {
                    ("403 Forbidden", "{}")
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn sse_cookie_sessions_go_through_the_connect_proxy() {
    let (url, seen) = proxy_backend().await;
    let server = Server::start(&format!("[auth]\nproxy_url = \"{url}\"\n")).await;
    let mut s = Sse::open(&server, "channel=room:1", &[("Cookie", "sessionid=good")]).await;
    assert_eq!(s.status, 200);
    let c = s
        .expect("connected", |v| v.get("connected").is_some())
        .await;
    assert_eq!(c["connected"]["user"], "42");
    s.expect("user:42 from the proxy's subs", |v| is_sub(v, "user:42"))
        .await;
    s.expect("room:1", |v| is_sub(v, "room:1")).await;
    {
        let requests = seen.lock().unwrap();
        assert!(
            requests[0].contains("\"transport\":\"sse\""),
            "{}",
            requests[0]
        );
        let client = c["connected"]["client"].as_str().unwrap();
        assert!(
            requests[0].contains(client),
            "the proxy is told the stream's client id {client}: {}",
            requests[0]
        );
    }
    let refused = Sse::open(&server, "channel=room:1", &[("Cookie", "sessionid=bad")]).await;
    assert_eq!(refused.status, 403);
}
