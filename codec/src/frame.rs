//! Frame headers and frame encoding (RFC 6455 §5.2).
//!
//! Server frames are encoded whole (header + unmasked payload in one `Bytes`) so a publication
//! is framed once and shared by reference; client frames (for wsbench and tests) are masked.

use bytes::{BufMut, Bytes, BytesMut};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest payload of a control frame (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEADER: usize = 14;

/// One frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    /// The masking key, when the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Bytes of header (2..=14).
    pub header_len: usize,
    pub payload_len: u64,
}

impl Header {
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// A header that breaks RFC 6455 (every one of these fails the connection with 1002).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// RSV1–3 set with no extension negotiated.
    ReservedBits,
    /// Opcodes 3–7 and 0xB–0xF.
    ReservedOpcode,
    /// A client frame without a mask (§5.1), or a server frame with one.
    Masking,
    /// A control frame that is fragmented or longer than 125 bytes (§5.5).
    BadControl,
    /// A 64-bit length with its most significant bit set (§5.2).
    LengthMsb,
}

impl HeaderError {
    pub fn reason(self) -> &'static str {
        match self {
            HeaderError::ReservedBits => "reserved bits set",
            HeaderError::ReservedOpcode => "reserved opcode",
            HeaderError::Masking => "bad masking",
            HeaderError::BadControl => "fragmented or oversized control frame",
            HeaderError::LengthMsb => "64-bit length with the high bit set",
        }
    }
}

/// Parses a frame header at the start of `buf`; `Ok(None)` = more bytes needed. Errors are found
/// from the first bytes that show them, before the rest of the header arrives.
/// `masked`: whether frames must carry a mask (client → server) or must not (server → client).
pub fn parse_header(buf: &[u8], masked: bool) -> Result<Option<Header>, HeaderError> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(HeaderError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(HeaderError::ReservedOpcode),
    }
    let Some(&b1) = buf.get(1) else {
        return Ok(None);
    };
    if (b1 & 0x80 != 0) != masked {
        return Err(HeaderError::Masking);
    }
    let len7 = b1 & 0x7F;
    let is_control = opcode & 0x8 != 0;
    if is_control && (!fin || len7 as usize > MAX_CONTROL_PAYLOAD) {
        return Err(HeaderError::BadControl);
    }
    let (payload_len, ext) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 2)
        }
        127 => {
            if buf.len() < 3 {
                return Ok(None);
            }
            if buf[2] & 0x80 != 0 {
                return Err(HeaderError::LengthMsb);
            }
            if buf.len() < 10 {
                return Ok(None);
            }
            (
                u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
                8,
            )
        }
        n => (u64::from(n), 0),
    };
    let header_len = 2 + ext + if masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Ok(None);
    }
    let mask = masked.then(|| buf[2 + ext..header_len].try_into().expect("4 bytes"));
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        header_len,
        payload_len,
    }))
}

/// Writes the header of an unmasked frame.
pub fn put_header(out: &mut BytesMut, fin: bool, opcode: u8, len: usize) {
    out.put_u8(if fin { 0x80 } else { 0 } | opcode);
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

/// A complete, final server frame: header and payload in one buffer.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put_header(&mut out, true, opcode, payload.len());
    out.extend_from_slice(payload);
    out.freeze()
}

/// A text frame.
pub fn text(payload: &[u8]) -> Bytes {
    encode(OP_TEXT, payload)
}

/// A close frame with a code and a reason (cut to fit the 125-byte control limit).
pub fn close(code: u16, reason: &str) -> Bytes {
    encode(OP_CLOSE, &crate::close::payload(code, reason))
}

/// A masked client frame (load generators, tests).
pub fn encode_masked(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut head = BytesMut::with_capacity(14);
    put_header(&mut head, fin, opcode, payload.len());
    head[1] |= 0x80;
    let mut out = Vec::with_capacity(head.len() + 4 + payload.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    crate::mask::apply(&mut out[start..], mask, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_forms_round_trip() {
        // Family 1: the 7-, 16- and 64-bit length forms at their edges.
        for len in [0usize, 1, 125, 126, 127, 128, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let f = encode_masked(true, OP_BINARY, &payload, [1, 2, 3, 4]);
            let h = parse_header(&f, true).unwrap().unwrap();
            assert_eq!(h.payload_len, len as u64);
            assert_eq!(h.header_len + len, f.len());
            let expected_header = match len {
                0..=125 => 6,
                126..=65535 => 8,
                _ => 14,
            };
            assert_eq!(h.header_len, expected_header);
            for cut in 0..h.header_len {
                assert_eq!(
                    parse_header(&f[..cut], true).unwrap(),
                    None,
                    "len {len} cut {cut}"
                );
            }
            let s = encode(OP_BINARY, &payload);
            let hs = parse_header(&s, false).unwrap().unwrap();
            assert_eq!(hs.payload_len, len as u64);
            assert_eq!(&s[hs.header_len..], &payload[..]);
        }
    }

    #[test]
    fn header_violations() {
        let ok = encode_masked(true, OP_TEXT, b"x", [9; 4]);
        let mut f = ok.clone();
        f[0] |= 0x40;
        assert_eq!(parse_header(&f, true), Err(HeaderError::ReservedBits));
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let f = encode_masked(true, op, b"x", [9; 4]);
            assert_eq!(
                parse_header(&f, true),
                Err(HeaderError::ReservedOpcode),
                "op {op}"
            );
        }
        let mut f = ok.clone();
        f[1] &= 0x7F;
        assert_eq!(parse_header(&f, true), Err(HeaderError::Masking));
        assert_eq!(parse_header(&ok, false), Err(HeaderError::Masking));
        let f = encode_masked(false, OP_PING, b"x", [9; 4]);
        assert_eq!(parse_header(&f, true), Err(HeaderError::BadControl));
        let f = encode_masked(true, OP_PING, &[0; 126], [9; 4]);
        assert_eq!(parse_header(&f, true), Err(HeaderError::BadControl));
        // 2^63: the error shows as soon as the length's first byte is there.
        let f = [0x82u8, 0xFF, 0x80];
        assert_eq!(parse_header(&f, true), Err(HeaderError::LengthMsb));
    }

    #[test]
    fn encodes_server_frames() {
        assert_eq!(&text(b"hello")[..], b"\x81\x05hello");
        assert_eq!(&text(&[b'a'; 300])[..4], &[0x81, 126, 1, 44]);
        assert_eq!(text(&vec![b'a'; 70_000])[1], 127);
        assert_eq!(&close(4010, "shutdown")[..4], &[0x88, 10, 0x0F, 0xAA]);
    }
}
