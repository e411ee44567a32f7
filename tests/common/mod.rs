//! The one shared harness of the integration tests: it starts the real `ferrocast` binary on free
//! loopback ports with a temporary config file, and talks to it over real sockets (WebSocket
//! clients, the HTTP server API, the admin listener).
//!
//! Every wait is a poll with a deadline, never a fixed long sleep, so a test is as fast as the
//! server allows and fails with a message (and the server's log) instead of hanging.

// Each test binary includes this module and uses only part of it.
#![allow(dead_code)]

pub mod redis;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// HS256 secret of every test server's client tokens.
pub const TOKEN_SECRET: &str = "test-token-secret";
/// Server API key of every test server.
pub const API_KEY: &str = "test-api-key";
/// `node.name` of every test server.
pub const NODE_NAME: &str = "test-node";

/// How long a command waits for its reply by default.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test waits for something that should arrive promptly.
pub const SHORT: Duration = Duration::from_secs(3);
/// How long a test listens to conclude that nothing arrives.
pub const QUIET: Duration = Duration::from_millis(300);

/// The config every test server starts from; `Server::start`'s `extra_toml` is merged over it
/// (tables merge key by key, so `[auth]\ntimeout = "1s"` keeps the secret).
fn base_config(public: u16, admin: u16) -> String {
    format!(
        r#"
[listen]
public = "127.0.0.1:{public}"
admin = "127.0.0.1:{admin}"
shards = 2

[node]
name = "{NODE_NAME}"

[auth]
token_secret = "{TOKEN_SECRET}"

[api]
key = "{API_KEY}"

[broker]
kind = "memory"

[shutdown]
drain_seconds = 1

# Chat rooms: everything on, with history.
[namespaces.room]
publish = true
presence = true
join_leave = true
history_size = 100
history_ttl = "1h"

# Client publish only: no presence, no join/leave, no history.
[namespaces.chat]
publish = true
presence = false
join_leave = false
history_size = 0

# Read-only for clients: the backend publishes, clients may not.
[namespaces.news]
publish = false
presence = false
join_leave = false
history_size = 0
"#
    )
}

/// A loopback port that was free a moment ago (bound, read, released).
pub fn free_port() -> u16 {
    let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// A fresh path in the temp dir, unique across the tests of every test binary running at once.
pub fn temp_path(stem: &str, ext: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::env::temp_dir().join(format!(
        "ferrocast-test-{stem}-{}-{n}-{nanos}.{ext}",
        std::process::id()
    ))
}

/// Merges `extra` into `base`: tables recursively, any other value replaces.
fn merge_toml(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge_toml(b, e),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The effective test config: the base config with `extra_toml` merged over it.
pub fn config_text(public: u16, admin: u16, extra_toml: &str) -> String {
    let mut table: toml::Table = base_config(public, admin)
        .parse()
        .expect("base config parses");
    let extra: toml::Table = extra_toml
        .parse()
        .unwrap_or_else(|e| panic!("extra_toml does not parse: {e}\n{extra_toml}"));
    merge_toml(&mut table, extra);
    toml::to_string(&table).expect("config serializes")
}

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferrocast")
}

/// An HTTP client that never goes through a proxy from the environment.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

/// A running `ferrocast serve`, killed (SIGKILL) on drop unless it already exited.
pub struct Server {
    child: Child,
    pub public_port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// The key `api()` sends; a test that overrides `api.key` sets it here.
    pub api_key: String,
    http: reqwest::Client,
    exit: Option<ExitStatus>,
}

impl Server {
    /// Starts a server on the base config with `extra_toml` merged over it, waiting until its
    /// admin `/health/ready` answers 200 (10 s at most).
    pub async fn start(extra_toml: &str) -> Server {
        Server::start_with(extra_toml, &[], &[]).await
    }

    /// Like `start`, with extra environment variables and extra arguments after `serve --config F`.
    pub async fn start_with(extra_toml: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
        let mut last_log = String::new();
        // A port found free may be taken by another test before the server binds it: retry then.
        for _attempt in 0..3 {
            let (public_port, admin_port) = loop {
                let (a, b) = (free_port(), free_port());
                if a != b {
                    break (a, b);
                }
            };
            let config_path = temp_path("config", "toml");
            std::fs::write(
                &config_path,
                config_text(public_port, admin_port, extra_toml),
            )
            .expect("write config");
            let log_path = temp_path("server", "log");
            let log = File::create(&log_path).expect("create log");
            let mut cmd = Command::new(bin());
            cmd.arg("serve")
                .arg("--config")
                .arg(&config_path)
                .args(args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "info");
            }
            for (k, v) in env {
                cmd.env(k, v);
            }
            let child = cmd.spawn().expect("spawn ferrocast");
            let mut server = Server {
                child,
                public_port,
                admin_port,
                config_path,
                log_path,
                api_key: API_KEY.to_string(),
                http: http(),
                exit: None,
            };
            match server.wait_ready(Duration::from_secs(10)).await {
                Ok(()) => return server,
                Err(why) => {
                    last_log = format!("{why}\n--- server log ---\n{}", server.log());
                    // "Address already in use (os error 98)" from the bind.
                    let log = last_log.to_lowercase();
                    let in_use = log.contains("already in use")
                        || log.contains("address in use")
                        || log.contains("addrinuse");
                    if !in_use {
                        break;
                    }
                }
            }
        }
        panic!("ferrocast did not become ready: {last_log}");
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/health/ready", self.admin_url());
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exit = Some(status);
                return Err(format!("server exited before ready: {status}"));
            }
            if let Ok(resp) = self
                .http
                .get(&url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
            {
                if resp.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{url} not 200 within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// What the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn public_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.public_port)
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// `ws://…/ws`, with `?token=` when given.
    pub fn ws_url(&self, token: Option<&str>) -> String {
        match token {
            Some(t) => format!("ws://127.0.0.1:{}/ws?token={t}", self.public_port),
            None => format!("ws://127.0.0.1:{}/ws", self.public_port),
        }
    }

    /// A client authenticated as `user` through `?token=` (1 h token, no extra channels), after
    /// its `connected` push (kept in `Client::connected`).
    pub async fn connect(&self, user: &str) -> Client {
        self.connect_token(&token(user, 3600, &[])).await
    }

    /// A client authenticated with `token` through `?token=`, after its `connected` push.
    pub async fn connect_token(&self, token: &str) -> Client {
        let mut client = ws_connect(&self.ws_url(Some(token))).await;
        let push = client.recv_json(SHORT).await;
        assert!(
            push.get("connected").is_some(),
            "expected a `connected` push after upgrade with ?token=, got {push}"
        );
        client.connected = push["connected"].clone();
        client
    }

    /// POST `/api/<path>` (path with or without the `/api/` prefix) with the server's API key.
    pub async fn api(&self, path: &str, body: Value) -> (u16, Value) {
        let auth = format!("apikey {}", self.api_key);
        self.api_raw(path, &body.to_string(), Some(&auth)).await
    }

    /// POST a raw body to an API path with the given `Authorization` header (or none).
    /// The answer's body is parsed as JSON (`Value::Null` when empty, a string when not JSON).
    pub async fn api_raw(
        &self,
        path: &str,
        body: &str,
        authorization: Option<&str>,
    ) -> (u16, Value) {
        let path = path.trim_start_matches('/');
        let path = path.strip_prefix("api/").unwrap_or(path);
        let url = format!("{}/api/{path}", self.public_url());
        let mut req = self
            .http
            .post(&url)
            .header("Content-Type", "application/json")
            .body(body.to_string());
        if let Some(auth) = authorization {
            req = req.header("Authorization", auth);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    /// Publishes through the API and returns its answer, asserting a 200.
    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        let (status, body) = self
            .api("publish", json!({"channel": channel, "data": data}))
            .await;
        assert_eq!(status, 200, "POST /api/publish to {channel}: {body}");
        body
    }

    /// GET on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let url = format!("{}{path}", self.admin_url());
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    }

    /// Status of a GET on the admin listener, None when it does not answer (within 500 ms).
    pub async fn try_admin_status(&self, path: &str) -> Option<u16> {
        let resp = self
            .http
            .get(format!("{}{path}", self.admin_url()))
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .ok()?;
        Some(resp.status().as_u16())
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics");
        body
    }

    /// The value of a series in `/metrics`: `query` is a name with optional labels, such as
    /// `ferrocast_disconnects_total{code="4005"}`. Every series with that name whose labels include
    /// the given ones is summed (so `ferrocast_sockets` sums the shards); absent = 0.
    pub async fn metric_value(&self, query: &str) -> f64 {
        metric_in(&self.metrics().await, query)
    }

    /// Polls `metric_value(query)` until `ok` holds (then returns it) or `timeout` passes (panics).
    pub async fn wait_metric(
        &self,
        query: &str,
        ok: impl Fn(f64) -> bool,
        timeout: Duration,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.metrics().await;
            let v = metric_in(&text, query);
            if ok(v) {
                return v;
            }
            if Instant::now() > deadline {
                let related: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with(query.split('{').next().unwrap()))
                    .collect();
                panic!(
                    "metric {query} = {v} did not reach the expected value within {timeout:?}; \
                     series with that name:\n{}",
                    related.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM to the server process.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM)");
    }

    /// Waits for the process to exit; None if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit {
                return Some(status);
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exit = Some(status);
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.config_path);
        if std::thread::panicking() {
            eprintln!(
                "--- ferrocast log ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// Sum of the series of `text` (Prometheus exposition) matching `query` (see `metric_value`).
pub fn metric_in(text: &str, query: &str) -> f64 {
    let (qname, qlabels) = parse_series(query);
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = parse_series(series.trim());
        if name != qname {
            continue;
        }
        if qlabels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            sum += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// `name{a="1",b="2"}` → (name, {a: 1, b: 2}). Label values in tests never hold `,` or `"`.
fn parse_series(series: &str) -> (String, BTreeMap<String, String>) {
    let mut labels = BTreeMap::new();
    let Some((name, rest)) = series.split_once('{') else {
        return (series.to_string(), labels);
    };
    for pair in rest.trim_end_matches('}').split(',') {
        if let Some((k, v)) = pair.split_once('=') {
            labels.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    (name.to_string(), labels)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A client token for `user`, valid `ttl_secs` from now (negative: already expired), HS256 with
/// the test secret, with `channels` as its extra channels when not empty.
pub fn token(user: &str, ttl_secs: i64, channels: &[&str]) -> String {
    token_full(TOKEN_SECRET, user, ttl_secs, channels, None)
}

/// A token with an `info` claim (shown in presence).
pub fn token_with_info(user: &str, info: Value) -> String {
    token_full(TOKEN_SECRET, user, 3600, &[], Some(info))
}

/// A token with every knob: secret, user, ttl, channels, info.
pub fn token_full(
    secret: &str,
    user: &str,
    ttl_secs: i64,
    channels: &[&str],
    info: Option<Value>,
) -> String {
    let mut claims = json!({"sub": user, "exp": now_secs() + ttl_secs});
    if !channels.is_empty() {
        claims["channels"] = json!(channels);
    }
    if let Some(info) = info {
        claims["info"] = info;
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

pub type Ws = WebSocketStream<TcpStream>;

/// A WebSocket client connected to `url` (a `ws://` URL, token in it or not).
pub async fn ws_connect(url: &str) -> Client {
    ws_connect_with(url, &[], None).await
}

/// Connects with extra request headers (e.g. `Cookie`) and optionally a small TCP receive buffer
/// (a reader that falls behind fills it quickly: the slow-consumer test).
pub async fn ws_connect_with(
    url: &str,
    headers: &[(&str, &str)],
    recv_buffer: Option<u32>,
) -> Client {
    try_ws_connect_with(url, headers, recv_buffer)
        .await
        .unwrap_or_else(|e| panic!("WebSocket connect to {url}: {e}"))
}

/// Like `ws_connect_with`, returning the error of a refused upgrade instead of panicking.
pub async fn try_ws_connect_with(
    url: &str,
    headers: &[(&str, &str)],
    recv_buffer: Option<u32>,
) -> Result<Client, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let authority = request.uri().authority().unwrap().to_string();
    let addr: std::net::SocketAddr = tokio::net::lookup_host(&authority)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(size) = recv_buffer {
        socket
            .set_recv_buffer_size(size)
            .map_err(|e| e.to_string())?;
    }
    let stream = tokio::time::timeout(SHORT, socket.connect(addr))
        .await
        .map_err(|_| "TCP connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).ok();
    let (ws, _response) =
        tokio::time::timeout(SHORT, tokio_tungstenite::client_async(request, stream))
            .await
            .map_err(|_| "WebSocket handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
    Ok(Client {
        ws,
        stash: VecDeque::new(),
        pings: 0,
        connected: Value::Null,
    })
}

/// What arrives next on a client.
#[derive(Debug)]
pub enum Event {
    /// A text frame, parsed as JSON, with its raw text.
    Json(Value, String),
    /// A close frame: code and reason (1005 when the frame had no code).
    Close(u16, String),
    /// The connection ended without a close frame (reset, EOF, protocol error).
    Ended(String),
    /// Nothing arrived in time.
    Timeout,
}

/// A WebSocket client speaking the JSON protocol.
pub struct Client {
    pub ws: Ws,
    /// Pushes (and replies) read while looking for something else, handed out first by `recv_*`.
    stash: VecDeque<(Value, String)>,
    /// WebSocket Ping control frames seen so far (tungstenite answers them by itself).
    pub pings: usize,
    /// The `connected` push's body, for clients made by `Server::connect*`.
    pub connected: Value,
}

impl Client {
    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send text frame");
    }

    /// Sends unless the server has closed the connection already (false then): for bursts
    /// the server is expected to cut short.
    pub async fn try_send_json(&mut self, value: Value) -> bool {
        self.ws.send(Message::Text(value.to_string())).await.is_ok()
    }

    /// Next event from the socket itself (not the stash), skipping control frames.
    pub async fn next_event(&mut self, timeout: Duration) -> Event {
        if let Some((v, raw)) = self.stash.pop_front() {
            return Event::Json(v, raw);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Event::Timeout,
                Ok(next) => next,
            };
            match next {
                None => return Event::Ended("stream ended".into()),
                Some(Err(e)) => return Event::Ended(e.to_string()),
                Some(Ok(Message::Text(text))) => {
                    let v = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("server sent non-JSON text ({e}): {text}"));
                    return Event::Json(v, text);
                }
                Some(Ok(Message::Binary(b))) => {
                    panic!(
                        "server sent a binary frame: {:?}",
                        String::from_utf8_lossy(&b)
                    )
                }
                Some(Ok(Message::Ping(_))) => self.pings += 1,
                Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    return match frame {
                        Some(f) => Event::Close(u16::from(f.code), f.reason.into_owned()),
                        None => Event::Close(1005, String::new()),
                    }
                }
            }
        }
    }

    /// The next message's raw text; panics on close or timeout.
    pub async fn recv_raw(&mut self, timeout: Duration) -> (Value, String) {
        match self.next_event(timeout).await {
            Event::Json(v, raw) => (v, raw),
            other => panic!("expected a message within {timeout:?}, got {other:?}"),
        }
    }

    /// The next message as JSON; panics on close or timeout.
    pub async fn recv_json(&mut self, timeout: Duration) -> Value {
        self.recv_raw(timeout).await.0
    }

    /// The next message, or None when nothing arrives within `timeout`; panics on close.
    pub async fn try_recv_json(&mut self, timeout: Duration) -> Option<Value> {
        match self.next_event(timeout).await {
            Event::Json(v, _) => Some(v),
            Event::Timeout => None,
            other => panic!("expected a message or silence, got {other:?}"),
        }
    }

    /// Asserts that nothing but join/leave pushes arrives within `timeout` (stashed messages
    /// included): no publication, no reply, no close.
    pub async fn assert_no_pub(&mut self, timeout: Duration, why: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Event::Timeout => return,
                Event::Json(v, _) if v.get("join").is_some() || v.get("leave").is_some() => {}
                other => panic!("{why}: expected nothing within {timeout:?}, got {other:?}"),
            }
        }
    }

    /// The first message for which `pred` holds (others are stashed, in order); panics on close or
    /// timeout.
    pub async fn recv_matching(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> (Value, String) {
        let deadline = Instant::now() + timeout;
        let mut skipped = VecDeque::new();
        // Look through the stash first.
        while let Some((v, raw)) = self.stash.pop_front() {
            if pred(&v) {
                skipped.extend(self.stash.drain(..));
                self.stash = skipped;
                return (v, raw);
            }
            skipped.push_back((v, raw));
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Event::Json(v, raw) if pred(&v) => {
                    self.stash = skipped;
                    return (v, raw);
                }
                Event::Json(v, raw) => skipped.push_back((v, raw)),
                other => {
                    let seen: Vec<String> = skipped.iter().map(|(_, r)| r.clone()).collect();
                    panic!(
                        "expected a matching message within {timeout:?}, got {other:?}; \
                         skipped: {seen:?}"
                    );
                }
            }
        }
    }

    /// The next publication on `channel` (raw text too); other messages are stashed.
    pub async fn recv_pub(&mut self, channel: &str, timeout: Duration) -> (Value, String) {
        self.recv_matching(timeout, |v| {
            v["channel"] == channel && v.get("pub").is_some()
        })
        .await
    }

    /// Sends `body` (e.g. `{"subscribe": {...}}`) with `"id": id` and returns the reply with that
    /// id, stashing pushes that arrive before it.
    pub async fn command(&mut self, id: u64, body: Value) -> Value {
        let mut frame = body;
        frame
            .as_object_mut()
            .expect("command body is an object")
            .insert("id".into(), json!(id));
        self.send_json(frame).await;
        let (reply, _) = self
            .recv_matching(REPLY_TIMEOUT, |v| v["id"] == json!(id))
            .await;
        reply
    }

    /// A command that must succeed: its `result`.
    pub async fn ok(&mut self, id: u64, body: Value) -> Value {
        let reply = self.command(id, body.clone()).await;
        assert!(
            reply.get("error").is_none() && reply.get("result").is_some(),
            "command {body} failed: {reply}"
        );
        reply["result"].clone()
    }

    /// A command that must fail: its error code.
    pub async fn err_code(&mut self, id: u64, body: Value) -> i64 {
        let reply = self.command(id, body.clone()).await;
        let code = reply["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("command {body} should fail, got {reply}"));
        assert!(
            reply["error"]["message"].is_string(),
            "error without a message: {reply}"
        );
        code
    }

    /// Subscribes (must succeed); returns the result.
    pub async fn subscribe(&mut self, id: u64, channel: &str) -> Value {
        self.ok(id, json!({"subscribe": {"channel": channel}}))
            .await
    }

    /// Reads until a close frame and returns (code, reason); messages before it are dropped.
    /// Panics on timeout or when the connection ends without a close frame.
    pub async fn expect_close(&mut self, timeout: Duration) -> (u16, String) {
        self.stash.clear();
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Event::Close(code, reason) => return (code, reason),
                Event::Json(_, raw) => seen.push(raw),
                other => panic!(
                    "expected a close frame within {timeout:?}, got {other:?}; messages before: \
                     {seen:?}"
                ),
            }
        }
    }

    /// Sends a close frame and waits briefly for the server's.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Polls `check` (async) until it returns true or `timeout` passes; returns whether it did.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Path of a file in the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs the binary with `args` to completion (10 s at most): (exit code, stdout, stderr).
pub fn run_bin(args: &[&str]) -> (i32, String, String) {
    let child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferrocast");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(out) => {
            let out = out.expect("wait for ferrocast");
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            // SAFETY: kill(2) on the pid of a child we spawned; the waiting thread reaps it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("ferrocast {args:?} did not exit within 10 s");
        }
    }
}

/// Reads one HTTP/1.1 request (head and a Content-Length body) as text.
pub async fn read_http_request(sock: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::io::AsyncReadExt::read(sock, &mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = tokio::io::AsyncReadExt::read(sock, &mut chunk).await.ok()?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
    }
}
