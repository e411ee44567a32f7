//! The webhook sender: a bounded queue of events (full = the event is dropped and counted; a
//! shard never waits), one task that batches them (up to `batch_max`, waiting at most
//! `batch_wait` for more), signs each request body with HMAC-SHA256 and POSTs it, retrying the
//! same batch (same event ids) with exponential backoff and jitter up to `max_retries` times.
//!
//! One sender per destination ([`Target`]): ferrocast's own `[webhooks]` (ferrocast's body and
//! `X-Ferrocast-Signature`), and each Pusher app with a `webhook_url` (Pusher's body,
//! `X-Pusher-Key` and `X-Pusher-Signature`). Each has its own queue; batching, retries and
//! metrics are the same.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::config::WebhooksConfig;
use crate::metrics::metrics;

/// The signature header: `sha256=<lowercase hex HMAC-SHA256(secret, raw body)>`.
pub const SIGNATURE_HEADER: &str = "x-ferrocast-signature";

/// Pusher's headers: the app key, and the lowercase hex HMAC-SHA256(app secret, raw body).
pub const PUSHER_KEY_HEADER: &str = "x-pusher-key";
pub const PUSHER_SIGNATURE_HEADER: &str = "x-pusher-signature";

/// A destination's body format and signer.
#[derive(Debug, Clone)]
pub enum Format {
    /// `{"time_ms","node","events"}`, `X-Ferrocast-Signature: sha256=<hex>`.
    Ferrocast { node: String, secret: String },
    /// `{"time_ms","events"}`, `X-Pusher-Key`, `X-Pusher-Signature: <hex>`.
    Pusher { key: String, secret: String },
}

/// Where a sender POSTs, and how.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub format: Format,
}

/// First retry after about this long (doubling per attempt, with jitter).
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One event as it goes out: its name (for the metrics) and its JSON object.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: &'static str,
    pub json: String,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Makes events with ids unique across the fleet: a random per-process prefix and a sequence.
pub struct EventFactory {
    prefix: String,
    seq: AtomicU64,
}

impl Default for EventFactory {
    fn default() -> Self {
        use rand::Rng;
        EventFactory {
            prefix: format!("{:016x}", rand::thread_rng().gen::<u64>()),
            seq: AtomicU64::new(1),
        }
    }
}

impl EventFactory {
    fn head(&self, name: &str) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{{\"id\":\"{}-{seq}\",\"name\":\"{name}\"", self.prefix)
    }

    /// `user_online` / `user_offline`.
    pub fn user(&self, name: &'static str, user: &str) -> Event {
        Event {
            name,
            json: format!(
                "{},\"user\":{},\"time_ms\":{}}}",
                self.head(name),
                json_str(user),
                unix_ms()
            ),
        }
    }

    /// `channel_occupied` / `channel_vacated`.
    pub fn channel(&self, name: &'static str, channel: &str) -> Event {
        Event {
            name,
            json: format!(
                "{},\"channel\":{},\"time_ms\":{}}}",
                self.head(name),
                json_str(channel),
                unix_ms()
            ),
        }
    }

    /// `client_publish`; `data` is the client's JSON, passed through as it came.
    pub fn publish(&self, channel: &str, user: &str, client: &str, data: &[u8]) -> Event {
        let data = std::str::from_utf8(data).unwrap_or("null");
        Event {
            name: "client_publish",
            json: format!(
                "{},\"channel\":{},\"user\":{},\"client\":{},\"data\":{data},\"time_ms\":{}}}",
                self.head("client_publish"),
                json_str(channel),
                json_str(user),
                json_str(client),
                unix_ms()
            ),
        }
    }
}

/// Pusher's webhook events (`{"name", "channel", …}`, no id: Pusher's format has none).
pub mod pusher {
    use super::{json_str, Event};

    /// `channel_occupied` / `channel_vacated`.
    pub fn channel(name: &'static str, channel: &str) -> Event {
        Event {
            name,
            json: format!("{{\"name\":\"{name}\",\"channel\":{}}}", json_str(channel)),
        }
    }

    /// `member_added` / `member_removed`.
    pub fn member(name: &'static str, channel: &str, user_id: &str) -> Event {
        Event {
            name,
            json: format!(
                "{{\"name\":\"{name}\",\"channel\":{},\"user_id\":{}}}",
                json_str(channel),
                json_str(user_id)
            ),
        }
    }

    /// `client_event`; `data` is the client's JSON: a string stays that string, anything else
    /// is sent as its JSON text (Pusher's event data is a string).
    pub fn client_event(
        channel: &str,
        event: &str,
        data: &str,
        socket_id: &str,
        user_id: Option<&str>,
    ) -> Event {
        let data = if data.trim_start().starts_with('"') {
            data.trim().to_string()
        } else {
            json_str(data.trim())
        };
        let user = user_id
            .map(|u| format!(",\"user_id\":{}", json_str(u)))
            .unwrap_or_default();
        Event {
            name: "client_event",
            json: format!(
                "{{\"name\":\"client_event\",\"channel\":{},\"event\":{},\"data\":{data},\"socket_id\":{}{user}}}",
                json_str(channel),
                json_str(event),
                json_str(socket_id)
            ),
        }
    }
}

/// The request body of a batch, stamped `time_ms` (receivers refuse stale bodies: replay).
pub fn body(time_ms: u64, node: &str, events: &[Event]) -> String {
    body_for(time_ms, &format!("\"node\":{},", json_str(node)), events)
}

/// Pusher's body: `{"time_ms": …, "events": […]}`.
pub fn pusher_body(time_ms: u64, events: &[Event]) -> String {
    body_for(time_ms, "", events)
}

fn body_for(time_ms: u64, extra: &str, events: &[Event]) -> String {
    let mut out = format!("{{\"time_ms\":{time_ms},{extra}\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&e.json);
    }
    out.push_str("]}");
    out
}

/// `sha256=<lowercase hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hmac_hex(secret, body))
}

/// Lowercase hex HMAC-SHA256(secret, body) (`X-Pusher-Signature`).
pub fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, body);
    let mut out = String::with_capacity(64);
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Where events are queued; cheap to clone, never blocks.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<Event>,
}

impl Queue {
    /// Queues `event`, or drops and counts it when the queue is full.
    pub fn push(&self, event: Event) {
        let name = event.name;
        if self.tx.try_send(event).is_err() {
            metrics()
                .webhook_events
                .with_label_values(&[name, "dropped"])
                .inc();
        }
        self.report();
    }

    fn report(&self) {
        let len = self.tx.max_capacity() - self.tx.capacity();
        metrics().webhook_queue.set(len as i64);
    }

    pub fn is_empty(&self) -> bool {
        self.tx.capacity() == self.tx.max_capacity()
    }
}

/// Starts the sender task of `target` on the current runtime (batching, retries and queue size
/// from `config`).
pub fn start(config: &WebhooksConfig, target: Target) -> (Queue, Arc<InFlight>) {
    let (tx, rx) = mpsc::channel(config.queue_size.max(1));
    let queue = Queue { tx };
    let in_flight = Arc::new(InFlight::default());
    tokio::spawn(run(
        config.clone(),
        target,
        rx,
        queue.clone(),
        in_flight.clone(),
    ));
    (queue, in_flight)
}

/// Whether a batch is being delivered (drain waits for it).
#[derive(Default)]
pub struct InFlight(std::sync::atomic::AtomicBool);

impl InFlight {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

async fn run(
    config: WebhooksConfig,
    target: Target,
    mut rx: mpsc::Receiver<Event>,
    queue: Queue,
    in_flight: Arc<InFlight>,
) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let max = config.batch_max.max(1);
    let mut batch: Vec<Event> = Vec::with_capacity(max);
    loop {
        if rx.recv_many(&mut batch, max).await == 0 {
            return;
        }
        in_flight.0.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + config.batch_wait.0;
        while batch.len() < max {
            let room = max - batch.len();
            tokio::select! {
                n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        queue.report();
        deliver(&client, &config, &target, &batch).await;
        batch.clear();
        in_flight.0.store(false, Ordering::Relaxed);
    }
}

/// Why an attempt failed.
#[derive(Debug, PartialEq)]
enum Failure {
    Status(u16),
    Timeout,
    Error,
}

async fn deliver(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    config: &WebhooksConfig,
    target: &Target,
    batch: &[Event],
) {
    let m = metrics();
    let mut attempt = 0;
    loop {
        let started = Instant::now();
        let outcome = post(client, config, target, batch).await;
        m.webhook_duration.observe(started.elapsed().as_secs_f64());
        let label = match &outcome {
            Ok(()) => "ok",
            Err(Failure::Status(_)) => "status",
            Err(Failure::Timeout) => "timeout",
            Err(Failure::Error) => "error",
        };
        m.webhook_requests.with_label_values(&[label]).inc();
        match outcome {
            Ok(()) => {
                count(batch, "sent");
                return;
            }
            Err(why) if attempt >= config.max_retries => {
                tracing::warn!(url = %target.url, ?why, events = batch.len(), attempts = attempt + 1, "webhook failed; events dropped");
                count(batch, "failed");
                return;
            }
            Err(why) => {
                tracing::debug!(url = %target.url, ?why, attempt, "webhook failed; retrying");
                m.webhook_retries.inc();
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

fn count(batch: &[Event], result: &str) {
    let m = &metrics().webhook_events;
    for e in batch {
        m.with_label_values(&[e.name, result]).inc();
    }
}

/// Exponential, capped, with jitter (between half and all of the step).
fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let step = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    let half = step / 2;
    half + half.mul_f64(rand::thread_rng().gen::<f64>())
}

async fn post(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    config: &WebhooksConfig,
    target: &Target,
    batch: &[Event],
) -> Result<(), Failure> {
    // Stamped per attempt: a retry minutes later must not look like a replay.
    let mut req = hyper::Request::post(target.url.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json");
    let body = match &target.format {
        Format::Ferrocast { node, secret } => {
            let body = body(unix_ms(), node, batch);
            req = req.header(
                SIGNATURE_HEADER,
                signature(secret.as_bytes(), body.as_bytes()),
            );
            body
        }
        Format::Pusher { key, secret } => {
            let body = pusher_body(unix_ms(), batch);
            req = req.header(PUSHER_KEY_HEADER, key.as_str()).header(
                PUSHER_SIGNATURE_HEADER,
                hmac_hex(secret.as_bytes(), body.as_bytes()),
            );
            body
        }
    };
    let req = req
        .header(
            hyper::header::USER_AGENT,
            concat!("ferrocast/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| Failure::Error)?;
    let exchange = async {
        let res = client.request(req).await.map_err(|_| Failure::Error)?;
        let status = res.status();
        // Read the answer to the end so the connection can be reused.
        let _ = res.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(Failure::Status(status.as_u16()))
        }
    };
    tokio::time::timeout(config.timeout.0, exchange)
        .await
        .map_err(|_| Failure::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bodies_are_json_in_the_documented_shape() {
        let f = EventFactory::default();
        let events = vec![
            f.user("user_online", "17"),
            f.channel("channel_vacated", "room:42"),
            f.publish("room:42", "17", "c-1", br#"{"text":"hi \"there\""}"#),
            f.user("user_offline", "a\"b"),
        ];
        let b = body(1_764_960_000_000, "node-1", &events);
        let v: serde_json::Value = serde_json::from_str(&b).expect("valid JSON");
        assert_eq!(v["time_ms"], 1_764_960_000_000u64);
        assert_eq!(v["node"], "node-1");
        let evs = v["events"].as_array().unwrap();
        assert_eq!(evs.len(), 4);
        assert_eq!(evs[0]["name"], "user_online");
        assert_eq!(evs[0]["user"], "17");
        assert!(evs[0]["time_ms"].as_u64().unwrap() > 1_700_000_000_000);
        assert_eq!(evs[1]["channel"], "room:42");
        assert_eq!(evs[2]["data"]["text"], "hi \"there\"");
        assert_eq!(evs[2]["client"], "c-1");
        assert_eq!(evs[3]["user"], "a\"b");
        let ids: std::collections::HashSet<&str> =
            evs.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 4, "ids are unique");
        assert_eq!(body(1, "n", &[]), r#"{"time_ms":1,"node":"n","events":[]}"#);
    }

    #[test]
    fn pusher_bodies_are_in_pushers_shape() {
        let events = vec![
            pusher::channel("channel_occupied", "presence-room"),
            pusher::member("member_added", "presence-room", "u\"1"),
            pusher::client_event("private-a", "client-x", r#"{"x":1}"#, "1.2", None),
            pusher::client_event("presence-r", "client-y", r#""text""#, "1.3", Some("u1")),
        ];
        let b = pusher_body(1_764_960_000_000, &events);
        let v: serde_json::Value = serde_json::from_str(&b).expect("valid JSON");
        assert_eq!(
            v,
            serde_json::json!({"time_ms": 1_764_960_000_000u64, "events": [
                {"name": "channel_occupied", "channel": "presence-room"},
                {"name": "member_added", "channel": "presence-room", "user_id": "u\"1"},
                {"name": "client_event", "channel": "private-a", "event": "client-x",
                 "data": "{\"x\":1}", "socket_id": "1.2"},
                {"name": "client_event", "channel": "presence-r", "event": "client-y",
                 "data": "text", "socket_id": "1.3", "user_id": "u1"},
            ]})
        );
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            let step = BACKOFF_BASE
                .saturating_mul(1u32 << attempt.min(16))
                .min(BACKOFF_MAX);
            assert!(d >= step / 2 && d <= step, "{attempt}: {d:?}");
        }
        assert!(backoff(30) <= BACKOFF_MAX);
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_waiting() {
        let (tx, _rx) = mpsc::channel(2);
        let q = Queue { tx };
        let f = EventFactory::default();
        let dropped = || {
            metrics()
                .webhook_events
                .with_label_values(&["user_online", "dropped"])
                .get()
        };
        let before = dropped();
        for _ in 0..5 {
            q.push(f.user("user_online", "17"));
        }
        assert!(dropped() >= before + 3);
        assert!(!q.is_empty());
    }
}
