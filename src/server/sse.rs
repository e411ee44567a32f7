//! The SSE fallback: `GET /sse` (EventSource) for networks where WebSocket can't pass.
//!
//! An SSE stream is a connection like any other of its shard: it lives in the shard's slab with
//! its identity, subscriptions and outbound queue, receives the same publication frames from the
//! fan-out, and is bound by the same limits (queue bytes → 4005, subscriptions, drain → 4010,
//! token expiry → 4011). Only the last step differs: instead of writing WebSocket frames to the
//! socket, [`SseBody`] — the response body hyper polls — takes the queued frames and writes each
//! as one SSE event whose `data` is the frame's JSON text, with a heartbeat comment for a ping
//! and a `disconnect` event for a close.
//!
//! One event id covers every channel of the stream: it lists each channel's position, so
//! `Last-Event-ID` (which EventSource sends by itself when it reconnects) resumes every channel
//! with recovery: what was missed arrives, or `recovered: false` says it can't.

use std::borrow::Cow;
use std::convert::Infallible;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde::Deserialize;

use super::per_ip::IpSlot;
use super::upgrade::{origin_allowed, query_param};
use crate::auth::{proxy, AuthError, Identity};
use crate::hub::client;
use crate::hub::shard::Shard;
use crate::metrics::{count_close, count_error, metrics};
use crate::protocol::{CloseCode, Position};
use crate::ws::frame;

/// How long EventSource waits before reconnecting (the `retry:` field).
const RETRY_MS: u32 = 1000;

/// Opens an SSE stream: authenticates like `/ws` (`?token=`, or the connect proxy with the
/// request's cookies), registers the stream with the shard, subscribes it to its channels (the
/// identity's `subs` and `?channel=`, recovered from `Last-Event-ID`), and answers with a body
/// that carries the connection's output.
pub async fn open(
    shard: &Rc<Shard>,
    req: Request<Incoming>,
    slot: Option<IpSlot>,
    kill: Rc<tokio::sync::Notify>,
) -> Response<ServeBody> {
    let m = metrics();
    let node = shard.node.clone();
    let fail = |status: u16, code: u16, message: &str| {
        crate::http::error_response(status, code, message).map(ServeBody::Left)
    };
    if req.method() != hyper::Method::GET {
        return fail(405, 104, "use GET");
    }
    let cfg = &node.config;
    if !origin_allowed(&cfg.auth.allowed_origins, &req) {
        m.handshake_failures.with_label_values(&["origin"]).inc();
        return fail(403, 103, "origin not allowed");
    }
    if node.is_draining() || shard.draining.get() {
        m.handshake_failures.with_label_values(&["draining"]).inc();
        return fail(503, 108, "node is draining");
    }
    let max = cfg.limits.max_connections;
    if max > 0 && node.connections.load(std::sync::atomic::Ordering::Relaxed) >= max {
        m.handshake_failures.with_label_values(&["limit"]).inc();
        return fail(503, 106, "connection limit reached");
    }
    let query = req.uri().query().unwrap_or("");
    let channels: Vec<String> = query_params(query, "channel");
    if channels.len() > cfg.limits.max_subscriptions {
        return fail(400, 106, "too many channels");
    }
    let last_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query_param(query, "last_event_id"));
    let recover = last_id
        .as_deref()
        .map(|id| parse_event_id(id, cfg.limits.max_subscriptions))
        .unwrap_or_default();
    // The stream's client number: the connect proxy is told the client id it will have.
    let client_n = node.next_client_id();
    let identity = match query_param(query, "token").filter(|t| !t.is_empty()) {
        Some(token) => node.verifier.verify(&token),
        None if !cfg.auth.proxy_url.is_empty() => {
            let headers = proxy::pick_headers(req.headers(), &cfg.auth.proxy_headers);
            let client = node.client_name(client_n);
            proxy::connect(
                &cfg.auth.proxy_url,
                headers,
                &client,
                "sse",
                cfg.auth.proxy_timeout.0,
            )
            .await
        }
        None if cfg.auth.allow_anonymous => Ok(Identity::anonymous()),
        None => Err(AuthError::Invalid),
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(e) => {
            m.handshake_failures.with_label_values(&["auth"]).inc();
            let code = e.client_error().code();
            count_error(code);
            let status = match e {
                AuthError::ProxyRejected => 403,
                AuthError::ProxyUnavailable => 503,
                AuthError::Invalid | AuthError::Expired => 401,
            };
            return fail(status, code, &e.to_string());
        }
    };
    let origin = req.headers().get(hyper::header::ORIGIN).cloned();
    let key = shard.register_sse(identity, client_n);
    // Both live as long as the stream's connection: the per-IP slot is given back, and the
    // HTTP connection is ended, when the shard removes it.
    shard.attach(key, Box::new((slot, EndOnDrop(kill))));
    m.sse_streams.inc();
    {
        let shard = shard.clone();
        tokio::task::spawn_local(async move {
            client::server_subscriptions(&shard, key, channels, recover).await;
        });
    }
    let mut res = Response::builder()
        .status(200)
        .header(hyper::header::CONTENT_TYPE, "text/event-stream")
        .header(hyper::header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        // One stream per HTTP connection: when it ends, so does the connection.
        .header(hyper::header::CONNECTION, "close");
    if let Some(origin) = origin {
        res = res
            .header(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)
            .header(hyper::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    res.body(ServeBody::Right(SseBody {
        shard: shard.clone(),
        key,
        client: client_n,
        started: false,
        done: false,
        positions: Vec::new(),
    }))
    .expect("response")
}

/// Ends the stream's HTTP connection when dropped (with the connection's shard entry), also when
/// hyper is stuck writing to a client that stopped reading.
struct EndOnDrop(Rc<tokio::sync::Notify>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// What the public listener answers with: one buffer, or an SSE stream.
pub type ServeBody = http_body_util::Either<crate::http::Body, SseBody>;

/// Every value of `name` in a query string, percent-decoded.
fn query_params(query: &str, name: &str) -> Vec<String> {
    query
        .split('&')
        .filter(|pair| pair.split('=').next() == Some(name))
        .filter_map(|pair| query_param(pair, name))
        .filter(|v| !v.is_empty())
        .collect()
}

/// The response body of an SSE stream: the connection's output, re-framed as SSE events.
pub struct SseBody {
    shard: Rc<Shard>,
    key: usize,
    client: u64,
    /// The `retry:` preamble went out.
    started: bool,
    /// The stream ended (a close was written): the next poll ends the body.
    done: bool,
    /// Each channel's position as of the last event written: (channel, offset, epoch).
    positions: Vec<(String, u64, String)>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let mut out = Vec::new();
        if !this.started {
            this.started = true;
            out.extend_from_slice(format!("retry: {RETRY_MS}\n\n").as_bytes());
        }
        let shard = this.shard.clone();
        let mut st = shard.state.borrow_mut();
        let Some(conn) = st
            .conns
            .get_mut(this.key)
            .filter(|c| c.client == this.client)
        else {
            this.done = true;
            return Poll::Ready(None);
        };
        let closing = conn.closing;
        if closing == Some(CloseCode::SlowConsumer) {
            conn.out.drop_unsent();
        }
        let mut closed = None;
        for f in conn.out.take_frames() {
            if let Some(close) = this.write_event(&f, &mut out) {
                closed = Some(close);
                break;
            }
        }
        if closed.is_none() {
            if let Some(code) = closing {
                closed = Some(match conn.custom_close.take() {
                    Some(custom) => (custom.0, custom.1),
                    None => (code.as_u16(), code.reason().to_string()),
                });
            }
        }
        if let Some((code, reason)) = closed {
            write_disconnect(code, &reason, &mut out);
            this.done = true;
            conn.closing.get_or_insert(CloseCode::ServerClose);
            count_close(code);
        } else if out.is_empty() {
            if !conn.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                conn.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        st.bytes_out += out.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}

impl Drop for SseBody {
    /// The stream is over (ended by the server, or the client went away): the connection leaves
    /// its shard.
    fn drop(&mut self) {
        metrics().sse_streams.dec();
        let still_ours = {
            let mut st = self.shard.state.borrow_mut();
            match st.conns.get_mut(self.key) {
                Some(c) if c.client == self.client => {
                    c.waker = None;
                    if c.closing.is_none() {
                        c.closing = Some(CloseCode::Gone);
                        count_close(1006);
                    }
                    true
                }
                _ => false,
            }
        };
        if still_ours {
            let shard = self.shard.clone();
            let key = self.key;
            tokio::task::spawn_local(async move { shard.remove_connection(key).await });
        }
    }
}

/// What an SSE stream needs to read from the JSON of a frame.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(rename = "pub", default)]
    publication: Option<PubPeek>,
    #[serde(default)]
    subscribe: Option<SubscribePeek>,
    #[serde(default)]
    unsubscribe: Option<UnsubscribePeek>,
}

#[derive(Deserialize)]
struct PubPeek {
    #[serde(default)]
    offset: u64,
}

#[derive(Deserialize)]
struct SubscribePeek {
    offset: u64,
    epoch: String,
    #[serde(default)]
    publications: Vec<PubPeek>,
}

#[derive(Deserialize)]
struct UnsubscribePeek {
    #[serde(default)]
    resubscribe: bool,
}

impl SseBody {
    /// Writes one queued WebSocket frame as an SSE event. Returns the close (code, reason) when
    /// the frame is a close: the stream ends after it.
    fn write_event(&mut self, f: &[u8], out: &mut Vec<u8>) -> Option<(u16, String)> {
        let (opcode, payload) = frame::split_server_frame(f)?;
        match opcode {
            frame::OP_TEXT => {
                let mut end = None;
                if let Ok(peek) = serde_json::from_slice::<Peek>(payload) {
                    if let Some(ch) = peek.channel.as_deref() {
                        if let Some(s) = &peek.subscribe {
                            let last = s.publications.iter().map(|p| p.offset).max().unwrap_or(0);
                            self.set(ch, s.offset.max(last), Some(&s.epoch));
                            self.write_id(out);
                        } else if let Some(p) = peek.publication.as_ref().filter(|p| p.offset > 0) {
                            self.set(ch, p.offset, None);
                            self.write_id(out);
                        } else if let Some(u) = &peek.unsubscribe {
                            if u.resubscribe {
                                // The node lost track of the stream: end this one, and the
                                // reconnect recovers from the position the id still holds.
                                end = Some((4000, "resubscribe".to_string()));
                            } else {
                                self.positions.retain(|(c, _, _)| c != ch);
                                self.write_id(out);
                            }
                        }
                    }
                }
                write_data(payload, out);
                end
            }
            frame::OP_PING => {
                out.extend_from_slice(b":\n\n");
                None
            }
            frame::OP_CLOSE => {
                let code = payload
                    .get(..2)
                    .map_or(1000, |c| u16::from_be_bytes([c[0], c[1]]));
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned();
                Some((code, reason))
            }
            _ => None,
        }
    }

    fn set(&mut self, channel: &str, offset: u64, epoch: Option<&str>) {
        match self.positions.iter_mut().find(|(c, _, _)| c == channel) {
            Some(p) => {
                p.1 = offset;
                if let Some(e) = epoch {
                    p.2 = e.to_string();
                }
            }
            None => {
                if let Some(e) = epoch {
                    self.positions
                        .push((channel.to_string(), offset, e.to_string()));
                }
            }
        }
    }

    fn write_id(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(encode_event_id(&self.positions).as_bytes());
        out.push(b'\n');
    }
}

/// `data:` lines for a JSON text: raw line breaks (only possible as whitespace in JSON) start a
/// new `data:` line, which EventSource joins back with `\n`.
fn write_data(json: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'\r' => {
                out.extend_from_slice(b"\ndata: ");
                if json.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\ndata: "),
            c => out.push(c),
        }
        i += 1;
    }
    out.extend_from_slice(b"\n\n");
}

fn write_disconnect(code: u16, reason: &str, out: &mut Vec<u8>) {
    // Codes after which retrying can't help (as the WebSocket clients treat them).
    let reconnect = !matches!(code, 4003 | 4004 | 4009);
    let json = serde_json::json!({
        "disconnect": {"code": code, "reason": reason, "reconnect": reconnect}
    });
    write_data(&serde_json::to_vec(&json).expect("json"), out);
}

/// The event id: every channel's position, `offset.epoch.channel` joined by `;` (an epoch's
/// characters other than `[A-Za-z0-9_-]` are %-escaped, so the first two dots split).
pub fn encode_event_id(positions: &[(String, u64, String)]) -> String {
    let mut id = String::new();
    for (i, (ch, offset, epoch)) in positions.iter().enumerate() {
        if i > 0 {
            id.push(';');
        }
        id.push_str(&offset.to_string());
        id.push('.');
        for c in epoch.chars() {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                id.push(c);
            } else {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    id.push_str(&format!("%{b:02X}"));
                }
            }
        }
        id.push('.');
        id.push_str(ch);
    }
    id
}

/// Positions from a `Last-Event-ID` (at most `max` channels; malformed entries are skipped: that
/// channel starts without recovery).
pub fn parse_event_id(id: &str, max: usize) -> Vec<(String, Position)> {
    id.split(';')
        .filter_map(|entry| {
            let mut parts = entry.splitn(3, '.');
            let offset = parts.next()?.parse::<u64>().ok()?;
            let epoch = unescape(parts.next()?)?;
            let channel = parts.next()?;
            (!channel.is_empty() && !epoch.is_empty())
                .then(|| (channel.to_string(), Position { offset, epoch }))
        })
        .take(max)
        .collect()
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip() {
        let positions = vec![
            ("user:17".to_string(), 21, "k3x9".to_string()),
            ("room:a.b".to_string(), 5, "e.p%".to_string()),
        ];
        let id = encode_event_id(&positions);
        assert!(!id.contains('\n'));
        let back = parse_event_id(&id, 10);
        assert_eq!(
            back,
            vec![
                (
                    "user:17".to_string(),
                    Position {
                        offset: 21,
                        epoch: "k3x9".into()
                    }
                ),
                (
                    "room:a.b".to_string(),
                    Position {
                        offset: 5,
                        epoch: "e.p%".into()
                    }
                ),
            ]
        );
        assert!(parse_event_id("garbage", 10).is_empty());
        assert!(parse_event_id("x.e.room:1;2..room:2;3.e.", 10).is_empty());
        assert_eq!(parse_event_id("1.a.r:1;2.b.r:2", 1).len(), 1);
    }

    #[test]
    fn data_lines_split_raw_line_breaks() {
        let mut out = Vec::new();
        write_data(b"{\"a\":\r\n1,\r\"b\":\n2}", &mut out);
        assert_eq!(out, b"data: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n");
    }

    #[test]
    fn disconnect_says_whether_to_reconnect() {
        let mut out = Vec::new();
        write_disconnect(4010, "shutdown", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data: {\"disconnect\":{\"code\":4010,\"reason\":\"shutdown\",\"reconnect\":true}}\n\n"
        );
        let mut out = Vec::new();
        write_disconnect(4003, "forbidden", &mut out);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("\"reconnect\":false"));
    }
}
