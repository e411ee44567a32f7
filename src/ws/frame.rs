//! The WebSocket frame codec (RFC 6455 §5), kept apart from the socket so it can be tested and
//! benchmarked alone. Decoding works in place on a borrowed buffer (the shard's scratch buffer);
//! unmasking uses fastwebsockets' SIMD `unmask`. Encoding builds complete server frames (header +
//! unmasked payload) as one `Bytes`, so one publication is framed once and shared by reference.

use bytes::{BufMut, Bytes, BytesMut};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The header of one client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: u8,
    pub mask: [u8; 4],
    /// Bytes of header (2..=14).
    pub header_len: usize,
    pub payload_len: usize,
}

impl FrameHeader {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }

    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set")]
    ReservedBits,
    #[error("unknown opcode")]
    UnknownOpcode,
    #[error("client frame not masked")]
    Unmasked,
    #[error("fragmented or oversized control frame")]
    BadControl,
    #[error("frame larger than max_message_size")]
    TooBig,
}

/// Parses a frame header at the start of `buf`. `Ok(None)` = need more bytes.
/// Frames whose payload exceeds `max_payload` are rejected from the header alone, before a single
/// payload byte is buffered.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(FrameError::UnknownOpcode),
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let len7 = (b1 & 0x7F) as usize;
    let (payload_len, ext) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 2)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            (usize::try_from(n).unwrap_or(usize::MAX), 8)
        }
        n => (n, 0),
    };
    if opcode & 0x8 != 0 && (!fin || payload_len > 125) {
        return Err(FrameError::BadControl);
    }
    if payload_len > max_payload {
        return Err(FrameError::TooBig);
    }
    let header_len = 2 + ext + 4;
    if buf.len() < header_len {
        return Ok(None);
    }
    let mask = buf[2 + ext..header_len].try_into().expect("4 bytes");
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        header_len,
        payload_len,
    }))
}

/// Unmasks a client payload in place.
#[inline]
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    fastwebsockets::unmask(payload, mask);
}

/// Writes the header of an unmasked, final server frame.
pub fn put_header(out: &mut BytesMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// A complete server frame: header and payload in one buffer.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out.freeze()
}

/// A text frame.
pub fn text(payload: &[u8]) -> Bytes {
    encode(OP_TEXT, payload)
}

/// A close frame with a code and a short reason (truncated to fit the 125-byte control limit).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    // Cut on a character boundary: a close reason must be valid UTF-8 (RFC 6455 §5.5.1).
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    encode(OP_CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let long = format!("{}x", "é".repeat(62));
        let f = close(4003, &long);
        // 2-byte header, 2-byte code, then the reason.
        let reason = &f[4..];
        assert!(reason.len() <= 123);
        assert!(std::str::from_utf8(reason).is_ok());
        assert_eq!(reason.len(), 122);
    }

    /// A masked client frame, as a browser would send it.
    pub fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(if fin { 0x80 } else { 0 } | opcode);
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn roundtrip_sizes() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mask = [1, 2, 3, 4];
            let mut f = client_frame(OP_TEXT, true, &payload, mask);
            let h = parse_header(&f, 1 << 20).unwrap().unwrap();
            assert_eq!(h.payload_len, len);
            assert_eq!(h.frame_len(), f.len());
            let p = &mut f[h.header_len..];
            unmask(p, h.mask);
            assert_eq!(p, &payload[..]);
            // Every strict prefix of the header is "need more".
            for cut in 0..h.header_len {
                assert_eq!(parse_header(&f[..cut], 1 << 20).unwrap(), None);
            }
        }
    }

    #[test]
    fn rejects_bad_frames() {
        let f = client_frame(OP_TEXT, true, &[0; 200], [9; 4]);
        assert_eq!(parse_header(&f, 100), Err(FrameError::TooBig));
        let mut f = client_frame(OP_TEXT, true, b"x", [9; 4]);
        f[1] &= 0x7F;
        assert_eq!(parse_header(&f, 100), Err(FrameError::Unmasked));
        let f = client_frame(OP_PING, false, b"x", [9; 4]);
        assert_eq!(parse_header(&f, 100), Err(FrameError::BadControl));
        let f = client_frame(0x3, true, b"x", [9; 4]);
        assert_eq!(parse_header(&f, 100), Err(FrameError::UnknownOpcode));
        let mut f = client_frame(OP_TEXT, true, b"x", [9; 4]);
        f[0] |= 0x40;
        assert_eq!(parse_header(&f, 100), Err(FrameError::ReservedBits));
    }

    #[test]
    fn encodes_server_frames() {
        let f = text(b"hello");
        assert_eq!(&f[..], b"\x81\x05hello");
        let big = text(&[b'a'; 300]);
        assert_eq!(&big[..4], &[0x81, 126, 1, 44]);
        let huge = text(&vec![b'a'; 70_000]);
        assert_eq!(huge[1], 127);
        let c = close(4010, "shutdown");
        assert_eq!(&c[..4], &[0x88, 10, 0x0F, 0xAA]);
    }
}
