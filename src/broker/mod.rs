//! The `Broker`: how publications, history, presence and scheduled publications are shared.
//!
//! One trait, several implementations (centrifuge's shape): `memory` is feature-complete and is
//! what a single node and the test-suite run on; Redis implementations carry the same contract
//! across a fleet. A broker hands every publication that reaches this node to a [`DeliverySink`]
//! (the hub implements it and fans publications out to the shards); the broker knows nothing else
//! of the hub.

pub mod instrumented;
pub mod memory;
pub mod redis;
pub mod tracking;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::protocol::{ChannelName, ClientError, Position};

/// Where a broker delivers what reaches this node: publications (in each channel's offset order)
/// and fleet control messages. Implemented by the hub.
pub trait DeliverySink: Send + Sync + 'static {
    /// One publication (offset 0: a push outside the stream, e.g. join/leave) as the JSON text of
    /// the server frame, with the time it was accepted (unix µs).
    fn deliver(&self, channel: &ChannelName, offset: u64, payload: Bytes, published_at_us: u64);
    /// A fleet command (disconnect a user, unsubscribe, reset a channel).
    fn control(&self, msg: Control);
    /// Whether the node is too far behind on fan-out to take new publications.
    fn overloaded(&self) -> bool {
        false
    }
}

/// Where a channel's stream stands: the last offset and the epoch (which changes when the stream
/// is lost, so a client's old offsets can't be mistaken for new ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// A publication kept in history.
#[derive(Debug, Clone)]
pub struct HistoryItem {
    pub offset: u64,
    pub data: Bytes,
    pub info: Option<Bytes>,
}

/// Per-channel options the node derives from the channel's namespace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelOptions {
    pub history_size: usize,
    pub history_ttl: Duration,
}

impl ChannelOptions {
    /// How long a stream's offset and epoch are kept after its last publication. Channels without
    /// history still count offsets (so `subscribe` can tell a client where it stands); their meta
    /// lives an hour.
    pub fn meta_ttl(&self) -> Duration {
        if self.history_ttl.is_zero() {
            Duration::from_secs(3600)
        } else {
            self.history_ttl
        }
    }
}

#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub channel: ChannelName,
    /// Raw JSON, passed through untouched.
    pub data: Bytes,
    /// Raw JSON `info` (client publishes carry the publisher).
    pub info: Option<Bytes>,
    pub options: ChannelOptions,
    pub idempotency_key: Option<String>,
}

/// What a history read returns.
#[derive(Debug, Clone)]
pub struct HistoryResult {
    pub publications: Vec<HistoryItem>,
    pub position: StreamPosition,
}

/// One connection present in a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceEntry {
    pub client: String,
    pub user: String,
    pub info: Option<Bytes>,
}

/// Fleet-wide commands from the server API, applied by every node to its own connections.
#[derive(Debug, Clone)]
pub enum Control {
    DisconnectUser {
        user: String,
        code: u16,
        reason: String,
    },
    UnsubscribeUser {
        user: String,
        channel: ChannelName,
    },
    /// Subscribes every live connection of `user` to `channel` (`POST /api/subscribe`).
    SubscribeUser {
        user: String,
        channel: ChannelName,
    },
    /// Local only: this node lost publications of `channel` it could not repair from history;
    /// its subscribers are unsubscribed with `resubscribe: true` so they recover by themselves.
    ResetChannel {
        channel: ChannelName,
    },
}

/// What a node tells the others about itself (`/api/info`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
    pub version: String,
    pub connections: u64,
    pub subscriptions: u64,
    pub channels: u64,
    pub uptime_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The position asked for is gone (other epoch, trimmed, or in the future).
    #[error("unrecoverable position")]
    Unrecoverable { position: StreamPosition },
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("scheduled publication not found")]
    NotFound,
}

impl BrokerError {
    pub fn client_error(&self) -> ClientError {
        match self {
            BrokerError::Unrecoverable { .. } => ClientError::UnrecoverablePosition,
            BrokerError::Unavailable(_) => ClientError::NotAvailable,
            BrokerError::NotFound => ClientError::BadRequest("not found"),
        }
    }
}

/// The outcome of a publish that may have been deduplicated by its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    Now(StreamPosition),
    Scheduled(String),
}

/// What a fleet-wide membership tracks (webhooks, `events/`): which nodes hold a user's
/// connections (user online / offline), which nodes have subscribers of a channel (occupied /
/// vacated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    User,
    Channel,
}

impl TrackKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::User => "user",
            TrackKind::Channel => "channel",
        }
    }
}

fn tracking_unsupported() -> BrokerError {
    BrokerError::Unavailable("this broker does not track memberships".into())
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Appends to history (when the channel keeps it), assigns the next offset and delivers to
    /// every node with subscribers, atomically with respect to other publishes on the channel.
    async fn publish(&self, req: PublishRequest) -> Result<Published, BrokerError>;

    /// Keeps `req` until `at`, then publishes it exactly once across the fleet.
    async fn schedule(&self, at: SystemTime, req: PublishRequest)
        -> Result<Published, BrokerError>;

    /// Cancels a scheduled publication that is still waiting; `NotFound` when the id is unknown
    /// or it was delivered or cancelled already.
    async fn cancel(&self, id: &str) -> Result<(), BrokerError>;

    /// Delivers a push that is not part of the stream (join/leave): no offset, no history.
    async fn publish_control(
        &self,
        channel: &ChannelName,
        payload: Bytes,
    ) -> Result<(), BrokerError>;

    /// Publications after `since` (all retained when `since` is None), at most `limit` (the most
    /// recent ones when `since` is None), and the current position.
    async fn history(
        &self,
        channel: &ChannelName,
        options: ChannelOptions,
        since: Option<&Position>,
        limit: Option<usize>,
    ) -> Result<HistoryResult, BrokerError>;

    /// This node has local subscribers for `channel` (first one arrived).
    async fn subscribe(&self, channel: &ChannelName) -> Result<(), BrokerError>;

    /// This node's last local subscriber of `channel` left.
    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), BrokerError>;

    /// Adds or refreshes a presence entry that expires after `ttl` unless refreshed.
    async fn presence_add(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        ttl: Duration,
    ) -> Result<(), BrokerError>;

    async fn presence_remove(&self, channel: &ChannelName, client: &str)
        -> Result<(), BrokerError>;

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, BrokerError>;

    /// (clients, distinct users)
    async fn presence_stats(&self, channel: &ChannelName) -> Result<(usize, usize), BrokerError> {
        let entries = self.presence(channel).await?;
        let mut users: Vec<&str> = entries.iter().map(|e| e.user.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        Ok((entries.len(), users.len()))
    }

    /// Applies a fleet-wide command on every node.
    async fn control(&self, msg: Control) -> Result<(), BrokerError>;

    /// Publishes this node's info and returns every live node's (this one included).
    async fn nodes(&self, local: NodeInfo) -> Result<Vec<NodeInfo>, BrokerError>;

    /// Membership with expiry (webhooks): `member` (a node) holds `key` (a user id or a channel)
    /// until `ttl` from now unless refreshed. True when the key went from empty to held, fleet
    /// wide — decided atomically, so exactly one caller sees the transition. A join while the
    /// key is vacating (see `track_leave`) cancels that and is not a new transition.
    async fn track_join(
        &self,
        _kind: TrackKind,
        _key: &str,
        _member: &str,
        _ttl: Duration,
    ) -> Result<bool, BrokerError> {
        Err(tracking_unsupported())
    }

    /// `member` no longer holds `key`. When nobody else does, the key is *vacating* until
    /// `delay` from now: not yet a transition (`track_sweep` reports it once the delay passed
    /// and nobody joined meanwhile).
    async fn track_leave(
        &self,
        _kind: TrackKind,
        _key: &str,
        _member: &str,
        _delay: Duration,
    ) -> Result<(), BrokerError> {
        Err(tracking_unsupported())
    }

    /// Extends `member`'s hold of each of `keys` to `ttl` from now. Returns the keys `member`
    /// did not hold any more (its entry expired and the key was swept): the caller joins them
    /// again.
    async fn track_refresh(
        &self,
        _kind: TrackKind,
        _keys: &[String],
        _member: &str,
        _ttl: Duration,
    ) -> Result<Vec<String>, BrokerError> {
        Err(tracking_unsupported())
    }

    /// Keys whose transition to empty is final now (the vacating delay passed without a join,
    /// or every member's hold expired — a crashed node), each reported to exactly one caller
    /// across the fleet.
    async fn track_sweep(&self, _kind: TrackKind) -> Result<Vec<String>, BrokerError> {
        Err(tracking_unsupported())
    }

    /// Scheduled publications waiting (for the metrics gauge).
    fn scheduled_pending(&self) -> usize;

    /// Whether the broker is reachable now (readiness).
    fn is_up(&self) -> bool;
}

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Redis(#[from] redis::StartError),
    #[error("broker.kind: {0:?} is not available in this build")]
    UnknownKind(String),
}

/// Builds the broker named in the config (on the current runtime, which must outlive it).
pub async fn build(
    config: &crate::config::BrokerConfig,
    hub: Arc<dyn DeliverySink>,
) -> Result<Arc<dyn Broker>, StartError> {
    match config.kind.as_str() {
        "memory" => Ok(instrumented::Instrumented::wrap(
            memory::MemoryBroker::start(hub.clone()),
            hub,
        )),
        "redis" | "redis-cluster" => Ok(instrumented::Instrumented::wrap(
            redis::RedisBroker::start(config, hub.clone()).await?,
            hub,
        )),
        other => Err(StartError::UnknownKind(other.to_string())),
    }
}

/// A short random epoch string.
pub fn new_epoch() -> Arc<str> {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let s: String = (0..8)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    Arc::from(s)
}
