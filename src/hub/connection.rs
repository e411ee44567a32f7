//! One client connection: its state (owned by its shard, plain data) and the task that reads
//! from it. The transport underneath (codec, outbound queue, socket reads, close linger) is
//! `ws/`; what the messages mean (commands on `/ws`, echo on the conformance route) is here.
//!
//! The lean read path: an idle connection owns no read buffer. When the socket is readable the
//! task reads into the shard's scratch buffer and feeds it to the connection's streaming
//! [`Decoder`] (RFC 6455, ferrocast-codec), which unmasks whole frames in place and keeps only a
//! message that spans reads — so an idle connection's decoder is one null pointer, and a frame
//! arriving in many small reads costs linear work. Writes are done by whoever queued data (the
//! fan-out or a command reply) with a vectored non-blocking write; this task only waits for
//! writability when the socket was full.
//!
//! Closing follows RFC 6455 §7: everything decoded before a close frame, an error or EOF is
//! handled first; a peer's close is answered and TCP closed at once; a close the server starts is
//! followed by a half-close and a short wait for the peer's answer, so the peer reads the real
//! code instead of a reset (1006).

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use ferrocast_codec::decoder::Limits;
use ferrocast_codec::{DecodeError, Decoder, Flow, Item, Role};
use tokio::net::TcpStream;

use super::client;
use super::shard::{clock, Shard};
use crate::auth::Identity;
use crate::metrics::{count_protocol_error, metrics};
use crate::protocol::{command, reply, ClientError, CloseCode, Command};
use crate::ws::frame;
use crate::ws::outbound::OutboundQueue;
use crate::ws::socket::{self, ReadStop};

/// Bytes one connection may read per wake-up before yielding to others on the shard.
const READ_BUDGET: usize = 256 * 1024;
/// How long a closing connection may take to take its close frame.
const CLOSE_FLUSH_DEADLINE: Duration = Duration::from_secs(2);

/// What the messages of a connection mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/ws`: JSON commands of protocol v1.
    Commands,
    /// The conformance echo route: every message comes back unchanged, with its opcode.
    Echo,
    /// `GET /sse`: an SSE stream (server → client only). Its output is taken by the response
    /// body hyper polls (`server::sse`), not written by the shard; it has no task of its own.
    Sse,
    /// `/app/{key}`: the Pusher Channels protocol 7 (`crate::pusher`). Same codec, queue and
    /// limits; messages are Pusher JSON, and the fan-out sends publications in Pusher's form.
    Pusher,
}

pub struct Connection {
    /// The socket (none for an SSE stream: hyper holds that one).
    pub stream: Option<Rc<TcpStream>>,
    pub out: OutboundQueue,
    /// The task's waker, for the shard to signal "closing" or "socket full, wait for writability".
    pub waker: Option<Waker>,
    pub client: u64,
    /// `None` until authenticated.
    pub identity: Option<Box<Identity>>,
    pub subs: Vec<crate::protocol::ChannelName>,
    /// The frame decoder: holds a message cut across reads, nothing between messages.
    pub decoder: Decoder,
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
    pub route: Route,
    /// Rate limits: the current one-second window, and the commands and frames seen in it.
    pub window_start: u32,
    pub window_count: u32,
    pub window_frames: u32,
    /// Bytes all output queued for this client may take (`limits.outbound_queue_bytes`).
    pub out_limit: u32,
}

impl Connection {
    pub fn new(
        stream: Option<Rc<TcpStream>>,
        client: u64,
        auth_deadline: u32,
        route: Route,
        out_limit: usize,
    ) -> Self {
        let now = clock();
        Connection {
            stream,
            out: OutboundQueue::default(),
            waker: None,
            client,
            identity: None,
            subs: Vec::new(),
            decoder: Decoder::new(),
            last_seen: now,
            ping_sent: None,
            auth_deadline,
            closing: None,
            custom_close: None,
            blocked: false,
            dirty: false,
            route,
            window_start: now,
            window_count: 0,
            window_frames: 0,
            out_limit: u32::try_from(out_limit).unwrap_or(u32::MAX),
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

    /// Starts a new one-second rate window when the clock moved on.
    fn roll_window(&mut self) {
        let now = clock();
        if self.window_start != now {
            self.window_start = now;
            self.window_count = 0;
            self.window_frames = 0;
        }
    }

    /// A fixed one-second window: over `limit` commands → error 110; at twice the limit the
    /// client is not listening to its errors → close 4006.
    pub fn rate_limit(&mut self, limit: u32) -> Result<(), ClientError> {
        self.roll_window();
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

    /// Queues a frame unless that would take the client's output past `out_limit`: then the
    /// client is a slow consumer and is closed with 4005 (nothing more is queued). Every kind of
    /// output — publications, replies, history, pongs, echoes — goes through this one bound.
    pub fn send(&mut self, frame: Bytes) -> bool {
        if self.closing.is_some() {
            return false;
        }
        if self.out.bytes() + frame.len() > self.out_limit as usize {
            metrics().slow_consumer_closes.inc();
            self.close(CloseCode::SlowConsumer);
            return false;
        }
        self.out.push(frame);
        true
    }

    pub fn queue_text(&mut self, json: &[u8]) {
        self.send(frame::text(json));
    }
}

enum Event {
    Readable,
    Writable,
    Close,
}

/// How the peer ended the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerEnd {
    /// A close frame with this code (1005: none given).
    Closed(u16),
    /// EOF or a reset without a close frame.
    Gone,
}

/// Removes the connection from its shard if its task unwinds (a panic in command handling), so
/// the slot, its subscriptions and the node's connection count are released and the panic is
/// counted.
struct SlotGuard {
    shard: Rc<Shard>,
    key: usize,
    armed: Cell<bool>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if self.armed.get() && std::thread::panicking() {
            metrics().connection_panics.inc();
            crate::metrics::count_close(1011);
            let (shard, key) = (self.shard.clone(), self.key);
            tokio::task::spawn_local(async move {
                // Tell the client (best effort: whatever the socket takes now), then release.
                if let Some(conn) = shard.state.borrow_mut().conns.get_mut(key) {
                    conn.out.drop_unsent();
                    conn.out.push(frame::close(1011, "internal error"));
                    conn.blocked = false;
                }
                shard.flush(key);
                shard.remove_connection(key).await
            });
        }
    }
}

/// The connection's task (spawned by `Shard::register`): run what came with the upgrade, then
/// wait for a socket event, handle it, repeat; then close.
///
/// What the task holds while the connection is idle is the size of this future, paid once per
/// socket (kept small by `idle_task_stays_small`): command handling and the close are boxed, so
/// their state exists only while they run. `read_ahead` (bytes the client sent right behind its
/// upgrade request) is decoded here, before the task exists: it is a view into hyper's whole read
/// buffer (8 KiB or more, even when empty), which the task would otherwise keep for as long as
/// the connection lives.
pub fn run(shard: Rc<Shard>, key: usize, read_ahead: Bytes) -> impl Future<Output = ()> {
    let stream = shard.state.borrow().conns[key]
        .stream
        .clone()
        .expect("a WebSocket connection has its socket");
    let guard = SlotGuard {
        shard,
        key,
        armed: Cell::new(true),
    };
    let mut first = Vec::new();
    let mut end = None;
    if !read_ahead.is_empty() {
        // A client may send its first frames in the same write as the upgrade request: they are
        // input like any other (the socket won't signal them again).
        let mut input = read_ahead.to_vec();
        let mut st = guard.shard.state.borrow_mut();
        end = decode(&guard.shard, &mut st.conns[key], &mut input, &mut first);
    }
    drop(read_ahead);
    // The commands of the last read, run in order before the next wait.
    let mut commands = first.into_iter();
    async move {
        loop {
            while let Some(handling) = next_command(&guard.shard, guard.key, &mut commands) {
                handling.await;
            }
            // What is left when the connection started closing is dropped.
            commands = Vec::new().into_iter();
            // The read's replies, pongs and echoes leave in one write (cork).
            guard.shard.flush(guard.key);
            if end.is_some() {
                break;
            }
            match poll_fn(|cx| poll_event(&guard.shard, guard.key, &stream, cx)).await {
                Event::Close => break,
                Event::Writable => {
                    guard.shard.state.borrow_mut().conns[guard.key].blocked = false;
                }
                Event::Readable => {
                    let (read, peer_end) = read_frames(&guard.shard, guard.key, &stream);
                    commands = read.into_iter();
                    end = peer_end;
                }
            }
        }
        Box::pin(finish(&guard.shard, guard.key, &stream, end)).await;
        guard.armed.set(false);
    }
}

/// What the idle connection waits for: the shard asking it to close, writability while the
/// socket is full, or input.
fn poll_event(
    shard: &Shard,
    key: usize,
    stream: &TcpStream,
    cx: &mut std::task::Context<'_>,
) -> Poll<Event> {
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
}

/// The next command's handling, boxed so the idle connection's future stays small: command
/// handling state exists only while a command runs. `None` when the commands ran out or the
/// connection is closing.
fn next_command<'a>(
    shard: &'a Rc<Shard>,
    key: usize,
    commands: &mut std::vec::IntoIter<Command>,
) -> Option<Pin<Box<impl Future<Output = ()> + 'a>>> {
    if commands.len() == 0 || shard.state.borrow().conns[key].closing.is_some() {
        return None;
    }
    let cmd = commands.next()?;
    Some(Box::pin(client::handle(shard, key, cmd)))
}

/// Sends the close frame (unless the peer vanished), lets it leave, and removes the connection
/// from the shard.
async fn finish(shard: &Rc<Shard>, key: usize, stream: &Rc<TcpStream>, end: Option<PeerEnd>) {
    let max_message = shard.node.config.limits.max_message_size;
    let (code, linger, decoder) = {
        let mut st = shard.state.borrow_mut();
        let conn = &mut st.conns[key];
        let decoder = std::mem::take(&mut conn.decoder);
        let (code, linger) = match (end, conn.closing) {
            (Some(PeerEnd::Gone), _) => (1006, false),
            (Some(PeerEnd::Closed(code)), _) => {
                // Answer the peer's close (RFC 6455 §5.5.1); the server then closes TCP first.
                conn.out.push(frame::close(1000, ""));
                (code, false)
            }
            (None, Some(CloseCode::Gone)) | (None, None) => (1006, false),
            (None, Some(code)) => {
                if code == CloseCode::SlowConsumer {
                    conn.out.drop_unsent();
                }
                let code = match conn.custom_close.take() {
                    Some(custom) => {
                        conn.out.push(frame::close(custom.0, &custom.1));
                        custom.0
                    }
                    None if conn.route == Route::Pusher => {
                        // Pusher clients read close codes their way (4200: reconnect now).
                        let (c, reason) = crate::pusher::protocol::close_code(code);
                        conn.out.push(frame::close(c, reason));
                        c
                    }
                    None => {
                        conn.out.push(frame::close(code.as_u16(), code.reason()));
                        code.as_u16()
                    }
                };
                (code, true)
            }
        };
        (code, linger, decoder)
    };
    if code != 1006 {
        let sent = tokio::time::timeout(CLOSE_FLUSH_DEADLINE, async {
            loop {
                if let Some(conn) = shard.state.borrow_mut().conns.get_mut(key) {
                    conn.blocked = false;
                }
                if shard.flush(key) {
                    return true;
                }
                if stream.writable().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false);
        if sent && linger {
            socket::linger_for_close(stream, decoder, max_message).await;
        }
    }
    crate::metrics::count_close(code);
    shard.remove_connection(key).await;
}

/// Reads everything available (up to a budget) through the shard's scratch buffer and decodes
/// it; stops at the peer's close, an error or EOF, keeping what was decoded before. Returns the
/// complete commands to run, in order, and how the peer ended the connection after them, if it
/// did.
fn read_frames(
    shard: &Rc<Shard>,
    key: usize,
    stream: &TcpStream,
) -> (Vec<Command>, Option<PeerEnd>) {
    let mut commands = Vec::new();
    let mut scratch = shard.scratch.borrow_mut();
    let mut st = shard.state.borrow_mut();
    let conn = &mut st.conns[key];
    if conn.closing.is_some() || conn.decoder.is_done() {
        return (commands, None);
    }
    let mut end = None;
    let stop = socket::read_available(stream, &mut scratch[..], READ_BUDGET, |input| {
        conn.last_seen = clock();
        conn.ping_sent = None;
        end = decode(shard, conn, input, &mut commands);
        end.is_none() && conn.closing.is_none() && !conn.decoder.is_done()
    });
    if stop == ReadStop::Gone && end.is_none() {
        end = Some(PeerEnd::Gone);
    }
    (commands, end)
}

/// Feeds `input` to the connection's decoder: pings are answered, echoes queued (echo route),
/// commands collected; a protocol error closes the connection with its RFC 6455 code after what
/// came before it. Returns the peer's close, if one was decoded.
fn decode(
    shard: &Shard,
    conn: &mut Connection,
    input: &mut [u8],
    commands: &mut Vec<Command>,
) -> Option<PeerEnd> {
    let cfg = &shard.node.config;
    let echo = conn.route == Route::Echo;
    let limits = Limits {
        role: Role::Server,
        max_message: cfg.limits.max_message_size,
    };
    let frames_per_second = if echo {
        cfg.conformance.frames_per_second
    } else {
        cfg.limits.frames_per_second
    };
    conn.roll_window();
    let mut allowance = match frames_per_second {
        0 => u32::MAX,
        n => n.saturating_sub(conn.window_frames),
    };
    let before = allowance;
    let rate = cfg.limits.commands_per_second;
    let mut decoder = std::mem::take(&mut conn.decoder);
    let mut end = None;
    let result = decoder.feed(input, &limits, &mut allowance, |item| {
        match item {
            Item::Text(text) if echo => {
                conn.send(frame::encode(frame::OP_TEXT, text.as_bytes()));
            }
            Item::Binary(data) if echo => {
                conn.send(frame::encode(frame::OP_BINARY, data));
            }
            Item::Text(text) => on_message(conn, text.as_bytes(), commands, rate),
            Item::Binary(data) => on_message(conn, data, commands, rate),
            Item::Ping(payload) => {
                conn.send(frame::encode(frame::OP_PONG, payload));
            }
            Item::Pong(_) => {} // a pong proves liveness like any frame (last_seen)
            Item::Close(close) => end = Some(PeerEnd::Closed(close.map_or(1005, |(c, _)| c))),
        }
        if conn.closing.is_some() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    });
    conn.decoder = decoder;
    conn.window_frames = conn.window_frames.saturating_add(before - allowance);
    if let Err(e) = result {
        let (code, kind) = match e {
            DecodeError::Protocol(_) => (CloseCode::Protocol, "protocol"),
            DecodeError::InvalidUtf8 => (CloseCode::InvalidPayload, "utf8"),
            DecodeError::TooBig if echo => (CloseCode::TooBig, "too_big"),
            // `/ws` keeps the contract's application code for its own size limit.
            DecodeError::TooBig => (CloseCode::MessageTooBig, "too_big"),
            DecodeError::FrameBudget => (CloseCode::TooManyRequests, "frame_rate"),
        };
        count_protocol_error(kind);
        tracing::debug!(client = conn.client, error = %e, "closing: {}", code.as_u16());
        conn.close(code);
    }
    end
}

/// A complete message: one JSON command. A malformed one is answered with 107 and counted; the
/// connection stays open, but malformed frames count against the rate limit like commands.
fn on_message(conn: &mut Connection, msg: &[u8], commands: &mut Vec<Command>, rate: u32) {
    #[cfg(debug_assertions)]
    test_hooks::maybe_panic(msg);
    if conn.route == Route::Pusher {
        // Parsed and answered by the Pusher adapter, in order with the connection's other
        // messages (`client::handle` hands it over).
        commands.push(Command {
            id: None,
            kind: command::CommandKind::Pusher(Bytes::copy_from_slice(msg)),
        });
        return;
    }
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

/// Debug builds only: lets the integration tests prove that a panic inside one connection's
/// handling frees its slot (`FERROCAST_TEST_PANIC=1` and the message `"__panic__"`).
#[cfg(debug_assertions)]
mod test_hooks {
    use std::sync::OnceLock;

    pub fn maybe_panic(msg: &[u8]) {
        static ON: OnceLock<bool> = OnceLock::new();
        if *ON.get_or_init(|| std::env::var_os("FERROCAST_TEST_PANIC").is_some())
            && msg == b"\"__panic__\""
        {
            panic!("test hook: panic inside a connection");
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
    let mut body = serde_json::json!({
        "client": shard.node.client_name(conn.client),
        "user": user,
        "node": shard.node.name,
        "ping_interval": shard.node.config.client.ping_interval.0.as_secs(),
    });
    if conn.route == Route::Sse {
        body["transport"] = serde_json::json!("sse");
    }
    body
}

/// Frames a JSON payload (used for pushes built elsewhere).
pub fn text_frame(json: &[u8]) -> Bytes {
    frame::text(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection's state is this struct and nothing on the heap (the decoder holds a
    /// null pointer between messages, the queue no allocation): keep it small — it is paid a
    /// million times on a full fleet.
    #[test]
    fn connection_state_stays_small() {
        let size = std::mem::size_of::<Connection>();
        eprintln!("size_of::<Connection>() = {size}");
        assert!(size <= 176, "Connection grew to {size} bytes");
        assert_eq!(std::mem::size_of::<Decoder>(), 16);
    }

    /// The size of the future a function returns, without calling it.
    fn future_size<A, B, C, F: std::future::Future>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle connection's task is tokio's task cell (header and trailer, 80 bytes, the whole
    /// cell aligned to 128) around this future: at most 128 bytes keeps the cell at 256 bytes
    /// (672 bytes of future, a 896-byte cell, before command handling and the close were boxed).
    #[test]
    fn idle_task_stays_small() {
        let size = future_size(run);
        eprintln!("connection task future: {size} bytes");
        assert!(
            size <= 128,
            "the connection task's future grew to {size} bytes"
        );
    }
}
