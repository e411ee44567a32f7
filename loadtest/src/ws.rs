//! A lean client side of RFC 6455: the HTTP upgrade, the frame codec and one socket's IO.
//!
//! Why not a WebSocket crate: the tool holds ~19k sockets in one process, so an idle socket must
//! cost close to nothing. Here an idle connection owns no read buffer at all (one is allocated only
//! while bytes are waiting), bytes read past the HTTP response stay in the same buffer as the first
//! frames, and `recv` is cancel-safe so a socket task can `select!` over it and timers. The codec
//! (`decode`, `encode_client`) is pure and tested without sockets.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// Read granularity while data is flowing; an idle socket holds no buffer.
const READ_CHUNK: usize = 4096;
/// Largest HTTP response head accepted during the upgrade.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest frame (or reassembled message) accepted from the server.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One frame as it came off the wire (payload already unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Bytes,
}

/// A protocol violation by the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "websocket protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// Takes one complete frame off the front of `buf`, or `None` when more bytes are needed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<RawFrame>, ProtocolError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(ProtocolError("reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let masked = b1 & 0x80 != 0;
    let (len, mut head) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n as u64, 2),
    };
    if len > MAX_MESSAGE as u64 {
        return Err(ProtocolError("frame too large"));
    }
    if opcode >= 0x8 && (len > 125 || !fin) {
        return Err(ProtocolError("bad control frame"));
    }
    let mask = if masked {
        if buf.len() < head + 4 {
            return Ok(None);
        }
        let m = [buf[head], buf[head + 1], buf[head + 2], buf[head + 3]];
        head += 4;
        Some(m)
    } else {
        None
    };
    let len = len as usize;
    if buf.len() < head + len {
        // Reserve once for the whole frame instead of growing chunk by chunk.
        buf.reserve(head + len - buf.len());
        return Ok(None);
    }
    buf.advance(head);
    let mut payload = buf.split_to(len);
    if let Some(m) = mask {
        apply_mask(&mut payload, m);
    }
    Ok(Some(RawFrame {
        fin,
        opcode,
        payload: payload.freeze(),
    }))
}

/// XORs `data` with the 4-byte mask (RFC 6455 §5.3).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Encodes a single final client frame; client frames are always masked.
pub fn encode_client(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
    out
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
    Status(u16),
    BadResponse(&'static str),
}

impl ConnectError {
    pub fn reason(&self) -> String {
        match self {
            ConnectError::Tcp(e) => format!("tcp_{}", io_reason(e)),
            ConnectError::Io(e) => format!("upgrade_{}", io_reason(e)),
            ConnectError::Status(s) => format!("http_{s}"),
            ConnectError::BadResponse(r) => format!("upgrade_{r}"),
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Tcp(e) => write!(f, "tcp connect: {e}"),
            ConnectError::Io(e) => write!(f, "upgrade: {e}"),
            ConnectError::Status(s) => write!(f, "upgrade answered HTTP {s}"),
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
    /// A fragmented message being reassembled: (opcode, bytes so far).
    partial: Option<(u8, BytesMut)>,
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
        partial: None,
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
        return Err(ConnectError::Status(status));
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
        loop {
            let frame = match decode(&mut self.rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(None),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            };
            match frame.opcode {
                OP_TEXT | OP_BINARY if frame.fin => {
                    if self.partial.is_some() {
                        return Err(bad("data frame inside a fragmented message"));
                    }
                    return Ok(Some(data_message(frame.opcode, frame.payload)));
                }
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(bad("data frame inside a fragmented message"));
                    }
                    self.partial = Some((frame.opcode, BytesMut::from(&frame.payload[..])));
                }
                OP_CONT => {
                    let Some((op, mut acc)) = self.partial.take() else {
                        return Err(bad("continuation without a start"));
                    };
                    if acc.len() + frame.payload.len() > MAX_MESSAGE {
                        return Err(bad("message too large"));
                    }
                    acc.extend_from_slice(&frame.payload);
                    if frame.fin {
                        return Ok(Some(data_message(op, acc.freeze())));
                    }
                    self.partial = Some((op, acc));
                }
                OP_PING => return Ok(Some(Message::Ping(frame.payload))),
                OP_PONG => return Ok(Some(Message::Pong)),
                OP_CLOSE => {
                    let code = (frame.payload.len() >= 2)
                        .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
                    return Ok(Some(Message::Close(code)));
                }
                _ => return Err(bad("unknown opcode")),
            }
        }
    }

    /// Sends one text frame. Not cancel-safe: call it from a `select!` branch body, not a guard.
    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send(OP_TEXT, payload).await
    }

    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let frame = encode_client(opcode, payload, rand::random());
        self.stream.write_all(&frame).await
    }

    /// Starts a clean close (sends a close frame with `code`) and shuts the write side.
    pub async fn close(&mut self, code: u16) {
        let _ = self.send(OP_CLOSE, &code.to_be_bytes()).await;
        let _ = self.stream.shutdown().await;
    }
}

fn data_message(op: u8, payload: Bytes) -> Message {
    if op == OP_TEXT {
        Message::Text(payload)
    } else {
        Message::Binary(payload)
    }
}

fn bad(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, ProtocolError(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | op];
        if payload.len() < 126 {
            v.push(payload.len() as u8);
        } else if payload.len() <= 65535 {
            v.push(126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_lengths_7_16_64() {
        for n in [0usize, 5, 125, 126, 65535, 65536, 100_000] {
            let data = vec![b'x'; n];
            let mut buf = BytesMut::from(&server_frame(true, OP_TEXT, &data)[..]);
            let f = decode(&mut buf).unwrap().unwrap();
            assert_eq!(f.payload.len(), n);
            assert!(f.fin);
            assert_eq!(f.opcode, OP_TEXT);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn partial_input_waits() {
        let full = server_frame(true, OP_TEXT, &[b'a'; 300]);
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(decode(&mut buf).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn client_frames_are_masked_and_roundtrip() {
        for n in [0usize, 1, 125, 126, 70_000] {
            let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let enc = encode_client(OP_TEXT, &data, [1, 2, 3, 4]);
            assert_eq!(enc[1] & 0x80, 0x80);
            let mut buf = BytesMut::from(&enc[..]);
            let f = decode(&mut buf).unwrap().unwrap();
            assert_eq!(&f.payload[..], &data[..]);
        }
    }

    #[test]
    fn rejects_bad_control_frames() {
        let mut buf = BytesMut::from(&server_frame(false, OP_PING, b"x")[..]);
        assert!(decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0xC1u8, 0x00][..]);
        assert!(decode(&mut buf).is_err());
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
        assert_eq!(
            check_response(denied.as_bytes(), key).unwrap_err().reason(),
            "http_503"
        );
        let wrong = "HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert_eq!(
            check_response(wrong.as_bytes(), key).unwrap_err().reason(),
            "upgrade_bad_accept"
        );
    }
}
