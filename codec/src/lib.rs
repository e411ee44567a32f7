//! The WebSocket wire format (RFC 6455 §5) as pure functions and one streaming state machine,
//! shared by the ferrocast server and the `wsbench` load generator. Nothing here touches a socket:
//! bytes go in, messages, control frames and close reasons come out, so every rule of the RFC can
//! be unit-tested and fuzzed apart from I/O.
//!
//! - [`frame`]: opcodes, header parsing, frame encoding (server and client side).
//! - [`mask`]: XOR masking with a running phase, for payloads that arrive in pieces.
//! - [`utf8`]: an incremental UTF-8 validator that fails on the first invalid byte.
//! - [`close`]: close codes that may appear on the wire, close payload parsing.
//! - [`decoder`]: [`Decoder`], bytes → [`Item`]s with every protocol check, in linear time
//!   however the bytes are cut.

pub mod close;
pub mod decoder;
pub mod frame;
pub mod mask;
pub mod utf8;

pub use decoder::{DecodeError, Decoder, Flow, Item, Role};
