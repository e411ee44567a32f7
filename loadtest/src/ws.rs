//! A lean client side of RFC 6455: the HTTP upgrade and one socket's IO. The frame rules (header
//! parsing, lengths, fragments, UTF-8, close payloads, client masking) are `ferrocast-codec`'s, the
//! same code the server runs; this file only feeds it whole frames off the read buffer.
//!
//! Why not a WebSocket crate: the tool holds ~19k sockets in one process, so an idle socket must
//! cost close to nothing. Here an idle connection owns no read buffer at all (one is allocated only
//! while bytes are waiting) and its decoder between messages owns no heap memory, bytes read past
//! the HTTP response stay in the same buffer as the first frames, a frame is handed out as a slice
//! of the read buffer without a copy, and `recv` is cancel-safe so a socket task can `select!` over
//! it and timers. [`next_message`] is pure and tested without sockets.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use ferrocast_codec::decoder::Limits;
use ferrocast_codec::frame::{self, OP_CLOSE, OP_TEXT};
use ferrocast_codec::{close, DecodeError, Decoder, Flow, Item, Role};
use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// Read granularity while data is flowing; an idle socket holds no buffer.
const READ_CHUNK: usize = 4096;
/// Largest HTTP response head accepted during the upgrade.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest frame (or reassembled message) accepted from the server.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Server frames are unmasked; the codec fails a message of `max_message` bytes or more.
const LIMITS: Limits = Limits {
    role: Role::Client,
    max_message: MAX_MESSAGE + 1,
};
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A protocol violation by the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "websocket protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

impl From<DecodeError> for ProtocolError {
    fn from(e: DecodeError) -> Self {
        ProtocolError(e.reason())
    }
}

/// What the decoder produced from one frame (its payload, if any, is taken after `feed`).
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Binary,
    Ping,
    Pong,
    Close(Option<u16>),
}

/// Takes the next message off the front of `buf`, or `None` when more bytes are needed. Whole
/// frames are cut off `buf` and fed to `decoder` one at a time, so the payload of an unfragmented
/// frame is a slice of the read buffer; a frame still arriving has its whole length reserved at
/// once. After the peer's close (or an error) the decoder is done and whatever follows is dropped.
pub fn next_message(
    buf: &mut BytesMut,
    decoder: &mut Decoder,
) -> Result<Option<Message>, ProtocolError> {
    loop {
        if decoder.is_done() {
            buf.clear();
            return Ok(None);
        }
        let Some(header) = frame::parse_header(buf, false).map_err(DecodeError::from)? else {
            return Ok(None);
        };
        let so_far = if header.is_control() {
            0
        } else {
            decoder.buffered() as u64
        };
        if so_far + header.payload_len > MAX_MESSAGE as u64 {
            // Refused before anything is reserved for it (the decoder would refuse it whole).
            return Err(DecodeError::TooBig.into());
        }
        let len = header.header_len + header.payload_len as usize;
        if buf.len() < len {
            // Reserve once for the whole frame instead of growing chunk by chunk.
            buf.reserve(len - buf.len());
            return Ok(None);
        }
        let mut raw = buf.split_to(len);
        let payload_at = raw[header.header_len..].as_ptr();
        let payload_len = len - header.header_len;
        let mut got = None;
        // Set only when the payload is not this frame's own (the end of a fragmented message).
        let mut copied = None;
        let mut frames = u32::MAX;
        decoder.feed(&mut raw, &LIMITS, &mut frames, |item| {
            let (kind, payload) = match item {
                Item::Text(t) => (Kind::Text, t.as_bytes()),
                Item::Binary(b) => (Kind::Binary, b),
                Item::Ping(p) => (Kind::Ping, p),
                Item::Pong(_) => (Kind::Pong, &[][..]),
                Item::Close(c) => (Kind::Close(c.map(|(code, _reason)| code)), &[][..]),
            };
            let own = payload.as_ptr() == payload_at && payload.len() == payload_len;
            if !own && !payload.is_empty() {
                copied = Some(Bytes::copy_from_slice(payload));
            }
            got = Some(kind);
            Flow::Continue
        })?;
        let Some(kind) = got else {
            continue; // a fragment of a message still being gathered
        };
        let payload = match copied {
            Some(b) => b,
            None => {
                raw.advance(header.header_len);
                raw.freeze()
            }
        };
        return Ok(Some(match kind {
            Kind::Text => Message::Text(payload),
            Kind::Binary => Message::Binary(payload),
            Kind::Ping => Message::Ping(payload),
            Kind::Pong => Message::Pong,
            Kind::Close(code) => Message::Close(code),
        }));
    }
}

/// `Sec-WebSocket-Accept` for a given key.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Why a connection attempt failed; `reason()` is the key the reports group failures by.
#[derive(Debug)]
pub enum ConnectError {
    Tcp(io::Error),
    Io(io::Error),
    /// A status other than 101, with the response's `Retry-After` when it had a valid one.
    Status(u16, Option<Duration>),
    BadResponse(&'static str),
}

impl ConnectError {
    pub fn reason(&self) -> String {
        match self {
            ConnectError::Tcp(e) => format!("tcp_{}", io_reason(e)),
            ConnectError::Io(e) => format!("upgrade_{}", io_reason(e)),
            ConnectError::Status(s, _) => format!("http_{s}"),
            ConnectError::BadResponse(r) => format!("upgrade_{r}"),
        }
    }

    /// The delay a `503 Service Unavailable` asked for (`Retry-After`); `None` for anything
    /// else, which is not retried.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConnectError::Status(503, d) => *d,
            _ => None,
        }
    }
}

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds (`120`) or an HTTP-date, relative to `now`
/// (a date in the past is a zero delay). `None` when the value is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long values saturate; the caller caps the wait anyway.
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Tcp(e) => write!(f, "tcp connect: {e}"),
            ConnectError::Io(e) => write!(f, "upgrade: {e}"),
            ConnectError::Status(s, _) => write!(f, "upgrade answered HTTP {s}"),
            ConnectError::BadResponse(r) => write!(f, "upgrade: {r}"),
        }
    }
}

/// A short, stable name for an IO error, used as a failure reason.
pub fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ETIMEDOUT) => "timeout".into(),
        Some(libc::EADDRNOTAVAIL) => "addr_not_available".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "fd_limit".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        Some(libc::EPIPE) => "broken_pipe".into(),
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => "unreachable".into(),
        _ => match e.kind() {
            io::ErrorKind::UnexpectedEof => "eof".into(),
            io::ErrorKind::TimedOut => "timeout".into(),
            io::ErrorKind::ConnectionReset => "reset".into(),
            io::ErrorKind::ConnectionAborted => "aborted".into(),
            k => format!("{k:?}").to_lowercase(),
        },
    }
}

/// What `Conn::recv` hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// The peer's close frame (code, if any). The socket is done after this.
    Close(Option<u16>),
}

/// One client WebSocket over a plain TCP stream.
pub struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    /// The codec's state: a fragmented message being gathered, or the peer's close seen.
    decoder: Decoder,
}

/// Opens TCP (bound to `src` when given) and performs the upgrade for `host` + `path`.
pub async fn connect(
    addr: SocketAddr,
    src: Option<IpAddr>,
    host: &str,
    path: &str,
) -> Result<Conn, ConnectError> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(ConnectError::Tcp)?;
    if let Some(ip) = src {
        // Let connect() pick the port for (src, dst), not bind(): otherwise every source address
        // is limited to the ephemeral range once for all destinations.
        set_bind_no_port(&socket);
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(ConnectError::Tcp)?;
    }
    let stream = socket.connect(addr).await.map_err(ConnectError::Tcp)?;
    let _ = stream.set_nodelay(true);
    upgrade(stream, host, path).await
}

fn set_bind_no_port(socket: &TcpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: plain setsockopt on a valid fd with a correctly sized int option.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

async fn upgrade(mut stream: TcpStream, host: &str, path: &str) -> Result<Conn, ConnectError> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: wsbench\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(ConnectError::Io)?;
    let mut buf = BytesMut::with_capacity(1024);
    let head_len = loop {
        if let Some(pos) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(ConnectError::BadResponse("response_too_large"));
        }
        buf.reserve(1024);
        let n = tokio::io::AsyncReadExt::read_buf(&mut stream, &mut buf)
            .await
            .map_err(ConnectError::Io)?;
        if n == 0 {
            return Err(ConnectError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
    };
    let head = buf.split_to(head_len);
    check_response(&head, &key)?;
    // Whatever followed the head (a `connected` push, say) is already the first frame bytes.
    let rbuf = if buf.is_empty() { BytesMut::new() } else { buf };
    Ok(Conn {
        stream,
        rbuf,
        decoder: Decoder::new(),
    })
}

/// Validates the status line and `Sec-WebSocket-Accept` of an upgrade response head.
pub fn check_response(head: &[u8], key: &str) -> Result<(), ConnectError> {
    let text = std::str::from_utf8(head).map_err(|_| ConnectError::BadResponse("not_utf8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let proto = parts.next().unwrap_or("");
    if !proto.starts_with("HTTP/1.") {
        return Err(ConnectError::BadResponse("not_http"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(ConnectError::BadResponse("bad_status_line"))?;
    if status != 101 {
        let retry_after = lines.find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("retry-after"))
                .and_then(|(_, v)| parse_retry_after(v, SystemTime::now()))
        });
        return Err(ConnectError::Status(status, retry_after));
    }
    let want = accept_key(key);
    let ok = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == want
        })
    });
    if ok {
        Ok(())
    } else {
        Err(ConnectError::BadResponse("bad_accept"))
    }
}

impl Conn {
    /// Next message from the server. Cancel-safe: the only await points are readiness waits,
    /// so dropping the future loses no bytes.
    pub async fn recv(&mut self) -> io::Result<Message> {
        loop {
            if let Some(m) = self.take_message()? {
                return Ok(m);
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
                // Idle sockets keep no buffer; frames handed out earlier keep theirs alive.
                self.rbuf = BytesMut::new();
            }
            self.stream.readable().await?;
            self.rbuf.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn take_message(&mut self) -> io::Result<Option<Message>> {
        next_message(&mut self.rbuf, &mut self.decoder)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Sends one text frame. Not cancel-safe: call it from a `select!` branch body, not a guard.
    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send(OP_TEXT, payload).await
    }

    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let frame = frame::encode_masked(true, opcode, payload, rand::random());
        self.stream.write_all(&frame).await
    }

    /// Starts a clean close (sends a close frame with `code`) and shuts the write side.
    pub async fn close(&mut self, code: u16) {
        let _ = self.send(OP_CLOSE, &close::payload(code, "")).await;
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocast_codec::frame::{OP_BINARY, OP_CONT, OP_PING, OP_PONG};

    /// An unmasked (server) frame, fragments included.
    fn server_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame::put_header(&mut out, fin, op, payload.len());
        out.extend_from_slice(payload);
        out.to_vec()
    }

    fn next(buf: &mut BytesMut, d: &mut Decoder) -> Result<Option<Message>, ProtocolError> {
        next_message(buf, d)
    }

    #[test]
    fn lengths_7_16_64_come_out_as_slices_of_the_read_buffer() {
        for n in [0usize, 5, 125, 126, 65535, 65536, 100_000] {
            let data = vec![b'x'; n];
            let mut buf = BytesMut::from(&server_frame(true, OP_TEXT, &data)[..]);
            let (start, end) = (buf.as_ptr() as usize, buf.as_ptr() as usize + buf.len());
            let mut d = Decoder::new();
            let Some(Message::Text(t)) = next(&mut buf, &mut d).unwrap() else {
                panic!("len {n}: not a text message");
            };
            assert_eq!(t.len(), n);
            if n > 0 {
                // No copy: the payload lies in the buffer the frame was read into.
                let at = t.as_ptr() as usize;
                assert!(at > start && at + n == end, "len {n}: copied");
            }
            assert!(buf.is_empty());
            assert!(!d.is_mid_message());
        }
    }

    #[test]
    fn partial_input_waits_and_reserves_the_whole_frame() {
        let full = server_frame(true, OP_BINARY, &[b'a'; 3000]);
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            let mut d = Decoder::new();
            assert_eq!(next(&mut buf, &mut d).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at cut {cut}");
            if cut >= 4 {
                assert!(
                    buf.capacity() >= full.len(),
                    "cut {cut}: frame not reserved"
                );
            }
            buf.extend_from_slice(&full[cut..]);
            assert_eq!(
                next(&mut buf, &mut d).unwrap(),
                Some(Message::Binary(Bytes::from(vec![b'a'; 3000])))
            );
        }
    }

    #[test]
    fn several_messages_in_one_read_come_out_in_order() {
        let mut wire = server_frame(true, OP_TEXT, b"one");
        wire.extend(server_frame(true, OP_PING, b"p"));
        wire.extend(server_frame(true, OP_PONG, b"q"));
        wire.extend(server_frame(true, OP_BINARY, b"two"));
        wire.extend(server_frame(true, OP_TEXT, b"thr")); // cut short below
        wire.truncate(wire.len() - 1);
        let mut buf = BytesMut::from(&wire[..]);
        let mut d = Decoder::new();
        let mut got = Vec::new();
        while let Some(m) = next(&mut buf, &mut d).unwrap() {
            got.push(m);
        }
        assert_eq!(
            got,
            [
                Message::Text(Bytes::from_static(b"one")),
                Message::Ping(Bytes::from_static(b"p")),
                Message::Pong,
                Message::Binary(Bytes::from_static(b"two")),
            ]
        );
        assert_eq!(&buf[..], &server_frame(true, OP_TEXT, b"thr")[..4]);
    }

    #[test]
    fn fragments_are_reassembled_around_control_frames() {
        let mut wire = server_frame(false, OP_TEXT, "hé".as_bytes());
        wire.extend(server_frame(true, OP_PING, b""));
        wire.extend(server_frame(false, OP_CONT, b"ll"));
        wire.extend(server_frame(true, OP_CONT, b"o"));
        let mut buf = BytesMut::from(&wire[..]);
        let mut d = Decoder::new();
        assert_eq!(
            next(&mut buf, &mut d).unwrap(),
            Some(Message::Ping(Bytes::new()))
        );
        assert!(d.is_mid_message());
        assert_eq!(
            next(&mut buf, &mut d).unwrap(),
            Some(Message::Text(Bytes::from("héllo")))
        );
        assert!(!d.is_mid_message());
        assert!(buf.is_empty());
    }

    #[test]
    fn close_carries_its_code_and_ends_decoding() {
        let mut wire = server_frame(true, OP_CLOSE, &close::payload(4010, "shutdown"));
        wire.extend(server_frame(true, OP_TEXT, b"after"));
        let mut buf = BytesMut::from(&wire[..]);
        let mut d = Decoder::new();
        assert_eq!(
            next(&mut buf, &mut d).unwrap(),
            Some(Message::Close(Some(4010)))
        );
        assert_eq!(next(&mut buf, &mut d).unwrap(), None);
        assert!(buf.is_empty());

        let mut buf = BytesMut::from(&server_frame(true, OP_CLOSE, b"")[..]);
        let mut d = Decoder::new();
        assert_eq!(next(&mut buf, &mut d).unwrap(), Some(Message::Close(None)));
    }

    #[test]
    fn protocol_violations_are_errors() {
        let cases: [(&str, Vec<u8>); 8] = [
            ("fragmented ping", server_frame(false, OP_PING, b"x")),
            ("reserved bits", vec![0xC1, 0x00]),
            ("reserved opcode", vec![0x83, 0x00]),
            (
                "masked server frame",
                frame::encode_masked(true, OP_TEXT, b"x", [1; 4]),
            ),
            ("continuation first", server_frame(true, OP_CONT, b"x")),
            (
                "bad close code",
                server_frame(true, OP_CLOSE, &1005u16.to_be_bytes()),
            ),
            ("invalid UTF-8 text", server_frame(true, OP_TEXT, &[0xFF])),
            (
                "new message inside a fragmented one",
                [
                    server_frame(false, OP_TEXT, b"a"),
                    server_frame(true, OP_TEXT, b"b"),
                ]
                .concat(),
            ),
        ];
        for (what, wire) in cases {
            let mut buf = BytesMut::from(&wire[..]);
            let mut d = Decoder::new();
            assert!(next(&mut buf, &mut d).is_err(), "{what}");
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_reserving() {
        // A 2^40-byte frame header: refused at once, nothing reserved for it.
        let mut wire = vec![0x82, 127];
        wire.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let mut buf = BytesMut::from(&wire[..]);
        let mut d = Decoder::new();
        assert_eq!(
            next(&mut buf, &mut d).unwrap_err(),
            ProtocolError("message too big")
        );
        assert!(buf.capacity() < 1024);
        // Exactly the limit passes the header check (and waits for its payload).
        let mut buf = BytesMut::new();
        frame::put_header(&mut buf, true, OP_BINARY, MAX_MESSAGE);
        assert_eq!(next(&mut buf, &mut Decoder::new()).unwrap(), None);
        // Fragments adding up to more than the limit fail.
        let mut buf = BytesMut::new();
        frame::put_header(&mut buf, false, OP_BINARY, 1);
        buf.extend_from_slice(b"x");
        frame::put_header(&mut buf, true, OP_CONT, MAX_MESSAGE);
        assert_eq!(
            next(&mut buf, &mut Decoder::new()).unwrap_err(),
            ProtocolError("message too big")
        );
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn checks_upgrade_response() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok =
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(check_response(ok.as_bytes(), key).is_ok());
        let denied = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
        let e = check_response(denied.as_bytes(), key).unwrap_err();
        assert_eq!(e.reason(), "http_503");
        assert_eq!(e.retry_after(), None, "no Retry-After: not retried");
        // ferrocast's shedding answer, as the accept loop writes it.
        let busy = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                    content-length: 66\r\nconnection: close\r\nretry-after: 1\r\n\r\n";
        let e = check_response(busy.as_bytes(), key).unwrap_err();
        assert_eq!(e.reason(), "http_503");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        // Only a 503 is retried, whatever else says Retry-After.
        let limited = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n\r\n";
        let e = check_response(limited.as_bytes(), key).unwrap_err();
        assert_eq!((e.reason().as_str(), e.retry_after()), ("http_429", None));
        let garbled = "HTTP/1.1 503 Busy\r\nRetry-After: soon\r\n\r\n";
        assert_eq!(
            check_response(garbled.as_bytes(), key)
                .unwrap_err()
                .retry_after(),
            None
        );
        let wrong = "HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert_eq!(
            check_response(wrong.as_bytes(), key).unwrap_err().reason(),
            "upgrade_bad_accept"
        );
    }

    #[test]
    fn parses_retry_after() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00 GMT
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        // HTTP-date (IMF-fixdate, and the obsolete forms httpdate also reads).
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        // In the past: retry at once.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in [
            "",
            " ",
            "-1",
            "1.5",
            "soon",
            "1 s",
            "Wed, 32 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
