//! The WebSocket frame codec lives in the `ferrocast-codec` workspace crate (pure: no I/O), shared
//! with wsbench; this module re-exports the server's view of it. Encoding builds complete server
//! frames (header + unmasked payload) as one `Bytes`, so one publication is framed once and shared
//! by reference.

pub use ferrocast_codec::frame::{
    close, encode, put_header, text, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
};
pub use ferrocast_codec::{DecodeError, Decoder, Flow, Item, Role};

/// Splits a complete, unmasked frame this server encoded into its opcode and payload (for a
/// transport that re-frames the queued output, e.g. SSE). `None` for anything else.
pub fn split_server_frame(f: &[u8]) -> Option<(u8, &[u8])> {
    let opcode = f.first()? & 0x0F;
    let len7 = f.get(1)? & 0x7F;
    let header = match len7 {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    Some((opcode, f.get(header..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_split_back() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 70000] {
            let payload = vec![b'x'; len];
            let f = text(&payload);
            assert_eq!(split_server_frame(&f), Some((OP_TEXT, &payload[..])));
        }
        let c = close(4005, "slow");
        let (op, p) = split_server_frame(&c).unwrap();
        assert_eq!(op, OP_CLOSE);
        assert_eq!(&p[..2], &4005u16.to_be_bytes());
        assert_eq!(split_server_frame(&[0x81]), None);
    }
}
