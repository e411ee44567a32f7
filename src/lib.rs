//! ferrocast: a WebSocket edge server. Browsers connect over WebSocket and subscribe to channels;
//! backends publish over an HTTP API; sharded per-core hubs fan publications out.
//!
//! Layers, each using only the ones below it (docs/design.md has the picture):
//!
//! - `protocol/` — commands, replies, error and close codes; pure.
//! - `ws/` — WebSocket transport: the codec (crate `ferrocast-codec`), the bounded outbound queue,
//!   socket reads and the close linger. Knows nothing of hubs or brokers.
//! - `broker/` — the `Broker` trait, the memory and Redis implementations, and the
//!   `DeliverySink` trait they deliver to. No `hub` import.
//! - `events/` — lifecycle events decided fleet-wide through the broker, and the webhook sender.
//!   No `hub` import.
//! - `hub/` — shards, client connections and commands, fan-out, the node's shared state (`Node`);
//!   implements `DeliverySink`.
//! - `server/` (listeners, accept, upgrade, admin) and `api/` (the server API), side by side.
//! - `node.rs` — the wiring: config → hub, broker, shared state → shard threads, drain.
//!
//! Used by all: `config`, `clock`, `metrics`, `http` (response helpers), `auth` (tokens).

pub mod api;
pub mod auth;
pub mod broker;
pub mod clock;
pub mod config;
pub mod events;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod pusher;
pub mod server;
pub mod ws;
