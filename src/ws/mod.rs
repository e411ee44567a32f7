//! WebSocket transport, knowing nothing of hubs, channels or brokers: the frame codec (the
//! `ferrocast-codec` crate, re-exported as `frame`), the bounded outbound queue, and the socket
//! I/O around them (reading through a shared scratch buffer, the close handshake's linger).
//! What messages mean — commands, echo — is the hub's business (`hub::connection`).

pub mod frame;
pub mod outbound;
pub mod socket;
