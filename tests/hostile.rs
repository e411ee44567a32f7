//! Hostile clients against the real binary: raw TCP sockets from tokio, hand-built masked frames,
//! and a small reader of the server's (unmasked) frames that reports exact close codes.
//!
//! Every test also runs a well-behaved subscriber on the same shard (`listen.shards = 1`): a
//! `Bystander` that publishes through the server API in a loop and must receive each of its
//! publications within a few seconds while the hostile client misbehaves.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The `Sec-WebSocket-Key` of every raw upgrade, and the accept value RFC 6455 §1.3 gives for it.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The channel of the well-behaved subscriber.
const BYSTANDER_CHANNEL: &str = "chat:bystander";

/// A server with one shard (hostile and well-behaved clients share it) and `extra` merged in.
async fn start(extra: &str) -> Server {
    Server::start(&format!("[listen]\nshards = 1\n{extra}")).await
}

// ---------------------------------------------------------------------------------------------
// Client frames (masked, hand-built).

fn next_mask() -> [u8; 4] {
    static N: AtomicU64 = AtomicU64::new(0x9e37_79b9);
    let n = N.fetch_add(0x6d2b_79f5, Ordering::Relaxed) as u32;
    // Never all-zero: a zero mask would leave the payload readable on the wire.
    (n | 0x0101_0101).to_be_bytes()
}

/// A masked client frame, the length in its shortest form.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = next_mask();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// One final text frame.
fn text(payload: impl AsRef<[u8]>) -> Vec<u8> {
    frame(true, OP_TEXT, payload.as_ref())
}

/// One final text frame holding `value` as JSON.
fn text_json(value: Value) -> Vec<u8> {
    text(value.to_string())
}

/// A close frame with this code.
fn close_code(code: u16) -> Vec<u8> {
    frame(true, OP_CLOSE, &code.to_be_bytes())
}

/// `msg` as one text frame per byte: a text frame without FIN, continuations, the last with FIN.
fn one_byte_fragments(msg: &[u8]) -> Vec<u8> {
    assert!(msg.len() >= 2);
    let mut out = Vec::with_capacity(msg.len() * 7);
    let last = msg.len() - 1;
    for (i, b) in msg.iter().enumerate() {
        let opcode = if i == 0 { OP_TEXT } else { OP_CONT };
        out.extend(frame(i == last, opcode, &[*b]));
    }
    out
}

/// `{"id":ID,"ping":{},"pad":"xxx…"}` of exactly `size` bytes.
fn ping_of_size(id: u64, size: usize) -> Vec<u8> {
    let head = format!("{{\"id\":{id},\"ping\":{{}},\"pad\":\"");
    let tail = "\"}";
    assert!(size >= head.len() + tail.len());
    let mut msg = head.into_bytes();
    msg.resize(size - tail.len(), b'x');
    msg.extend_from_slice(tail.as_bytes());
    assert_eq!(msg.len(), size);
    msg
}

/// The raw HTTP upgrade request for `target` (path and query), with extra header lines.
fn upgrade_request(port: u16, target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

fn ws_target(token: Option<&str>) -> String {
    match token {
        Some(t) => format!("/ws?token={t}"),
        None => "/ws".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Server frames and the raw client.

/// One server frame.
#[derive(Debug)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A server frame at the start of `buf`: `Ok(None)` = incomplete.
fn parse_server_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b1 & 0x80 != 0 {
        return Err(format!("server frame is masked: header {:02x?}", &buf[..2]));
    }
    if b0 & 0x70 != 0 {
        return Err(format!(
            "server frame has RSV bits set: header {:02x?}",
            &buf[..2]
        ));
    }
    let (len, header) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let n = u64::from_be_bytes(buf[2..10].try_into().unwrap());
            if n > (1 << 32) {
                return Err(format!("server frame declares {n} bytes"));
            }
            (n as usize, 10)
        }
        n => (n as usize, 2),
    };
    if buf.len() < header + len {
        return Ok(None);
    }
    let frame = Frame {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0F,
        payload: buf[header..header + len].to_vec(),
    };
    Ok(Some((frame, header + len)))
}

/// What came next on a raw socket.
#[derive(Debug)]
enum Next {
    Frame(Frame),
    /// EOF or a read error (reset): the description.
    Closed(String),
    Timeout,
}

/// An HTTP response head.
#[derive(Debug)]
struct HttpHead {
    status: u16,
    text: String,
}

impl HttpHead {
    fn header(&self, name: &str) -> Option<String> {
        self.text.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// A WebSocket client on a raw TCP socket: whatever bytes the test writes, and a reader of the
/// server's frames.
struct Raw {
    rd: OwnedReadHalf,
    wr: Option<OwnedWriteHalf>,
    buf: Vec<u8>,
    /// Text frames read while looking for something else (for failure messages).
    seen: Vec<String>,
}

impl Raw {
    /// A TCP connection to the public port, from `source` (a loopback IP) when given, with a
    /// small receive buffer when given.
    async fn tcp(server: &Server, source: Option<&str>, recv_buffer: Option<u32>) -> Raw {
        Raw::try_tcp(server, source, recv_buffer)
            .await
            .unwrap_or_else(|e| panic!("TCP connect (source {source:?}): {e}"))
    }

    async fn try_tcp(
        server: &Server,
        source: Option<&str>,
        recv_buffer: Option<u32>,
    ) -> Result<Raw, String> {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        if let Some(ip) = source {
            socket
                .bind(format!("{ip}:0").parse().unwrap())
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        if let Some(size) = recv_buffer {
            socket
                .set_recv_buffer_size(size)
                .map_err(|e| e.to_string())?;
        }
        let addr = format!("127.0.0.1:{}", server.public_port).parse().unwrap();
        let stream = tokio::time::timeout(SHORT, socket.connect(addr))
            .await
            .map_err(|_| "TCP connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).ok();
        let (rd, wr) = stream.into_split();
        Ok(Raw {
            rd,
            wr: Some(wr),
            buf: Vec::new(),
            seen: Vec::new(),
        })
    }

    /// Upgrades (`?token=` when given), with `extra` bytes in the same write as the request;
    /// panics unless the answer is 101 with the right accept key.
    async fn upgrade(server: &Server, token: Option<&str>, extra: &[u8]) -> Raw {
        let mut raw = Raw::tcp(server, None, None).await;
        raw.handshake(server, token, &[], extra).await;
        raw
    }

    /// Sends the upgrade request (+ `extra` in the same write) and checks the 101.
    async fn handshake(
        &mut self,
        server: &Server,
        token: Option<&str>,
        headers: &[(&str, &str)],
        extra: &[u8],
    ) {
        let mut bytes = upgrade_request(server.public_port, &ws_target(token), headers);
        bytes.extend_from_slice(extra);
        self.send(&bytes).await;
        let head = self
            .read_http_head(SHORT)
            .await
            .unwrap_or_else(|e| panic!("upgrade: {e}"));
        assert_eq!(head.status, 101, "upgrade answer:\n{}", head.text);
        assert_eq!(
            head.header("sec-websocket-accept").as_deref(),
            Some(WS_ACCEPT),
            "upgrade answer:\n{}",
            head.text
        );
    }

    /// Upgrades with a token for `user` and reads the `connected` push.
    async fn connect(server: &Server, user: &str) -> Raw {
        let mut raw = Raw::upgrade(server, Some(&token(user, 3600, &[])), &[]).await;
        let push = raw.next_json(SHORT).await;
        assert!(
            push.get("connected").is_some(),
            "expected `connected`, got {push}"
        );
        raw
    }

    fn writer(&mut self) -> &mut OwnedWriteHalf {
        self.wr
            .as_mut()
            .expect("the write half was handed to a writer task")
    }

    /// The write half, for a task that writes while the test reads.
    fn take_writer(&mut self) -> OwnedWriteHalf {
        self.wr.take().expect("write half already taken")
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer()
            .write_all(bytes)
            .await
            .unwrap_or_else(|e| panic!("write {} bytes: {e}", bytes.len()));
    }

    /// Writes, returning false when the server has already closed.
    async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.writer().write_all(bytes).await.is_ok()
    }

    /// Reads more bytes into `buf`; Err = closed (description) or timed out.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<(), Next> {
        let mut tmp = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.rd.read(&mut tmp)).await {
            Err(_) => Err(Next::Timeout),
            Ok(Ok(0)) => Err(Next::Closed(if self.buf.is_empty() {
                "EOF".into()
            } else {
                format!(
                    "EOF with {} unparsed bytes: {:02x?}",
                    self.buf.len(),
                    &self.buf[..self.buf.len().min(32)]
                )
            })),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(())
            }
            Ok(Err(e)) => Err(Next::Closed(format!("read error: {e}"))),
        }
    }

    /// Reads an HTTP response head (the bytes after it stay buffered). Err = the connection
    /// closed (or timed out) before a whole head arrived.
    async fn read_http_head(&mut self, timeout: Duration) -> Result<HttpHead, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                let status = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("bad status line: {text}"));
                return Ok(HttpHead { status, text });
            }
            match self.fill(deadline).await {
                Ok(()) => {}
                Err(Next::Timeout) => {
                    return Err(format!(
                        "no HTTP response head within {timeout:?} (have {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
                Err(other) => {
                    return Err(format!(
                        "closed before a response head: {other:?} (have {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
            }
        }
    }

    /// The body after `head`: `content-length` bytes, else everything up to EOF.
    async fn read_http_body(&mut self, head: &HttpHead, timeout: Duration) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + timeout;
        let want = head
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        loop {
            if let Some(n) = want {
                if self.buf.len() >= n {
                    return self.buf.drain(..n).collect();
                }
            }
            match self.fill(deadline).await {
                Ok(()) => {}
                Err(Next::Closed(_)) if want.is_none() => return std::mem::take(&mut self.buf),
                Err(other) => panic!(
                    "HTTP body ({want:?} bytes) incomplete: {other:?}; head:\n{}",
                    head.text
                ),
            }
        }
    }

    /// The next server frame, EOF or timeout.
    async fn next(&mut self, timeout: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match parse_server_frame(&self.buf) {
                Err(e) => panic!("{e}"),
                Ok(Some((frame, used))) => {
                    self.buf.drain(..used);
                    return Next::Frame(frame);
                }
                Ok(None) => {}
            }
            if let Err(next) = self.fill(deadline).await {
                return next;
            }
        }
    }

    /// The next text message as JSON, skipping pings and pongs; panics on anything else.
    async fn next_json(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Next::Frame(f) if f.opcode == OP_TEXT && f.fin => {
                    let text = String::from_utf8(f.payload).expect("server text is UTF-8");
                    return serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("server sent non-JSON text ({e}): {text}"));
                }
                Next::Frame(f) if f.opcode == OP_PING || f.opcode == OP_PONG => {}
                Next::Frame(f) if f.opcode == OP_CLOSE => panic!(
                    "expected a message, got close {:?}; messages before: {:?}",
                    close_payload(&f.payload),
                    self.seen
                ),
                other => panic!(
                    "expected a message within {timeout:?}, got {other:?}; messages before: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Sends `bytes` and returns the next JSON message.
    async fn next_json_after(&mut self, bytes: Vec<u8>) -> Value {
        self.send(&bytes).await;
        self.next_json(SHORT).await
    }

    /// The next JSON message for which `pred` holds; others are remembered in `seen`.
    async fn json_matching(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.next_json(left).await;
            if pred(&v) {
                return v;
            }
            self.seen.push(v.to_string());
        }
    }

    /// Reads until the server's close frame and returns (code, reason): 1005 when it had no
    /// payload. Text frames before it are kept in `seen`. Panics on EOF or timeout.
    async fn expect_close(&mut self, timeout: Duration) -> (u16, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Next::Frame(f) if f.opcode == OP_CLOSE => {
                    return close_payload(&f.payload).unwrap_or_else(|e| panic!("{e}"))
                }
                Next::Frame(f) if f.opcode == OP_TEXT => {
                    let mut t = String::from_utf8_lossy(&f.payload).into_owned();
                    t.truncate(200);
                    self.seen.push(t);
                }
                Next::Frame(f) if f.opcode == OP_PING || f.opcode == OP_PONG => {}
                Next::Frame(f) => panic!("unexpected server frame {f:?}"),
                Next::Closed(why) => panic!(
                    "expected a close frame, the connection ended without one ({why}: a client \
                     sees 1006); messages before: {:?}",
                    self.seen
                ),
                Next::Timeout => panic!(
                    "no close frame within {timeout:?}; messages before: {:?}",
                    last_few(&self.seen)
                ),
            }
        }
    }

    /// After the server's close frame: nothing more arrives and TCP is closed within `timeout`.
    async fn expect_eof(&mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        match self.next(timeout).await {
            Next::Closed(_) => started.elapsed(),
            Next::Frame(f) => panic!("a frame after the close frame: {f:?}"),
            Next::Timeout => panic!("TCP still open {timeout:?} after the close frame"),
        }
    }

    /// Replies to the server's close with our own and checks that TCP is closed promptly.
    async fn finish_close(&mut self) {
        if let Some(wr) = self.wr.as_mut() {
            let _ = wr.write_all(&close_code(1000)).await;
        }
        self.expect_eof(SHORT).await;
    }
}

fn last_few(seen: &[String]) -> &[String] {
    &seen[seen.len().saturating_sub(5)..]
}

/// A close frame's payload: (code, reason), 1005 when empty.
fn close_payload(payload: &[u8]) -> Result<(u16, String), String> {
    match payload.len() {
        0 => Ok((1005, String::new())),
        1 => Err(format!(
            "server close frame with a 1-byte payload: {payload:02x?}"
        )),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let reason = String::from_utf8(payload[2..].to_vec())
                .map_err(|_| format!("close {code} with a reason that is not UTF-8"))?;
            Ok((code, reason))
        }
    }
}

/// Writes `bytes` in a task (the test reads meanwhile); write errors (the server closed) end it.
/// The write half stays open (no FIN) until the read half is dropped.
fn spawn_write(wr: OwnedWriteHalf, bytes: Vec<u8>) -> JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        let mut wr = wr;
        let r = wr.write_all(&bytes).await.map_err(|e| e.to_string());
        wr.forget();
        r
    })
}

/// Writes `chunk` every `tick` until `stop` is set, a write fails or `max` passes: a flood at a
/// steady rate. Returns how many chunks were written.
fn spawn_pacer(
    wr: OwnedWriteHalf,
    chunk: Vec<u8>,
    tick: Duration,
    max: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut wr = wr;
        let started = tokio::time::Instant::now();
        let mut next = started;
        let mut chunks = 0u64;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < max {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
            chunks += 1;
            next += tick;
            tokio::time::sleep_until(next).await;
        }
        wr.forget();
        chunks
    })
}

// ---------------------------------------------------------------------------------------------
// The well-behaved subscriber.

/// A subscriber on the hostile client's shard that publishes to itself through the server API,
/// one publication at a time, each of which must arrive within `SHORT`.
struct Bystander {
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<(u64, Duration)>>,
}

impl Drop for Bystander {
    /// A test that failed before `finish` stops its bystander too (the server is going away).
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Bystander {
    async fn start(server: &Server) -> Bystander {
        Bystander::start_with(server, &[]).await
    }

    /// With extra upgrade headers (e.g. an allowed `Origin`).
    async fn start_with(server: &Server, headers: &[(&str, &str)]) -> Bystander {
        let url = server.ws_url(Some(&token("bystander", 3600, &[])));
        let mut client = ws_connect_with(&url, headers, None).await;
        let push = client.recv_json(SHORT).await;
        assert!(push.get("connected").is_some(), "bystander: {push}");
        client.subscribe(1, BYSTANDER_CHANNEL).await;
        let publish_url = format!("{}/api/publish", server.public_url());
        let auth = format!("apikey {}", server.api_key);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let http = http();
            let mut n = 0u64;
            let mut worst = Duration::ZERO;
            loop {
                // One more round after `stop`: the node still delivers after the attack.
                let last = flag.load(Ordering::Relaxed);
                n += 1;
                let sent = Instant::now();
                let body = json!({"channel": BYSTANDER_CHANNEL, "data": {"n": n}});
                let resp = http
                    .post(&publish_url)
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("bystander: API publish #{n}: {e}"));
                let status = resp.status().as_u16();
                assert_eq!(status, 200, "bystander: API publish #{n}");
                let (v, raw) = client.recv_pub(BYSTANDER_CHANNEL, SHORT).await;
                assert_eq!(v["pub"]["data"]["n"], json!(n), "bystander: got {raw}");
                worst = worst.max(sent.elapsed());
                if last {
                    client.close().await;
                    return (n, worst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Bystander {
            stop,
            task: Some(task),
        }
    }

    /// Stops the loop (after one last round) and re-raises its panic, if any.
    async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let task = self.task.take().expect("finish once");
        match tokio::time::timeout(Duration::from_secs(20), task).await {
            Err(_) => panic!("bystander did not finish"),
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("bystander task: {e}"),
            Ok(Ok((rounds, worst))) => {
                eprintln!("bystander: {rounds} publications received, slowest {worst:?}");
                assert!(rounds >= 1);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handshakes.

/// Opens a TCP connection and writes `request` one byte per `step` (nothing at all when empty);
/// returns when the server closes it: (time since connect, bytes sent, bytes received).
async fn trickle(
    port: u16,
    request: Vec<u8>,
    step: Duration,
    give_up: Duration,
) -> Result<(Duration, usize, String), String> {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).ok();
    let (mut rd, mut wr) = stream.into_split();
    let mut sent = 0usize;
    let mut got = Vec::new();
    let mut next_write = tokio::time::Instant::now();
    let mut tmp = [0u8; 4096];
    loop {
        if started.elapsed() > give_up {
            return Err(format!(
                "still open after {give_up:?}, {sent} bytes sent, received {:?}",
                String::from_utf8_lossy(&got)
            ));
        }
        tokio::select! {
            r = rd.read(&mut tmp) => match r {
                Ok(0) | Err(_) => {
                    return Ok((started.elapsed(), sent, String::from_utf8_lossy(&got).into_owned()))
                }
                Ok(n) => got.extend_from_slice(&tmp[..n]),
            },
            _ = tokio::time::sleep_until(next_write) => {
                if sent < request.len() {
                    if wr.write_all(&request[sent..sent + 1]).await.is_err() {
                        return Ok((started.elapsed(), sent, String::from_utf8_lossy(&got).into_owned()));
                    }
                    sent += 1;
                }
                next_write += step;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_handshakes_are_closed_at_handshake_timeout() {
    let server = start("[limits]\nhandshake_timeout = \"2s\"\n").await;
    let by = Bystander::start(&server).await;
    let query = "ferrocast_handshake_failures_total{reason=\"timeout\"}";
    let before = server.metric_value(query).await;

    // Five request heads trickled one byte per 500 ms, and one connection that sends nothing.
    let request = upgrade_request(
        server.public_port,
        &ws_target(Some(&token("loris", 3600, &[]))),
        &[],
    );
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(tokio::spawn(trickle(
            server.public_port,
            request.clone(),
            Duration::from_millis(500),
            Duration::from_secs(8),
        )));
    }
    tasks.push(tokio::spawn(trickle(
        server.public_port,
        Vec::new(),
        Duration::from_millis(500),
        Duration::from_secs(8),
    )));
    for (i, task) in tasks.into_iter().enumerate() {
        let (after, sent, got) = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("slowloris #{i}: {e}"));
        assert!(
            after >= Duration::from_millis(1500) && after <= Duration::from_millis(4500),
            "slowloris #{i} closed {after:?} after connect (handshake_timeout 2s), {sent} bytes sent"
        );
        assert!(
            !got.starts_with("HTTP/1.1 101"),
            "slowloris #{i} was upgraded: {got:?}"
        );
        eprintln!("slowloris #{i}: closed after {after:?}, {sent} bytes sent, got {got:?}");
    }
    server
        .wait_metric(query, |v| v >= before + 6.0, SHORT)
        .await;
    // A normal handshake still works.
    Raw::connect(&server, "after").await;
    by.finish().await;
}

/// Sends an upgrade request whose head is padded to about `head_len` bytes: Ok = upgraded,
/// Err = refused with this HTTP status (0 = connection closed without an answer).
async fn upgrade_with_head_of(server: &Server, head_len: usize) -> Result<(), (u16, String)> {
    let t = token("pad", 3600, &[]);
    let bare = upgrade_request(server.public_port, &ws_target(Some(&t)), &[("X-Pad", "")]).len();
    let pad = "a".repeat(head_len - bare);
    let req = upgrade_request(server.public_port, &ws_target(Some(&t)), &[("X-Pad", &pad)]);
    assert_eq!(req.len(), head_len);
    let mut raw = Raw::tcp(server, None, None).await;
    let _ = raw.try_send(&req).await;
    match raw.read_http_head(SHORT).await {
        Ok(head) if head.status == 101 => Ok(()),
        Ok(head) => Err((head.status, head.text)),
        Err(closed) => {
            assert!(closed.starts_with("closed"), "{closed}");
            Err((0, closed))
        }
    }
}

/// A head over `max_header_bytes` is refused with 431 or a closed connection, never upgraded,
/// and counted as a `bad_request` handshake failure.
async fn assert_head_limit(server: &Server, limit: usize) {
    let query = "ferrocast_handshake_failures_total{reason=\"bad_request\"}";
    let before = server.metric_value(query).await;
    upgrade_with_head_of(server, limit - 1024)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "a head of {} bytes (limit {limit}) refused: {e:?}",
                limit - 1024
            )
        });
    for len in [limit + 1024, 4 * limit] {
        match upgrade_with_head_of(server, len).await {
            Ok(()) => {
                panic!("a request head of {len} bytes was upgraded (max_header_bytes {limit})")
            }
            Err((status, text)) => assert!(
                status == 431 || status == 0,
                "a head of {len} bytes: expected 431 or a closed connection, got:\n{text}"
            ),
        }
    }
    server
        .wait_metric(query, |v| v >= before + 2.0, SHORT)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_head_over_max_header_bytes_is_refused_431_or_closed() {
    let server = start("[limits]\nmax_header_bytes = 8192\n").await;
    let by = Bystander::start(&server).await;
    assert_head_limit(&server, 8192).await;
    by.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_max_header_bytes_is_16384() {
    let server = start("").await;
    let by = Bystander::start(&server).await;
    assert_head_limit(&server, 16384).await;
    by.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_from_a_foreign_origin_is_403() {
    let server = start("[auth]\nallowed_origins = [\"https://a.example\"]\n").await;
    let by = Bystander::start_with(&server, &[("Origin", "https://a.example")]).await;
    let t = token("o", 3600, &[]);
    for origin in [
        "https://b.example",
        "null",
        "https://a.example.evil.example",
        "http://a.example",
    ] {
        let mut raw = Raw::tcp(&server, None, None).await;
        raw.send(&upgrade_request(
            server.public_port,
            &ws_target(Some(&t)),
            &[("Origin", origin)],
        ))
        .await;
        let head = raw
            .read_http_head(SHORT)
            .await
            .unwrap_or_else(|e| panic!("Origin {origin}: {e}"));
        assert_eq!(head.status, 403, "Origin {origin}:\n{}", head.text);
    }
    let mut raw = Raw::tcp(&server, None, None).await;
    raw.handshake(&server, Some(&t), &[("Origin", "https://a.example")], &[])
        .await;
    let push = raw.next_json(SHORT).await;
    assert!(push.get("connected").is_some(), "{push}");
    by.finish().await;
}

/// Upgrades from `source`: Ok(raw after `connected`) or Err((status, body)).
async fn upgrade_from(server: &Server, source: &str) -> Result<Raw, (u16, String)> {
    let mut raw = Raw::tcp(server, Some(source), None).await;
    raw.send(&upgrade_request(
        server.public_port,
        &ws_target(Some(&token("ip", 3600, &[]))),
        &[],
    ))
    .await;
    let head = match raw.read_http_head(SHORT).await {
        Ok(head) => head,
        Err(e) => return Err((0, e)),
    };
    if head.status == 101 {
        let push = raw.next_json(SHORT).await;
        assert!(push.get("connected").is_some(), "{push}");
        return Ok(raw);
    }
    let body = raw.read_http_body(&head, SHORT).await;
    Err((head.status, String::from_utf8_lossy(&body).into_owned()))
}

/// A refusal must be 429 or 503 with a JSON error body.
fn assert_refusal(status: u16, body: &str, what: &str) {
    assert!(
        status == 429 || status == 503,
        "{what}: expected HTTP 429 or 503, got {status} {body:?}"
    );
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {body:?}"));
    assert!(
        v["error"]["code"].is_number() && v["error"]["message"].is_string(),
        "{what}: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_over_the_limit_are_refused() {
    let server = start("[limits]\nmax_connections_per_ip = 3\n").await;
    let by = Bystander::start(&server).await; // from 127.0.0.1
    let mut held = Vec::new();
    for i in 0..3 {
        match upgrade_from(&server, "127.0.0.2").await {
            Ok(raw) => held.push(raw),
            Err(e) => panic!("connection #{i} from 127.0.0.2 refused under the limit: {e:?}"),
        }
    }
    match upgrade_from(&server, "127.0.0.2").await {
        Ok(_) => panic!("a 4th connection from 127.0.0.2 was accepted (max_connections_per_ip 3)"),
        Err((status, body)) => assert_refusal(status, &body, "4th connection from 127.0.0.2"),
    }
    // Another address is not affected.
    upgrade_from(&server, "127.0.0.3")
        .await
        .unwrap_or_else(|e| panic!("127.0.0.3 refused: {e:?}"));
    // One of the three leaves: room again.
    let mut first = held.remove(0);
    first.send(&close_code(1000)).await;
    let (code, _) = first.expect_close(SHORT).await;
    assert_eq!(code, 1000);
    first.expect_eof(SHORT).await;
    let deadline = Instant::now() + SHORT;
    loop {
        match upgrade_from(&server, "127.0.0.2").await {
            Ok(raw) => {
                held.push(raw);
                break;
            }
            Err(e) if Instant::now() > deadline => {
                panic!("no room from 127.0.0.2 after one of its connections closed: {e:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    by.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_per_ip_over_the_rate_are_refused() {
    let server = start("[limits]\nhandshakes_per_ip_per_second = 5\n").await;
    let by = Bystander::start(&server).await; // from 127.0.0.1
    let (mut accepted, mut refused) = (Vec::new(), 0);
    for _ in 0..15 {
        match upgrade_from(&server, "127.0.0.4").await {
            Ok(raw) => accepted.push(raw),
            Err((status, body)) => {
                assert_refusal(status, &body, "handshake over the per-IP rate");
                refused += 1;
            }
        }
    }
    assert!(
        !accepted.is_empty() && accepted.len() <= 10,
        "15 handshakes at once with handshakes_per_ip_per_second = 5: {} accepted",
        accepted.len()
    );
    assert!(refused >= 5, "only {refused} of 15 refused");
    // Another address is not affected.
    upgrade_from(&server, "127.0.0.5")
        .await
        .unwrap_or_else(|e| panic!("127.0.0.5 refused: {e:?}"));
    by.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Frame floods.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tiny_frames_per_second_close_4006() {
    // Commands are not what is limited here: frames are (limits.frames_per_second, default 400).
    let server = start("[limits]\ncommands_per_second = 100000\n").await;
    let by = Bystander::start(&server).await;
    let mut raw = Raw::connect(&server, "flooder").await;

    // 100 frames in one write are within the limit: all answered.
    let burst: Vec<u8> = (1..=100u64)
        .flat_map(|id| text_json(json!({"id": id, "ping": {}})))
        .collect();
    raw.send(&burst).await;
    for id in 1..=100u64 {
        let v = raw.next_json(SHORT).await;
        assert_eq!(v["id"], json!(id), "{v}");
        assert!(v.get("result").is_some(), "{v}");
    }

    // 10,000 frames per second: 100 every 10 ms.
    flood_until_4006(raw, "tiny frames", text(r#"{"ping":{}}"#)).await;
    server
        .wait_metric(
            "ferrocast_disconnects_total{code=\"4006\"}",
            |v| v >= 1.0,
            SHORT,
        )
        .await;
    by.finish().await;
}

/// Sends `frame` 10,000 times a second (100 every 10 ms) until the server closes: 4006 within
/// the default limit of 400 frames per second, then EOF.
async fn flood_until_4006(mut raw: Raw, what: &str, one: Vec<u8>) {
    let chunk: Vec<u8> = (0..100).flat_map(|_| one.iter().copied()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let flood = spawn_pacer(
        raw.take_writer(),
        chunk,
        Duration::from_millis(10),
        Duration::from_secs(4),
        stop.clone(),
    );
    let (code, reason) = raw.expect_close(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let chunks = flood.await.unwrap();
    eprintln!(
        "{what} flood: close {code} {reason:?} after about {} frames",
        chunks * 100
    );
    assert_eq!(code, 4006, "{what} flood: close reason {reason:?}");
    raw.expect_eof(SHORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pong_and_empty_continuation_floods_close_4006() {
    let server = start("").await;
    let by = Bystander::start(&server).await;
    let mut raw = Raw::connect(&server, "pinger").await;

    // A few pings: each answered by a pong with its payload.
    for i in 0..10u8 {
        raw.send(&frame(true, OP_PING, &[b'p', i])).await;
        match raw.next(SHORT).await {
            Next::Frame(f) if f.opcode == OP_PONG => assert_eq!(f.payload, vec![b'p', i]),
            other => panic!("expected a pong for ping {i}, got {other:?}"),
        }
    }

    // 10,000 pings per second.
    flood_until_4006(raw, "ping", frame(true, OP_PING, b"flood")).await;

    // Unsolicited pongs, and empty continuations of a message that never ends, count alike.
    let raw = Raw::connect(&server, "ponger").await;
    flood_until_4006(raw, "pong", frame(true, OP_PONG, b"flood")).await;
    let mut raw = Raw::connect(&server, "continuer").await;
    raw.send(&frame(false, OP_TEXT, br#"{"id":1,"#)).await;
    flood_until_4006(raw, "empty continuation", frame(false, OP_CONT, b"")).await;
    by.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_fragments_up_to_max_message_size_are_handled_when_the_frame_rate_allows() {
    let server = start("[limits]\nframes_per_second = 100000\n").await;
    let by = Bystander::start(&server).await;

    // Exactly max_message_size (65536) bytes in 65,536 frames of one byte.
    let mut raw = Raw::connect(&server, "fragments").await;
    let writer = spawn_write(
        raw.take_writer(),
        one_byte_fragments(&ping_of_size(1, 65536)),
    );
    let reply = raw
        .json_matching(Duration::from_secs(15), |v| v.get("id").is_some())
        .await;
    assert_eq!(reply["id"], json!(1), "{reply}");
    assert!(reply.get("result").is_some(), "{reply}");
    writer.await.unwrap().expect("all fragments written");

    // One byte more: 4009.
    let mut raw = Raw::connect(&server, "fragments-over").await;
    let writer = spawn_write(
        raw.take_writer(),
        one_byte_fragments(&ping_of_size(2, 65537)),
    );
    let (code, reason) = raw.expect_close(Duration::from_secs(15)).await;
    assert_eq!(
        code, 4009,
        "close reason {reason:?}; messages before: {:?}",
        raw.seen
    );
    assert!(
        raw.seen.iter().all(|m| !m.contains("\"id\":2")),
        "the oversized message was answered: {:?}",
        raw.seen
    );
    writer.abort();
    by.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_fragments_at_the_default_frame_rate_close_4006() {
    let server = start("").await;
    let by = Bystander::start(&server).await;
    let mut raw = Raw::connect(&server, "fragments").await;
    let writer = spawn_write(
        raw.take_writer(),
        one_byte_fragments(&ping_of_size(1, 65536)),
    );
    let (code, reason) = raw.expect_close(Duration::from_secs(10)).await;
    assert_eq!(
        code, 4006,
        "close reason {reason:?}; messages before: {:?}",
        raw.seen
    );
    writer.abort();
    raw.expect_eof(SHORT).await;
    by.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Frame-level protocol errors.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_length_2_pow_63_closes_1002() {
    let server = start("").await;
    let by = Bystander::start(&server).await;

    // 64-bit length with the most significant bit set: a protocol error (RFC 6455 §5.2).
    let mut raw = Raw::connect(&server, "huge").await;
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 63).to_be_bytes());
    header.extend_from_slice(&next_mask());
    raw.send(&header).await;
    let (code, reason) = raw.expect_close(SHORT).await;
    assert_eq!(code, 1002, "length 2^63: close reason {reason:?}");
    raw.finish_close().await;

    // 2^63 - 1 and 2^40: legal encodings, just far over max_message_size: 4009 from the header.
    for len in [(1u64 << 63) - 1, 1u64 << 40] {
        let mut raw = Raw::connect(&server, "big").await;
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&next_mask());
        raw.send(&header).await;
        let (code, reason) = raw.expect_close(SHORT).await;
        assert_eq!(code, 4009, "declared length {len}: close reason {reason:?}");
        raw.finish_close().await;
    }
    by.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_level_violations_close_1002() {
    let server = start("").await;
    let by = Bystander::start(&server).await;

    // Control: a fragmented message with a ping and an empty continuation in the middle is fine.
    let mut raw = Raw::connect(&server, "control").await;
    let mut bytes = frame(false, OP_TEXT, br#"{"id":1,"#);
    bytes.extend(frame(true, OP_PING, b"mid"));
    bytes.extend(frame(false, OP_CONT, b""));
    bytes.extend(frame(false, OP_CONT, br#""ping":"#));
    bytes.extend(frame(true, OP_CONT, b"{}}"));
    raw.send(&bytes).await;
    match raw.next(SHORT).await {
        Next::Frame(f) if f.opcode == OP_PONG => assert_eq!(f.payload, b"mid"),
        other => panic!("expected the pong first, got {other:?}"),
    }
    let reply = raw.next_json(SHORT).await;
    assert_eq!(reply["id"], json!(1), "{reply}");
    assert!(reply.get("result").is_some(), "{reply}");

    let ping = br#"{"id":1,"ping":{}}"#;
    let with_b0 = |b0: u8| {
        let mut f = text(ping);
        f[0] = b0;
        f
    };
    let unmasked = {
        let mut f = vec![0x81, ping.len() as u8];
        f.extend_from_slice(ping);
        f
    };
    let mut data_in_fragmented = frame(false, OP_TEXT, br#"{"id":1,"#);
    data_in_fragmented.extend(text(ping));
    let mut binary_in_fragmented = frame(false, OP_TEXT, br#"{"id":1,"#);
    binary_in_fragmented.extend(frame(true, OP_BINARY, ping));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("RSV1 set", with_b0(0x80 | 0x40 | OP_TEXT)),
        ("RSV2 set", with_b0(0x80 | 0x20 | OP_TEXT)),
        ("RSV3 set", with_b0(0x80 | 0x10 | OP_TEXT)),
        ("RSV1 on a ping", {
            let mut f = frame(true, OP_PING, b"x");
            f[0] |= 0x40;
            f
        }),
        ("reserved opcode 0x3", with_b0(0x80 | 0x3)),
        ("reserved opcode 0x7", with_b0(0x80 | 0x7)),
        ("reserved opcode 0xB", frame(true, 0xB, b"x")),
        ("reserved opcode 0xF", frame(true, 0xF, b"")),
        ("unmasked text frame", unmasked),
        ("fragmented ping", frame(false, OP_PING, b"x")),
        ("ping of 126 bytes", frame(true, OP_PING, &[b'x'; 126])),
        ("close of 126 bytes", {
            let mut p = 1000u16.to_be_bytes().to_vec();
            p.extend_from_slice(&[b'r'; 124]);
            frame(true, OP_CLOSE, &p)
        }),
        ("continuation without a start", frame(true, OP_CONT, ping)),
        ("text frame inside a fragmented message", data_in_fragmented),
        (
            "binary frame inside a fragmented message",
            binary_in_fragmented,
        ),
    ];
    for (what, bytes) in cases {
        let mut raw = Raw::connect(&server, "violator").await;
        raw.send(&bytes).await;
        let (code, reason) = raw.expect_close(SHORT).await;
        assert_eq!(
            code,
            1002,
            "{what} ({:02x?}…): close reason {reason:?}; messages before: {:?}",
            &bytes[..bytes.len().min(16)],
            raw.seen
        );
        raw.finish_close().await;
    }
    by.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_from_the_client_are_checked() {
    let server = start("").await;
    let by = Bystander::start(&server).await;

    // A valid 1000: echoed, then TCP is closed.
    let mut raw = Raw::connect(&server, "closer").await;
    raw.send(&close_code(1000)).await;
    let (code, reason) = raw.expect_close(SHORT).await;
    assert_eq!(code, 1000, "echo of 1000: reason {reason:?}");
    raw.expect_eof(SHORT).await;

    // An empty close (no code) is valid: a close frame comes back, then EOF.
    let mut raw = Raw::connect(&server, "closer").await;
    raw.send(&frame(true, OP_CLOSE, b"")).await;
    let (code, reason) = raw.expect_close(SHORT).await;
    assert!(
        code == 1000 || code == 1005,
        "echo of an empty close: {code} {reason:?}"
    );
    raw.expect_eof(SHORT).await;

    // Other valid codes, with a reason: echoed (the same code, or 1000).
    for sent in [1001u16, 1003, 1007, 1011, 3000, 4000, 4999] {
        let mut raw = Raw::connect(&server, "closer").await;
        let mut payload = sent.to_be_bytes().to_vec();
        payload.extend_from_slice("bye é".as_bytes());
        raw.send(&frame(true, OP_CLOSE, &payload)).await;
        let (code, reason) = raw.expect_close(SHORT).await;
        assert!(
            code == sent || code == 1000,
            "client close {sent}: server answered {code} {reason:?}"
        );
        raw.expect_eof(SHORT).await;
    }

    // Invalid: a 1-byte payload, and codes that must not appear on the wire.
    let mut invalid: Vec<(String, Vec<u8>)> = vec![("1-byte payload".into(), vec![0x03])];
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        invalid.push((format!("code {code}"), code.to_be_bytes().to_vec()));
    }
    for (what, payload) in invalid {
        let mut raw = Raw::connect(&server, "closer").await;
        raw.send(&frame(true, OP_CLOSE, &payload)).await;
        let (code, reason) = raw.expect_close(SHORT).await;
        assert_eq!(
            code, 1002,
            "client close with {what} ({payload:02x?}): reason {reason:?}"
        );
        raw.expect_eof(SHORT).await;
    }
    by.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_1007_even_mid_fragmented_message() {
    let server = start("").await;
    let by = Bystander::start(&server).await;
    let prefix = br#"{"id":1,"ping":{},"x":""#;

    // Valid UTF-8 split across fragments is fine: é (C3 A9) and 😀 (F0 9F 98 80).
    let mut raw = Raw::connect(&server, "utf8").await;
    let mut bytes = frame(false, OP_TEXT, &[&prefix[..], &[0xC3]].concat());
    bytes.extend(frame(false, OP_CONT, &[0xA9, 0xF0]));
    bytes.extend(frame(false, OP_CONT, &[0x9F]));
    bytes.extend(frame(true, OP_CONT, &[0x98, 0x80, b'"', b'}']));
    raw.send(&bytes).await;
    let reply = raw.next_json(SHORT).await;
    assert_eq!(reply["id"], json!(1), "{reply}");
    assert!(reply.get("result").is_some(), "{reply}");

    // Invalid sequences in one text frame.
    let sequences: [(&str, &[u8]); 5] = [
        ("0xFF", &[0xFF]),
        ("lone continuation byte", &[0x80]),
        ("overlong '/'", &[0xC0, 0xAF]),
        ("UTF-16 surrogate", &[0xED, 0xA0, 0x80]),
        ("above U+10FFFF", &[0xF4, 0x90, 0x80, 0x80]),
    ];
    for (what, seq) in sequences {
        let mut raw = Raw::connect(&server, "utf8").await;
        raw.send(&text([&prefix[..], seq, b"\"}"].concat())).await;
        let (code, reason) = raw.expect_close(SHORT).await;
        assert_eq!(
            code, 1007,
            "{what} in a text frame: reason {reason:?}; messages before: {:?}",
            raw.seen
        );
        raw.finish_close().await;
    }

    // Fail fast: invalid bytes in the first fragment / a middle fragment of a message whose end
    // never comes.
    let mut first = Raw::connect(&server, "utf8").await;
    first
        .send(&frame(
            false,
            OP_TEXT,
            &[&prefix[..], &[0xC3, 0x28]].concat(),
        ))
        .await;
    let (code, reason) = first.expect_close(SHORT).await;
    assert_eq!(
        code, 1007,
        "C3 28 in an unfinished first fragment: reason {reason:?}"
    );
    first.finish_close().await;

    let mut middle = Raw::connect(&server, "utf8").await;
    let mut bytes = frame(false, OP_TEXT, &[&prefix[..], b"ab"].concat());
    bytes.extend(frame(false, OP_CONT, b"cd"));
    bytes.extend(frame(false, OP_CONT, &[b'e', 0xFF, 0xFE]));
    middle.send(&bytes).await;
    let (code, reason) = middle.expect_close(SHORT).await;
    assert_eq!(
        code, 1007,
        "FF FE in an unfinished middle fragment: reason {reason:?}"
    );
    middle.finish_close().await;
    by.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Hostile payloads.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_answered_107_without_a_crash() {
    let server = start("[limits]\nmax_message_size = 262144\n").await;
    let by = Bystander::start(&server).await;
    let deep_open = "[".repeat(100_000);

    // Authenticated: error 107 (malformed JSON, no id); the connection stays open.
    let mut raw = Raw::connect(&server, "deep").await;
    raw.send(&text(&deep_open)).await;
    let reply = raw.next_json(SHORT).await;
    assert_eq!(reply["error"]["code"], json!(107), "{reply}");
    assert!(reply.get("id").is_none(), "{reply}");
    let reply = raw
        .next_json_after(text_json(json!({"id": 2, "ping": {}})))
        .await;
    assert_eq!(reply["id"], json!(2), "{reply}");

    // Balanced nesting inside an ignored field and inside publication data: answered (107 or a
    // result), never a crash.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let frames = [
        (3, format!(r#"{{"id":3,"ping":{{}},"x":{deep}}}"#)),
        (
            4,
            format!(r#"{{"id":4,"publish":{{"channel":"chat:deep","data":{deep}}}}}"#),
        ),
    ];
    for (id, msg) in frames {
        raw.send(&text(&msg)).await;
        let reply = raw.next_json(SHORT).await;
        let ok = reply["id"] == json!(id) && reply.get("result").is_some();
        let refused = reply["error"]["code"] == json!(107);
        assert!(ok || refused, "deep frame {id}: {reply}");
        eprintln!("deep frame {id}: {reply}");
    }
    let reply = raw
        .next_json_after(text_json(json!({"id": 5, "ping": {}})))
        .await;
    assert_eq!(reply["id"], json!(5), "{reply}");

    // Before authentication: (107 and) close 4004.
    let mut anon = Raw::upgrade(&server, None, &[]).await;
    anon.send(&text(&deep_open)).await;
    let (code, reason) = anon.expect_close(SHORT).await;
    assert_eq!(
        code, 4004,
        "deep JSON before authentication: reason {reason:?}"
    );
    for m in &anon.seen {
        let v: Value = serde_json::from_str(m).unwrap();
        assert_eq!(v["error"]["code"], json!(107), "before the 4004: {m}");
    }
    eprintln!(
        "deep JSON before authentication: {:?} then close {code}",
        anon.seen
    );
    anon.finish_close().await;

    // Still alive.
    let (status, _) = server.admin_get("/health/live").await;
    assert_eq!(status, 200);
    by.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_channel_name_closes_4009() {
    let server = start("").await;
    let by = Bystander::start(&server).await;
    let mut raw = Raw::connect(&server, "longname").await;

    // 300 bytes: just a bad name (107), the connection stays.
    let code = raw
        .next_json_after(text_json(
            json!({"id": 1, "subscribe": {"channel": format!("chat:{}", "a".repeat(300))}}),
        ))
        .await;
    assert_eq!(code["id"], json!(1), "{code}");
    assert_eq!(code["error"]["code"], json!(107), "{code}");

    // A megabyte: over max_message_size (65536).
    let name = format!("chat:{}", "a".repeat(1 << 20));
    let msg = json!({"id": 2, "subscribe": {"channel": name}}).to_string();
    let writer = spawn_write(raw.take_writer(), text(&msg));
    let (code, reason) = raw.expect_close(SHORT).await;
    assert_eq!(
        code, 4009,
        "close reason {reason:?}; messages before: {:?}",
        raw.seen
    );
    writer.abort();
    by.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_that_never_reads_is_closed_4005() {
    let server = start("[limits]\noutbound_queue_bytes = 65536\nmax_message_size = 16384\n").await;
    let by = Bystander::start(&server).await;
    let ch = "chat:firehose";
    let before = server
        .metric_value("ferrocast_slow_consumer_closes_total")
        .await;

    // A small receive buffer; subscribes, then never reads.
    let mut slow = Raw::tcp(&server, None, Some(4096)).await;
    slow.handshake(
        &server,
        Some(&token("slow", 3600, &[])),
        &[],
        &text_json(json!({"id": 1, "subscribe": {"channel": ch}})),
    )
    .await;
    let reply = slow.json_matching(SHORT, |v| v.get("id").is_some()).await;
    assert!(reply.get("result").is_some(), "{reply}");

    // 1 KiB publications from four concurrent publishers until the server gives up on it.
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let url = format!("{}/api/publish", server.public_url());
    let auth = format!("apikey {}", server.api_key);
    let mut publishers = Vec::new();
    for _ in 0..4 {
        let (stop, published, url, auth) =
            (stop.clone(), published.clone(), url.clone(), auth.clone());
        publishers.push(tokio::spawn(async move {
            let http = http();
            let body = json!({"channel": ch, "data": {"pad": "x".repeat(1024)}}).to_string();
            while !stop.load(Ordering::Relaxed) {
                let resp = http
                    .post(&url)
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("API publish");
                assert_eq!(resp.status().as_u16(), 200);
                published.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    let closed = eventually(Duration::from_secs(30), || async {
        server
            .metric_value("ferrocast_slow_consumer_closes_total")
            .await
            >= before + 1.0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.unwrap();
    }
    let n = published.load(Ordering::Relaxed);
    eprintln!(
        "slow consumer: closed={closed} after {n} publications of 1 KiB in {:?}",
        started.elapsed()
    );
    assert!(
        closed,
        "no slow-consumer close after {n} publications of 1 KiB"
    );
    // It reads at once (the server gave up on it a moment ago): its backlog, then close 4005.
    // The server waits for the close frame to leave before it cuts TCP, so a reader that
    // resumes within that wait sees the real code; a frame cut short or a plain EOF is a 1006.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pubs = 0u64;
    let read_from = Instant::now();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match slow.next(left).await {
            Next::Frame(f) if f.opcode == OP_TEXT => pubs += 1,
            Next::Frame(f) if f.opcode == OP_CLOSE => {
                let (code, reason) = close_payload(&f.payload).unwrap();
                eprintln!(
                    "slow consumer: close {code} {reason:?} after {pubs} publications ({:?})",
                    read_from.elapsed()
                );
                assert_eq!(code, 4005, "reason {reason:?}");
                break;
            }
            Next::Frame(f) => panic!("unexpected frame {f:?}"),
            Next::Closed(why) => panic!(
                "slow consumer: no close frame, the connection ended ({why}) after {pubs} \
                 publications, {:?} after it started reading: a client sees 1006, not 4005",
                read_from.elapsed()
            ),
            Next::Timeout => panic!("slow consumer still open after the close was counted"),
        }
    }
    slow.expect_eof(SHORT).await;
    server
        .wait_metric(
            "ferrocast_disconnects_total{code=\"4005\"}",
            |v| v >= 1.0,
            SHORT,
        )
        .await;
    by.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Several things in one write.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_and_first_commands_in_one_write_are_answered() {
    let server = start("").await;
    let by = Bystander::start(&server).await;

    // ?token= upgrade + subscribe in one write.
    let sub = text_json(json!({"id": 1, "subscribe": {"channel": "chat:eager"}}));
    let mut raw = Raw::upgrade(&server, Some(&token("eager", 3600, &[])), &sub).await;
    let push = raw.next_json(SHORT).await;
    assert!(push.get("connected").is_some(), "{push}");
    let reply = raw.next_json(SHORT).await;
    assert_eq!(reply["id"], json!(1), "{reply}");
    assert!(reply.get("result").is_some(), "{reply}");
    server.publish("chat:eager", json!({"n": 1})).await;
    let p = raw.next_json(SHORT).await;
    assert_eq!(p["channel"], "chat:eager", "{p}");
    assert_eq!(p["pub"]["data"]["n"], 1, "{p}");

    // Upgrade without a token + connect + subscribe in one write.
    let mut bytes = text_json(json!({"id": 1, "connect": {"token": token("eager2", 3600, &[])}}));
    bytes.extend(text_json(
        json!({"id": 2, "subscribe": {"channel": "chat:eager"}}),
    ));
    let mut raw = Raw::upgrade(&server, None, &bytes).await;
    let reply = raw.next_json(SHORT).await;
    assert_eq!(reply["id"], json!(1), "{reply}");
    assert_eq!(reply["result"]["user"], "eager2", "{reply}");
    // The `connected` push follows a successful `connect` (docs/protocol.md §4.1).
    let push = raw.next_json(SHORT).await;
    assert_eq!(push["connected"]["user"], "eager2", "{push}");
    let reply = raw.next_json(SHORT).await;
    assert_eq!(reply["id"], json!(2), "{reply}");
    assert!(reply.get("result").is_some(), "{reply}");
    by.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_close_in_one_write_delivers_the_publication() {
    let server = start("").await;
    let by = Bystander::start(&server).await;
    let mut sub = server.connect("listener").await;
    sub.subscribe(1, "chat:lastword").await;

    let mut raw = Raw::connect(&server, "leaver").await;
    let mut bytes =
        text_json(json!({"id": 1, "publish": {"channel": "chat:lastword", "data": {"n": 1}}}));
    bytes.extend(close_code(1000));
    raw.send(&bytes).await;
    let (code, reason) = raw.expect_close(SHORT).await;
    assert_eq!(code, 1000, "echo: reason {reason:?}");
    for m in &raw.seen {
        let v: Value = serde_json::from_str(m).unwrap();
        assert!(
            v["id"] == json!(1) && v.get("result").is_some(),
            "before the close: {m}"
        );
    }
    raw.expect_eof(SHORT).await;

    let (p, _) = sub.recv_pub("chat:lastword", SHORT).await;
    assert_eq!(p["pub"]["data"]["n"], 1, "{p}");
    by.finish().await;
}

/// Writes one byte every 50 ms until a write fails (the peer's socket is fully closed: its reset
/// came back); returns how long that took, None if it did not happen within `max`.
async fn until_peer_resets(wr: &mut OwnedWriteHalf, max: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < max {
        if wr.write_all(b"x").await.is_err() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_close_lingers_for_the_client_close_so_the_code_is_seen() {
    let server = start("").await;
    let by = Bystander::start(&server).await;
    let violation = frame(true, 0x3, b"x");

    // Input the server never decodes (everything after the violation) must not turn the close
    // into a reset: the client reads a moment later and still finds the 1002.
    let mut raw = Raw::connect(&server, "unread").await;
    let mut bytes = violation.clone();
    bytes.extend(std::iter::repeat_n(0x5Au8, 256 * 1024));
    let writer = spawn_write(raw.take_writer(), bytes);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, reason) = raw.expect_close(SHORT).await;
    assert_eq!(code, 1002, "reason {reason:?}");
    raw.expect_eof(SHORT).await;
    let _ = writer.await;

    // A silent client: the server keeps reading (no reset) for about a second after its close
    // frame, then closes the socket.
    let mut raw = Raw::connect(&server, "silent").await;
    raw.send(&violation).await;
    let (code, _) = raw.expect_close(SHORT).await;
    assert_eq!(code, 1002);
    let closed_at = Instant::now();
    let gone = until_peer_resets(raw.writer(), Duration::from_secs(4)).await;
    eprintln!("silent client: server socket gone {gone:?} after its close frame");
    let gone = gone.expect("the server's socket still open 4 s after its close frame");
    assert!(
        gone >= Duration::from_millis(500) && gone <= Duration::from_millis(2500),
        "the server's socket closed {gone:?} after its close frame (expected about 1 s)"
    );
    assert!(closed_at.elapsed() < Duration::from_secs(4));

    // A client that answers with its own close: the server closes the socket at once.
    let mut raw = Raw::connect(&server, "polite").await;
    raw.send(&violation).await;
    let (code, _) = raw.expect_close(SHORT).await;
    assert_eq!(code, 1002);
    raw.send(&close_code(1000)).await;
    let gone = until_peer_resets(raw.writer(), Duration::from_secs(4)).await;
    eprintln!("polite client: server socket gone {gone:?} after the client's close");
    let gone = gone.expect("the server's socket still open 4 s after the client's close");
    assert!(
        gone < Duration::from_millis(500),
        "the server's socket closed {gone:?} after the client's close frame"
    );
    by.finish().await;
}
