//! The Pusher Channels protocol 7 on ferrocast's core (docs/pusher.md): pusher-js, Laravel Echo
//! and the `pusher` server libraries talk to ferrocast unchanged.
//!
//! - `protocol.rs`: pure — signatures, channel-name rules and the mapping onto ferrocast
//!   channels (`pusher-<app>:<name>`), Pusher frames, the translation of a delivery into its
//!   Pusher frame (used by `hub::shard`'s fan-out, once per delivery per shard).
//! - `conn.rs`: Pusher connections (`/app/{key}`): handshake, subscribe (public, private,
//!   presence, cache, server-to-user), client events, sign-in, presence refresh and clean-up.
//! - `api.rs`: the Pusher HTTP API (`/apps/{id}/…`), signed as Pusher signs it.
//!
//! Layering: this module sits beside `server/` and `api/` above the hub. The hub calls into it at
//! three points only — `conn::handle` (a Pusher connection's message), `conn::removed` (a
//! Pusher connection went away) and `protocol::frame_for` (fan-out) — the Pusher connection's
//! route is the hub's switch.

pub mod api;
pub mod conn;
pub mod protocol;

use bytes::Bytes;

use crate::config::PusherAppConfig;
use crate::protocol::ChannelName;

/// A Pusher connection's own state, kept by its shard beside the connection
/// (`Shard::pusher`), not in `Connection`.
#[derive(Debug)]
pub struct ConnState {
    /// Index into `pusher.apps`.
    pub app: usize,
    /// The connection's client number (a reused slot is told apart by it).
    pub client: u64,
    pub socket_id: String,
    /// The user id after `pusher:signin`.
    pub user: Option<String>,
    /// Presence memberships: channel, user id, user info (raw JSON).
    pub presence: Vec<Presence>,
    /// Client events in the current one-second window.
    pub events_window: u32,
    pub events_count: u32,
}

#[derive(Debug, Clone)]
pub struct Presence {
    pub channel: ChannelName,
    pub user_id: String,
    pub info: Option<Bytes>,
}

/// Client events per second per connection (Pusher's limit); more get `pusher:error` 4301.
pub const CLIENT_EVENTS_PER_SECOND: u32 = 10;

/// The ferrocast user a signed-in Pusher user is (so `terminate_connections` and ferrocast's
/// `/api/disconnect` reach it without meeting users of other apps).
pub fn ferrocast_user(app: &PusherAppConfig, user_id: &str) -> String {
    format!("pusher-{}:{user_id}", app.app_id)
}
