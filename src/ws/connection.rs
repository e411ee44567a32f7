//! One WebSocket connection: its state (owned by its shard, plain data) and the task that reads
//! from it.
//!
//! The lean read path: an idle connection owns no read buffer. When the socket is readable the
//! task reads into the shard's scratch buffer, decodes and unmasks every complete frame in place,
//! and keeps only the bytes of a frame split across reads (`partial`). Writes are done by whoever
//! queued data (the fan-out or a command reply) with a vectored non-blocking write; this task only
//! waits for writability when the socket was full.

use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::frame::{self, FrameError, FrameHeader};
use super::outbound::OutboundQueue;
use crate::auth::Identity;
use crate::hub::client;
use crate::hub::shard::{clock, Shard};
use crate::metrics::metrics;
use crate::protocol::{command, reply, ClientError, CloseCode, Command};

/// Bytes one connection may read per wake-up before yielding to others on the shard.
const READ_BUDGET: usize = 256 * 1024;
/// How long a closing connection may take to take its close frame.
const CLOSE_FLUSH_DEADLINE: Duration = Duration::from_secs(2);

/// A message being reassembled from fragments.
pub struct Fragment {
    pub opcode: u8,
    pub data: Vec<u8>,
}

pub struct Connection {
    pub stream: Rc<TcpStream>,
    pub out: OutboundQueue,
    /// The task's waker, for the shard to signal "closing" or "socket full, wait for writability".
    pub waker: Option<Waker>,
    pub client: u64,
    /// `None` until authenticated.
    pub identity: Option<Box<Identity>>,
    pub subs: Vec<crate::protocol::ChannelName>,
    /// Bytes of a frame split across reads.
    pub partial: Vec<u8>,
    pub fragment: Option<Box<Fragment>>,
    /// Shard clock seconds of the last frame received.
    pub last_seen: u32,
    pub ping_sent: Option<u32>,
    pub auth_deadline: u32,
    pub closing: Option<CloseCode>,
    /// A close code and reason chosen by the backend (`/api/disconnect`).
    pub custom_close: Option<Box<(u16, String)>>,
    /// The socket took less than we had: the task waits for writability and flushes.
    pub blocked: bool,
    /// Queued output not yet flushed in this fan-out batch.
    pub dirty: bool,
    /// Rate limit: commands in the current one-second window.
    pub window_start: u32,
    pub window_count: u32,
}

impl Connection {
    pub fn new(stream: Rc<TcpStream>, client: u64, auth_deadline: u32) -> Self {
        let now = clock();
        Connection {
            stream,
            out: OutboundQueue::default(),
            waker: None,
            client,
            identity: None,
            subs: Vec::new(),
            partial: Vec::new(),
            fragment: None,
            last_seen: now,
            ping_sent: None,
            auth_deadline,
            closing: None,
            custom_close: None,
            blocked: false,
            dirty: false,
            window_start: now,
            window_count: 0,
        }
    }

    /// Asks the task to close the connection with `code` (the first reason wins).
    pub fn close(&mut self, code: CloseCode) {
        if self.closing.is_none() {
            self.closing = Some(code);
            if let Some(w) = &self.waker {
                w.wake_by_ref();
            }
        }
    }

    /// A fixed one-second window: over `limit` commands → error 110; at twice the limit the
    /// client is not listening to its errors → close 4006.
    pub fn rate_limit(&mut self, limit: u32) -> Result<(), ClientError> {
        let now = clock();
        if self.window_start != now {
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count += 1;
        if self.window_count > limit.saturating_mul(2) {
            self.close(CloseCode::TooManyRequests);
            return Err(ClientError::TooManyRequests);
        }
        if self.window_count > limit {
            return Err(ClientError::TooManyRequests);
        }
        Ok(())
    }

    pub fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }

    pub fn queue_text(&mut self, json: &[u8]) {
        self.out.push(frame::text(json));
    }
}

enum Event {
    Readable,
    Writable,
    Close,
}

/// What one read pass produced.
enum ReadOutcome {
    /// Complete commands to run, in order (maybe none).
    Commands(Vec<Command>),
    /// The peer closed the connection (close frame with this code, or EOF = 1006).
    PeerClosed(u16),
}

/// The connection's task: wait for a socket event, handle it, repeat; then close.
pub async fn run(shard: Rc<Shard>, key: usize) {
    let stream = shard.state.borrow().conns[key].stream.clone();
    let mut peer_code = None;
    loop {
        let ev = poll_fn(|cx| {
            let mut st = shard.state.borrow_mut();
            let conn = &mut st.conns[key];
            if conn.closing.is_some() {
                return Poll::Ready(Event::Close);
            }
            if conn.blocked && stream.poll_write_ready(cx).is_ready() {
                return Poll::Ready(Event::Writable);
            }
            if !conn.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                conn.waker = Some(cx.waker().clone());
            }
            match stream.poll_read_ready(cx) {
                Poll::Ready(_) => Poll::Ready(Event::Readable),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match ev {
            Event::Close => break,
            Event::Writable => {
                shard.state.borrow_mut().conns[key].blocked = false;
                shard.flush(key);
            }
            Event::Readable => match read_frames(&shard, key, &stream) {
                ReadOutcome::PeerClosed(code) => {
                    peer_code = Some(code);
                    break;
                }
                ReadOutcome::Commands(cmds) => {
                    for cmd in cmds {
                        if shard.state.borrow().conns[key].closing.is_some() {
                            break;
                        }
                        // Boxed so the idle connection's future stays small: command handling
                        // state exists only while a command runs.
                        Box::pin(client::handle(&shard, key, cmd)).await;
                    }
                    // Cork: every reply produced by this read leaves in one write.
                    shard.flush(key);
                }
            },
        }
    }
    finish(&shard, key, &stream, peer_code).await;
}

/// Sends the close frame (unless the peer vanished), waits briefly for it to leave, and
/// removes the connection from the shard.
async fn finish(shard: &Rc<Shard>, key: usize, stream: &Rc<TcpStream>, peer_code: Option<u16>) {
    let code = {
        let mut st = shard.state.borrow_mut();
        let conn = &mut st.conns[key];
        match (peer_code, conn.closing) {
            (Some(1006), _) => 1006,
            (Some(code), _) => {
                // Echo the peer's close, as RFC 6455 §5.5.1 asks.
                conn.out.push(frame::close(1000, ""));
                code
            }
            (None, Some(CloseCode::Gone)) | (None, None) => 1006,
            (None, Some(code)) => {
                if code == CloseCode::SlowConsumer {
                    conn.out.drop_unsent();
                }
                match conn.custom_close.take() {
                    Some(custom) => {
                        conn.out.push(frame::close(custom.0, &custom.1));
                        custom.0
                    }
                    None => {
                        conn.out.push(frame::close(code.as_u16(), code.reason()));
                        code.as_u16()
                    }
                }
            }
        }
    };
    if code != 1006 {
        let _ = tokio::time::timeout(CLOSE_FLUSH_DEADLINE, async {
            loop {
                if let Some(conn) = shard.state.borrow_mut().conns.get_mut(key) {
                    conn.blocked = false;
                }
                if shard.flush(key) {
                    break;
                }
                if stream.writable().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
    crate::metrics::count_close(code);
    shard.remove_connection(key).await;
}

/// Reads everything available (up to a budget) through the shard's scratch buffer.
fn read_frames(shard: &Rc<Shard>, key: usize, stream: &TcpStream) -> ReadOutcome {
    let max = shard.node.config.limits.max_message_size;
    let rate = shard.node.config.limits.commands_per_second;
    let mut commands = Vec::new();
    let mut scratch = shard.scratch.borrow_mut();
    let mut st = shard.state.borrow_mut();
    let conn = &mut st.conns[key];
    let mut read_total = 0;
    loop {
        // Resume a split frame: its bytes go first.
        let mut filled = conn.partial.len();
        scratch[..filled].copy_from_slice(&conn.partial);
        conn.partial = Vec::new();
        let n = match stream.try_read(&mut scratch[filled..]) {
            Ok(0) => return ReadOutcome::PeerClosed(1006),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.partial = scratch[..filled].to_vec();
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                conn.partial = scratch[..filled].to_vec();
                continue;
            }
            Err(_) => return ReadOutcome::PeerClosed(1006),
        };
        filled += n;
        read_total += n;
        conn.last_seen = clock();
        conn.ping_sent = None;
        let mut pos = 0;
        while pos < filled {
            let header = match frame::parse_header(&scratch[pos..filled], max) {
                Ok(Some(h)) if pos + h.frame_len() <= filled => h,
                Ok(_) => break,
                Err(e) => {
                    conn.close(frame_error_code(e));
                    return ReadOutcome::Commands(commands);
                }
            };
            let start = pos + header.header_len;
            let end = pos + header.frame_len();
            pos = end;
            let payload = &mut scratch[start..end];
            frame::unmask(payload, header.mask);
            match on_frame(conn, &header, payload, max, rate, &mut commands) {
                Ok(None) => {}
                Ok(Some(peer_close)) => return ReadOutcome::PeerClosed(peer_close),
                Err(code) => {
                    conn.close(code);
                    return ReadOutcome::Commands(commands);
                }
            }
        }
        if pos < filled {
            conn.partial = scratch[pos..filled].to_vec();
        }
        if read_total >= READ_BUDGET {
            // More may be waiting; the socket stays readable, so the task comes back.
            break;
        }
    }
    ReadOutcome::Commands(commands)
}

fn frame_error_code(e: FrameError) -> CloseCode {
    match e {
        FrameError::TooBig => CloseCode::MessageTooBig,
        _ => CloseCode::BadRequest,
    }
}

/// Handles one decoded frame. `Ok(Some(code))` = the peer sent a close frame.
fn on_frame(
    conn: &mut Connection,
    h: &FrameHeader,
    payload: &[u8],
    max: usize,
    rate: u32,
    commands: &mut Vec<Command>,
) -> Result<Option<u16>, CloseCode> {
    match h.opcode {
        frame::OP_PING => {
            conn.out.push(frame::encode(frame::OP_PONG, payload));
            Ok(None)
        }
        frame::OP_PONG => Ok(None),
        frame::OP_CLOSE => {
            let code = if payload.len() >= 2 {
                u16::from_be_bytes([payload[0], payload[1]])
            } else {
                1005
            };
            Ok(Some(code))
        }
        frame::OP_TEXT | frame::OP_BINARY => {
            if conn.fragment.is_some() {
                return Err(CloseCode::BadRequest);
            }
            if h.fin {
                on_message(conn, payload, commands, rate);
            } else {
                conn.fragment = Some(Box::new(Fragment {
                    opcode: h.opcode,
                    data: payload.to_vec(),
                }));
            }
            Ok(None)
        }
        _ => {
            // Continuation.
            let Some(frag) = conn.fragment.as_mut() else {
                return Err(CloseCode::BadRequest);
            };
            if frag.data.len() + payload.len() > max {
                return Err(CloseCode::MessageTooBig);
            }
            frag.data.extend_from_slice(payload);
            if h.fin {
                let frag = conn.fragment.take().expect("fragment");
                on_message(conn, &frag.data, commands, rate);
            }
            Ok(None)
        }
    }
}

/// A complete message: one JSON command. A malformed one is answered with 107 and counted; the
/// connection stays open, but malformed frames count against the rate limit like commands.
fn on_message(conn: &mut Connection, msg: &[u8], commands: &mut Vec<Command>, rate: u32) {
    match command::parse(msg) {
        Ok(cmd) => commands.push(cmd),
        Err(e) => {
            if conn.rate_limit(rate).is_err() {
                // Past the limit garbage isn't even answered.
                return;
            }
            crate::metrics::count_error(e.error.code());
            metrics()
                .client_commands
                .with_label_values(&["invalid"])
                .inc();
            conn.queue_text(&reply::error(e.id, &e.error));
            if e.error == (ClientError::BadRequest("malformed JSON")) && conn.identity.is_none() {
                // Garbage before authentication: this is not one of our clients.
                conn.close(CloseCode::BadRequest);
            }
        }
    }
}

/// The `connected` push / connect result body.
pub fn connected_body(shard: &Shard, conn: &Connection) -> serde_json::Value {
    let user = conn
        .identity
        .as_ref()
        .map(|i| i.user.to_string())
        .unwrap_or_default();
    serde_json::json!({
        "client": shard.node.client_name(conn.client),
        "user": user,
        "node": shard.node.name,
        "ping_interval": shard.node.config.client.ping_interval.0.as_secs(),
    })
}

/// Frames a JSON payload (used for pushes built elsewhere).
pub fn text_frame(json: &[u8]) -> Bytes {
    frame::text(json)
}
