//! naive-baseline: the WebSocket pub/sub server a tutorial writes, as the yardstick ferrocast's
//! figures are shown beside (docs/benchmarks.md, `make loadtest`).
//!
//! It is deliberately the ordinary design, not a strawman: hyper for HTTP, tokio-tungstenite for
//! WebSocket, one task per socket, one `tokio::sync::broadcast` channel per pub/sub channel, one
//! forwarding task per subscription (broadcast receiver → the socket's task), `serde_json::Value`
//! for every frame, and a `Mutex<HashMap>` of channels. Every subscriber gets its own copy of each
//! publication (`broadcast` clones the `String`), every message is its own `send` (a write
//! syscall), and every socket keeps tungstenite's read and write buffers.
//!
//! It speaks enough of ferrocast protocol v1 (../../../shared/PROTOCOL.md) for wsbench's connect,
//! broadcast, notify, chat and churn scenarios to run against it unchanged:
//! - HS256 JWT auth (validated, `exp` included) from `?token=` or a `connect` command;
//!   `connected` push and reply; `user:<id>` only for user `<id>`;
//! - `subscribe` (reply with `offset` and `epoch`; with `recover`: `recovered: false`, since a
//!   naive server keeps no history), `unsubscribe`, `publish` (any channel but `user:`), `ping`;
//! - publications `{"channel":…,"pub":{"offset":…,"data":…[,"info":…]}}` with per-channel offsets;
//! - `POST /api/publish` with `Authorization: apikey KEY`.
//!
//! Two things a tutorial might skip are here because without them the comparison would measure
//! an accident rather than the design: TCP_NODELAY (else Nagle's algorithm sets the latency), and
//! a subscriber that falls a whole broadcast buffer behind is closed with 4005 (slow consumer)
//! instead of silently skipping publications.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Parser, Debug)]
#[command(
    name = "naive-baseline",
    about = "The naive tokio-tungstenite pub/sub server (ferrocast protocol v1 subset), for comparison"
)]
struct Args {
    /// WebSocket (/ws) and server API (/api/publish) address
    #[arg(long, env = "NAIVE_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// HS256 secret client tokens are signed with
    #[arg(long, env = "NAIVE_TOKEN_SECRET", default_value = "change-me")]
    token_secret: String,
    /// Server API key (`Authorization: apikey KEY`)
    #[arg(long, env = "NAIVE_API_KEY", default_value = "change-me")]
    api_key: String,
    /// Publications each broadcast channel buffers; a subscriber further behind is closed (4005)
    #[arg(long, default_value_t = 256)]
    capacity: usize,
    /// Close sockets not authenticated within this many seconds (4001)
    #[arg(long, default_value_t = 5)]
    auth_timeout: u64,
}

/// One pub/sub channel: its broadcast sender and the last offset given out.
struct Channel {
    tx: broadcast::Sender<String>,
    offset: u64,
}

struct State {
    channels: Mutex<HashMap<String, Channel>>,
    /// One stream epoch for the life of the process (nothing is kept to recover from anyway).
    epoch: String,
    key: DecodingKey,
    validation: Validation,
    api_auth: String,
    capacity: usize,
    auth_timeout: Duration,
    next_client: AtomicU64,
}

impl State {
    /// Assigns the next offset and broadcasts the publication frame. The frame is sent under the
    /// lock so that every subscriber sees a channel's offsets in order.
    fn publish(&self, channel: &str, data: Value, info: Option<Value>) -> u64 {
        let mut map = self.channels.lock().unwrap();
        let ch = map.entry(channel.to_string()).or_insert_with(|| Channel {
            tx: broadcast::channel(self.capacity).0,
            offset: 0,
        });
        ch.offset += 1;
        let mut publication = json!({ "offset": ch.offset, "data": data });
        if let Some(info) = info {
            publication["info"] = info;
        }
        let frame = json!({ "channel": channel, "pub": publication }).to_string();
        let _ = ch.tx.send(frame); // no subscriber is not an error
        ch.offset
    }

    fn subscribe(&self, channel: &str) -> (broadcast::Receiver<String>, u64) {
        let mut map = self.channels.lock().unwrap();
        let ch = map.entry(channel.to_string()).or_insert_with(|| Channel {
            tx: broadcast::channel(self.capacity).0,
            offset: 0,
        });
        (ch.tx.subscribe(), ch.offset)
    }

    /// `Ok(user)` or the protocol error code (101 invalid, 109 expired).
    fn verify(&self, token: &str) -> Result<String, i64> {
        #[derive(Deserialize)]
        struct Claims {
            #[serde(default)]
            sub: String,
        }
        match decode::<Claims>(token, &self.key, &self.validation) {
            Ok(t) => Ok(t.claims.sub),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(109),
            Err(_) => Err(101),
        }
    }
}

fn main() {
    let args = Args::parse();
    raise_fd_limit();
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    let st = Arc::new(State {
        channels: Mutex::new(HashMap::new()),
        epoch: format!(
            "{:x}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        ),
        key: DecodingKey::from_secret(args.token_secret.as_bytes()),
        validation,
        api_auth: format!("apikey {}", args.api_key),
        capacity: args.capacity.max(1),
        auth_timeout: Duration::from_secs(args.auth_timeout.max(1)),
        next_client: AtomicU64::new(1),
    });
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = rt.block_on(serve(args.listen, st)) {
        eprintln!("naive-baseline: {e}");
        std::process::exit(1);
    }
}

async fn serve(addr: SocketAddr, st: Arc<State>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!("naive-baseline listening on {addr} (ws://{addr}/ws, http://{addr}/api/publish)");
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: wait for sockets to close.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = sigterm.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let st = st.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| route(st.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn api_error(status: StatusCode, code: i64, message: &str) -> Resp {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

async fn route(st: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => upgrade(st, req),
        (&Method::POST, "/api/publish") => api_publish(st, req).await,
        (&Method::GET, "/health/ready" | "/health/live") => {
            json_response(StatusCode::OK, &json!({"status": "ok"}))
        }
        _ => api_error(StatusCode::NOT_FOUND, 104, "not found"),
    })
}

async fn api_publish(st: Arc<State>, req: Request<Incoming>) -> Resp {
    let authorized = req
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == st.api_auth.as_bytes());
    if !authorized {
        return api_error(StatusCode::UNAUTHORIZED, 101, "unauthorized");
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return api_error(StatusCode::BAD_REQUEST, 107, "bad request"),
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
        return api_error(StatusCode::BAD_REQUEST, 107, "malformed JSON");
    };
    let Some(channel) = v.get("channel").and_then(Value::as_str).map(str::to_string) else {
        return api_error(StatusCode::BAD_REQUEST, 107, "channel required");
    };
    if !valid_channel(&channel) {
        return api_error(StatusCode::BAD_REQUEST, 107, "bad channel name");
    }
    if v.get("deliver_at").is_some() {
        return api_error(
            StatusCode::BAD_REQUEST,
            108,
            "scheduled delivery not available",
        );
    }
    let Some(data) = v.get_mut("data").map(Value::take) else {
        return api_error(StatusCode::BAD_REQUEST, 107, "data required");
    };
    let offset = st.publish(&channel, data, None);
    json_response(
        StatusCode::OK,
        &json!({"offset": offset, "epoch": st.epoch}),
    )
}

/// `namespace:rest` or a bare name, at most 255 bytes of `[A-Za-z0-9_\-:.@=,]`.
fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-:.@=,".contains(&b))
}

fn upgrade(st: Arc<State>, mut req: Request<Incoming>) -> Resp {
    let is_upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return api_error(StatusCode::BAD_REQUEST, 107, "not a WebSocket upgrade");
    };
    if !is_upgrade {
        return api_error(StatusCode::BAD_REQUEST, 107, "not a WebSocket upgrade");
    }
    let token = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_string)
    });
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                socket(st, ws, token).await;
            }
            Err(e) => eprintln!("upgrade: {e}"),
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("base64 is a header"),
    );
    r
}

/// What a subscription's forwarding task hands the socket's task.
enum Out {
    Frame(String),
    Close(u16),
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Per-connection protocol state.
struct Session {
    client: String,
    user: Option<String>,
    subs: HashMap<String, JoinHandle<()>>,
    out_tx: mpsc::Sender<Out>,
}

/// The life of one socket: one task reading commands and writing replies and publications.
async fn socket(st: Arc<State>, mut ws: Ws, url_token: Option<String>) {
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(64);
    let mut s = Session {
        client: st.next_client.fetch_add(1, Ordering::Relaxed).to_string(),
        user: None,
        subs: HashMap::new(),
        out_tx,
    };
    if let Some(token) = url_token {
        match st.verify(&token) {
            Ok(user) => {
                s.user = Some(user);
                let push = json!({ "connected": connected_body(&s) }).to_string();
                if ws.send(Message::Text(push)).await.is_err() {
                    return;
                }
            }
            Err(code) => {
                close(&mut ws, if code == 109 { 4011 } else { 4003 }).await;
                return;
            }
        }
    }
    let auth_deadline = tokio::time::sleep(st.auth_timeout);
    tokio::pin!(auth_deadline);
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(text))) => {
                    let (replies, close_code) = command(&st, &mut s, &text);
                    let mut open = true;
                    for r in replies {
                        if ws.send(Message::Text(r)).await.is_err() {
                            open = false;
                            break;
                        }
                    }
                    if let Some(code) = close_code.filter(|_| open) {
                        close(&mut ws, code).await;
                    }
                    if !open || close_code.is_some() {
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    close(&mut ws, 4004).await;
                    break;
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {} // ping (tungstenite queues the pong), pong
            },
            out = out_rx.recv() => {
                let open = match out {
                    Some(Out::Frame(f)) => ws.send(Message::Text(f)).await.is_ok(),
                    Some(Out::Close(code)) => {
                        close(&mut ws, code).await;
                        false
                    }
                    None => true,
                };
                if !open {
                    break;
                }
            }
            _ = &mut auth_deadline, if s.user.is_none() => {
                close(&mut ws, 4001).await;
                break;
            }
        }
    }
    for (_, task) in s.subs.drain() {
        task.abort();
    }
}

async fn close(ws: &mut Ws, code: u16) {
    let _ = ws
        .close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        }))
        .await;
}

fn connected_body(s: &Session) -> Value {
    json!({
        "client": s.client,
        "user": s.user.as_deref().unwrap_or(""),
        "node": "naive-baseline",
        "ping_interval": 0,
    })
}

fn reply(id: u64, result: Value) -> String {
    json!({ "id": id, "result": result }).to_string()
}

fn error(id: u64, code: i64, message: &str) -> String {
    json!({ "id": id, "error": { "code": code, "message": message } }).to_string()
}

/// Runs one command: the frames to send back, and a close code when the socket must close.
fn command(st: &Arc<State>, s: &mut Session, text: &str) -> (Vec<String>, Option<u16>) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return (Vec::new(), Some(4004));
    };
    let id = v.get("id").and_then(Value::as_u64).unwrap_or(0);
    let Some((name, params)) = v
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.as_str() != "id"))
    else {
        return (vec![error(id, 107, "bad request")], None);
    };
    let channel = params
        .get("channel")
        .and_then(Value::as_str)
        .map(str::to_string);
    if name != "connect" && s.user.is_none() {
        return (vec![error(id, 101, "unauthorized")], None);
    }
    let one = |r: String| (vec![r], None);
    match name.as_str() {
        "connect" => {
            if s.user.is_some() {
                return one(error(id, 107, "already connected"));
            }
            let token = params.get("token").and_then(Value::as_str).unwrap_or("");
            match st.verify(token) {
                Ok(user) => {
                    s.user = Some(user);
                    let body = connected_body(s);
                    let push = json!({ "connected": body }).to_string();
                    (vec![reply(id, body), push], None)
                }
                Err(code) => (
                    vec![error(id, code, "unauthorized")],
                    Some(if code == 109 { 4011 } else { 4003 }),
                ),
            }
        }
        "subscribe" => {
            let Some(ch) = channel.filter(|c| valid_channel(c)) else {
                return one(error(id, 107, "bad channel name"));
            };
            if !may_access(s, &ch) {
                return one(error(id, 103, "permission denied"));
            }
            if s.subs.contains_key(&ch) {
                return one(error(id, 105, "already subscribed"));
            }
            let (rx, offset) = st.subscribe(&ch);
            s.subs
                .insert(ch, tokio::spawn(forward(rx, s.out_tx.clone())));
            let mut result = json!({ "offset": offset, "epoch": st.epoch });
            if params.get("recover").is_some() {
                // Nothing is kept: the position can never be recovered.
                result["recovered"] = json!(false);
                result["publications"] = json!([]);
            }
            one(reply(id, result))
        }
        "unsubscribe" => {
            if let Some(task) = channel.and_then(|c| s.subs.remove(&c)) {
                task.abort();
            }
            one(reply(id, json!({})))
        }
        "publish" => {
            let Some(ch) = channel.filter(|c| valid_channel(c)) else {
                return one(error(id, 107, "bad channel name"));
            };
            if ch.starts_with("user:") {
                return one(error(id, 103, "permission denied"));
            }
            let data = params.get("data").cloned().unwrap_or(Value::Null);
            let info = json!({ "user": s.user.as_deref().unwrap_or("") });
            let offset = st.publish(&ch, data, Some(info));
            one(reply(id, json!({ "offset": offset, "epoch": st.epoch })))
        }
        "ping" => one(reply(id, json!({}))),
        "presence" | "presence_stats" | "history" => one(error(id, 108, "not available")),
        _ => one(error(id, 104, "method not found")),
    }
}

/// `user:<id>` is only for user `<id>`.
fn may_access(s: &Session, channel: &str) -> bool {
    match channel.strip_prefix("user:") {
        Some(owner) => s
            .user
            .as_deref()
            .is_some_and(|u| !u.is_empty() && u == owner),
        None => true,
    }
}

/// One subscription: broadcast receiver → the socket's task. A subscriber a whole buffer behind
/// has missed publications: it is closed as a slow consumer (4005) rather than left with a gap.
async fn forward(mut rx: broadcast::Receiver<String>, out: mpsc::Sender<Out>) {
    loop {
        match rx.recv().await {
            Ok(frame) => {
                if out.send(Out::Frame(frame)).await.is_err() {
                    return;
                }
            }
            Err(RecvError::Lagged(_)) => {
                let _ = out.send(Out::Close(4005)).await;
                return;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Sockets are file descriptors: take the whole hard limit (as ferrocast does).
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(valid_channel("room:wsbench-0"));
        assert!(valid_channel("user:17"));
        assert!(!valid_channel("room 1"));
        assert!(!valid_channel(""));
        assert!(!valid_channel(&"x".repeat(256)));
    }

    #[test]
    fn personal_channels() {
        let (out_tx, _rx) = mpsc::channel(1);
        let s = Session {
            client: "1".into(),
            user: Some("17".into()),
            subs: HashMap::new(),
            out_tx,
        };
        assert!(may_access(&s, "user:17"));
        assert!(!may_access(&s, "user:18"));
        assert!(may_access(&s, "room:1"));
    }
}
