//! The WebSocket frame codec lives in the `ferrocast-codec` workspace crate (pure: no I/O), shared
//! with wsbench; this module re-exports the server's view of it. Encoding builds complete server
//! frames (header + unmasked payload) as one `Bytes`, so one publication is framed once and shared
//! by reference.

pub use ferrocast_codec::frame::{
    close, encode, put_header, text, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
};
pub use ferrocast_codec::{DecodeError, Decoder, Flow, Item, Role};
