//! Webhooks (`[webhooks]`, docs/webhooks.md): the real binary POSTs to a real HTTP receiver
//! inside the test. Signature over the raw body, user_online / user_offline and
//! channel_occupied / channel_vacated once per transition with the delays absorbing reconnects,
//! client_publish, retries with the same event ids, a full queue that drops without touching
//! sockets, and the fleet: two nodes on a real Redis Cluster, and a SIGKILLed node whose user
//! goes offline after the presence TTL.

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis::Cluster;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const SECRET: &str = "webhook-test-secret";

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    body: Bytes,
    signature: String,
    status: u16,
}

/// A tiny HTTP server recording every request; answers follow `plan` (then 200), each after
/// `delay`.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Received>>>,
    plan: Arc<Mutex<VecDeque<u16>>>,
    delay: Arc<Mutex<Duration>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            log: Arc::default(),
            plan: Arc::default(),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
        };
        let me = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let me = me.clone();
                        async move {
                            let signature = req
                                .headers()
                                .get("x-ferrocast-signature")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let delay = *me.delay.lock().unwrap();
                            tokio::time::sleep(delay).await;
                            let status = me.plan.lock().unwrap().pop_front().unwrap_or(200);
                            me.log.lock().unwrap().push(Received {
                                body,
                                signature,
                                status,
                            });
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"{}")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        r
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/ferrocast", self.addr)
    }

    fn requests(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Every event of every request answered 2xx, in order.
    fn delivered(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(|r| {
                let v: Value = serde_json::from_slice(&r.body).expect("JSON body");
                v["events"].as_array().cloned().unwrap_or_default()
            })
            .collect()
    }

    /// Delivered events named `name` about `key` (a user or a channel).
    fn named(&self, name: &str, key: &str) -> Vec<Value> {
        self.delivered()
            .into_iter()
            .filter(|e| e["name"] == name && (e["user"] == key || e["channel"] == key))
            .collect()
    }

    async fn wait_for(&self, name: &str, key: &str, n: usize, timeout: Duration) {
        let ok = eventually(timeout, || async { self.named(name, key).len() >= n }).await;
        assert!(
            ok,
            "expected {n} × {name} for {key} within {timeout:?}; delivered: {:#?}",
            self.delivered()
        );
    }
}

fn webhooks_toml(r: &Receiver, extra: &str) -> String {
    format!(
        r#"
[webhooks]
url = "{}"
secret = "{SECRET}"
offline_delay = "1s"
vacate_delay = "1s"
batch_wait = "20ms"
{extra}
"#,
        r.url()
    )
}

fn cluster_toml(c: &Cluster) -> String {
    let urls: Vec<String> = c.urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[broker]\nkind = \"redis-cluster\"\nurls = [{}]\n\n[client]\npresence_ttl = \"3s\"\n",
        urls.join(", ")
    )
}

#[tokio::test]
async fn signed_user_events_once_per_transition_with_the_offline_delay() {
    let r = Receiver::start().await;
    let server = Server::start(&webhooks_toml(&r, "")).await;

    // Two tabs of one user: one user_online.
    let tab1 = server.connect("17").await;
    let tab2 = server.connect("17").await;
    r.wait_for("user_online", "17", 1, SHORT).await;

    // The signature covers the raw body; the body is the documented shape.
    let req = r.requests()[0].clone();
    let hex = req
        .signature
        .strip_prefix("sha256=")
        .unwrap_or_else(|| panic!("signature header {:?}", req.signature));
    assert_eq!(hex.len(), 64);
    assert!(hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let tag: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    ring::hmac::verify(&key, &req.body, &tag).expect("signature verifies over the raw body");
    let wrong = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"another secret");
    assert!(ring::hmac::verify(&wrong, &req.body, &tag).is_err());
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    let now_ms = now_secs() * 1000;
    assert!(
        (body["time_ms"].as_i64().unwrap() - now_ms).abs() < 60_000,
        "{body}"
    );
    assert_eq!(body["node"], NODE_NAME);
    let ev = &body["events"][0];
    assert_eq!(ev["name"], "user_online");
    assert_eq!(ev["user"], "17");
    assert!(ev["id"].as_str().is_some_and(|s| !s.is_empty()), "{ev}");
    assert!(ev["time_ms"].as_i64().is_some(), "{ev}");

    // One tab closes: the user is still online.
    tab1.close().await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(
        r.named("user_offline", "17").is_empty(),
        "a tab is still open"
    );
    // The last one: offline after the delay, once.
    let closed = Instant::now();
    tab2.close().await;
    r.wait_for("user_offline", "17", 1, Duration::from_secs(5))
        .await;
    assert!(
        closed.elapsed() >= Duration::from_millis(900),
        "offline_delay respected: {:?}",
        closed.elapsed()
    );

    // A reconnect within the delay: neither offline nor a second online.
    let c = server.connect("ada").await;
    r.wait_for("user_online", "ada", 1, SHORT).await;
    c.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = server.connect("ada").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(r.named("user_offline", "ada").is_empty(), "flap absorbed");
    assert_eq!(r.named("user_online", "ada").len(), 1, "no second online");
    c.close().await;
    r.wait_for("user_offline", "ada", 1, Duration::from_secs(5))
        .await;

    // Anonymous connections and other users' events don't mix in; each transition once.
    assert_eq!(r.named("user_online", "17").len(), 1);
    assert_eq!(r.named("user_offline", "17").len(), 1);
    let m = server.metrics().await;
    assert!(
        metric_in(
            &m,
            "ferrocast_webhook_events_total{event=\"user_online\",result=\"sent\"}"
        ) >= 2.0
    );
    assert_eq!(
        metric_in(&m, "ferrocast_webhook_events_total{result=\"dropped\"}"),
        0.0
    );
}

#[tokio::test]
async fn channel_events_and_client_publish() {
    let r = Receiver::start().await;
    let events = r#"events = ["channel_occupied", "channel_vacated", "client_publish"]"#;
    let server = Server::start(&webhooks_toml(&r, events)).await;

    let mut a = server.connect("1").await;
    let mut b = server.connect("2").await;
    a.subscribe(1, "room:9").await;
    b.subscribe(1, "room:9").await;
    r.wait_for("channel_occupied", "room:9", 1, SHORT).await;

    // client_publish carries the client's data as it was sent.
    a.ok(
        2,
        json!({"publish": {"channel": "room:9", "data": {"text": "hi", "n": [1, 2]}}}),
    )
    .await;
    r.wait_for("client_publish", "room:9", 1, SHORT).await;
    let p = &r.named("client_publish", "room:9")[0];
    assert_eq!(p["user"], "1");
    assert_eq!(p["data"], json!({"text": "hi", "n": [1, 2]}));
    assert!(
        p["client"]
            .as_str()
            .is_some_and(|c| c == a.connected["client"]),
        "{p}"
    );

    // One subscriber leaves: still occupied. The last one: vacated after the delay.
    a.ok(3, json!({"unsubscribe": {"channel": "room:9"}})).await;
    b.ok(2, json!({"unsubscribe": {"channel": "room:9"}})).await;
    // ...unless someone subscribes again meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.subscribe(4, "room:9").await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        r.named("channel_vacated", "room:9").is_empty(),
        "re-join cancels it"
    );
    assert_eq!(r.named("channel_occupied", "room:9").len(), 1);
    a.close().await;
    r.wait_for("channel_vacated", "room:9", 1, Duration::from_secs(5))
        .await;
    assert_eq!(r.named("channel_vacated", "room:9").len(), 1);
    // No user events: they were not listed.
    assert!(r
        .delivered()
        .iter()
        .all(|e| !e["name"].as_str().unwrap().starts_with("user_")));
    b.close().await;
}

#[tokio::test]
async fn failed_requests_are_retried_with_the_same_event_ids() {
    let r = Receiver::start().await;
    r.plan.lock().unwrap().extend([500, 500]);
    let server = Server::start(&webhooks_toml(&r, "")).await;
    let c = server.connect("retry-me").await;
    r.wait_for("user_online", "retry-me", 1, Duration::from_secs(10))
        .await;
    let reqs = r.requests();
    assert_eq!(
        reqs.iter().map(|q| q.status).collect::<Vec<_>>(),
        vec![500, 500, 200]
    );
    let ids = |q: &Received| -> Vec<String> {
        let v: Value = serde_json::from_slice(&q.body).unwrap();
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&reqs[0]), ids(&reqs[1]), "the same batch again");
    assert_eq!(ids(&reqs[0]), ids(&reqs[2]));
    let m = server.metrics().await;
    assert_eq!(metric_in(&m, "ferrocast_webhook_retries_total"), 2.0);
    assert_eq!(
        metric_in(&m, "ferrocast_webhook_requests_total{result=\"status\"}"),
        2.0
    );
    assert_eq!(
        metric_in(&m, "ferrocast_webhook_requests_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        metric_in(
            &m,
            "ferrocast_webhook_events_total{event=\"user_online\",result=\"sent\"}"
        ),
        1.0
    );
    c.close().await;
}

#[tokio::test]
async fn a_full_queue_drops_events_and_sockets_carry_on() {
    let r = Receiver::start().await;
    // The receiver hangs: the first batch waits for its timeout, the queue (2) fills.
    *r.delay.lock().unwrap() = Duration::from_secs(30);
    let extra = r#"events = ["client_publish"]
batch_max = 1
queue_size = 2
timeout = "20s"
max_retries = 0"#;
    let server = Server::start(&webhooks_toml(&r, extra)).await;
    let mut c = server.connect("1").await;
    c.subscribe(1, "chat:x").await;
    let started = Instant::now();
    for i in 0..30 {
        c.ok(
            10 + i,
            json!({"publish": {"channel": "chat:x", "data": {"i": i}}}),
        )
        .await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "publishes were held up: {:?}",
        started.elapsed()
    );
    let dropped = server
        .wait_metric(
            "ferrocast_webhook_events_total{event=\"client_publish\",result=\"dropped\"}",
            |v| v >= 25.0,
            SHORT,
        )
        .await;
    assert!(dropped <= 29.0, "{dropped}");
    let queued = server.metric_value("ferrocast_webhook_queue").await;
    assert!((1.0..=2.0).contains(&queued), "queue gauge {queued}");
    // The socket still works.
    c.ok(99, json!({"ping": {}})).await;
}

#[tokio::test]
async fn fleet_wide_on_a_redis_cluster_and_a_crashed_node_goes_offline() {
    let cluster = Cluster::start();
    let r = Receiver::start().await;
    let toml = format!("{}\n{}", cluster_toml(&cluster), webhooks_toml(&r, ""));
    let a = Server::start(&toml).await;
    let mut b = Server::start(&toml).await;

    // One user with a connection on each node: one online for the fleet.
    let on_a = a.connect("ada").await;
    let on_b = b.connect("ada").await;
    let mut sa = a.connect("x1").await;
    let mut sb = b.connect("x2").await;
    sa.subscribe(1, "room:fleet").await;
    sb.subscribe(1, "room:fleet").await;
    r.wait_for("user_online", "ada", 1, SHORT).await;
    r.wait_for("channel_occupied", "room:fleet", 1, SHORT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        r.named("user_online", "ada").len(),
        1,
        "one online across nodes"
    );
    assert_eq!(r.named("channel_occupied", "room:fleet").len(), 1);

    // The connection on A closes: B still holds the user.
    on_a.close().await;
    sa.ok(2, json!({"unsubscribe": {"channel": "room:fleet"}}))
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(r.named("user_offline", "ada").is_empty(), "still on B");
    assert!(
        r.named("channel_vacated", "room:fleet").is_empty(),
        "still on B"
    );
    // The last one, on B: offline once.
    on_b.close().await;
    sb.ok(2, json!({"unsubscribe": {"channel": "room:fleet"}}))
        .await;
    r.wait_for("user_offline", "ada", 1, Duration::from_secs(5))
        .await;
    r.wait_for("channel_vacated", "room:fleet", 1, Duration::from_secs(5))
        .await;

    // A node dies holding a user's only connection (and a channel's only subscriber): the
    // survivor reports them after the presence TTL (3 s) and its sweep.
    let mut lone = b.connect("grace").await;
    lone.subscribe(1, "room:lone").await;
    r.wait_for("user_online", "grace", 1, SHORT).await;
    r.wait_for("channel_occupied", "room:lone", 1, SHORT).await;
    // SAFETY: kill(2) on the pid of a child the harness spawned.
    assert_eq!(unsafe { libc::kill(b.pid(), libc::SIGKILL) }, 0);
    let killed = Instant::now();
    assert!(b.wait_exit(Duration::from_secs(5)).await.is_some());
    r.wait_for("user_offline", "grace", 1, Duration::from_secs(10))
        .await;
    r.wait_for("channel_vacated", "room:lone", 1, Duration::from_secs(5))
        .await;
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "offline within presence_ttl + sweep: {:?}",
        killed.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Exactly once each, fleet-wide.
    for (name, key) in [
        ("user_online", "ada"),
        ("user_offline", "ada"),
        ("user_online", "grace"),
        ("user_offline", "grace"),
        ("channel_vacated", "room:fleet"),
        ("channel_vacated", "room:lone"),
    ] {
        assert_eq!(
            r.named(name, key).len(),
            1,
            "{name} {key}: {:#?}",
            r.delivered()
        );
    }
    // The survivor's users are unaffected.
    sa.ok(3, json!({"ping": {}})).await;
    drop(lone);
}
