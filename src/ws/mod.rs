//! WebSocket: the frame codec, the outbound queue, and the connection task.

pub mod connection;
pub mod frame;
pub mod outbound;
