//! ferrocast: a WebSocket edge server. Browsers connect over WebSocket and subscribe to channels;
//! backends publish over an HTTP API; sharded per-core hubs fan publications out.
//!
//! Layout (a reader finds any behaviour from the folder names): `server/` listeners, accept and
//! upgrade; `ws/` frame codec and connection loop; `hub/` shards, subscriptions and fan-out;
//! `broker/` the broker trait and its implementations; `protocol/` commands, replies and error
//! codes; `auth/` tokens and the connect proxy; `api/` the server API; `metrics.rs`; `config.rs`.

pub mod api;
pub mod auth;
pub mod broker;
pub mod clock;
pub mod config;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod server;
pub mod ws;
