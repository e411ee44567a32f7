//! Wraps any broker to time every operation (`ferrocast_broker_latency_seconds{op}`) and count
//! failures (`ferrocast_broker_errors_total{op}`), so each implementation gets the same metrics
//! without repeating them.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::{Histogram, IntCounter};

use super::{
    Broker, BrokerError, ChannelOptions, Control, DeliverySink, HistoryResult, NodeInfo,
    PresenceEntry, PublishRequest, Published, TrackKind,
};
use crate::metrics::metrics;
use crate::protocol::{ChannelName, Position};

pub use crate::metrics::BROKER_OPS as OPS;

/// The shards' inboxes are past `limits.max_inbox_backlog`: 503 / error 108, retry later.
fn overloaded() -> BrokerError {
    BrokerError::Unavailable("node overloaded: shards are behind on fan-out".into())
}

struct Op {
    latency: Histogram,
    errors: IntCounter,
}

pub struct Instrumented {
    inner: Arc<dyn Broker>,
    /// Publications are refused while the node's shards are too far behind.
    hub: Arc<dyn DeliverySink>,
    /// Label handles resolved once (a label lookup takes a lock inside prometheus).
    ops: Vec<Op>,
}

impl Instrumented {
    pub fn wrap(inner: Arc<dyn Broker>, hub: Arc<dyn DeliverySink>) -> Arc<dyn Broker> {
        let m = metrics();
        let ops = OPS
            .iter()
            .map(|op| Op {
                latency: m.broker_latency.with_label_values(&[op]),
                errors: m.broker_errors.with_label_values(&[op]),
            })
            .collect();
        Arc::new(Instrumented { inner, hub, ops })
    }

    async fn timed<T>(
        &self,
        op: &str,
        fut: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let i = OPS.iter().position(|o| *o == op).expect("known op");
        let start = Instant::now();
        let r = fut.await;
        self.ops[i].latency.observe(start.elapsed().as_secs_f64());
        // An unrecoverable position is an answer, not a broker failure.
        if matches!(r, Err(BrokerError::Unavailable(_))) {
            self.ops[i].errors.inc();
        }
        r
    }
}

#[async_trait]
impl Broker for Instrumented {
    async fn publish(&self, req: PublishRequest) -> Result<Published, BrokerError> {
        if self.hub.overloaded() {
            return Err(overloaded());
        }
        self.timed("publish", self.inner.publish(req)).await
    }

    async fn schedule(
        &self,
        at: SystemTime,
        req: PublishRequest,
    ) -> Result<Published, BrokerError> {
        self.timed("schedule", self.inner.schedule(at, req)).await
    }

    async fn cancel(&self, id: &str) -> Result<(), BrokerError> {
        self.timed("cancel", self.inner.cancel(id)).await
    }

    async fn publish_control(
        &self,
        channel: &ChannelName,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        self.timed(
            "publish_control",
            self.inner.publish_control(channel, payload),
        )
        .await
    }

    async fn history(
        &self,
        channel: &ChannelName,
        options: ChannelOptions,
        since: Option<&Position>,
        limit: Option<usize>,
    ) -> Result<HistoryResult, BrokerError> {
        self.timed(
            "history",
            self.inner.history(channel, options, since, limit),
        )
        .await
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        self.timed("subscribe", self.inner.subscribe(channel)).await
    }

    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        self.timed("unsubscribe", self.inner.unsubscribe(channel))
            .await
    }

    async fn presence_add(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.timed("presence_add", self.inner.presence_add(channel, entry, ttl))
            .await
    }

    async fn presence_remove(
        &self,
        channel: &ChannelName,
        client: &str,
    ) -> Result<(), BrokerError> {
        self.timed(
            "presence_remove",
            self.inner.presence_remove(channel, client),
        )
        .await
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, BrokerError> {
        self.timed("presence", self.inner.presence(channel)).await
    }

    async fn presence_stats(&self, channel: &ChannelName) -> Result<(usize, usize), BrokerError> {
        self.timed("presence_stats", self.inner.presence_stats(channel))
            .await
    }

    async fn control(&self, msg: Control) -> Result<(), BrokerError> {
        self.timed("control", self.inner.control(msg)).await
    }

    async fn nodes(&self, local: NodeInfo) -> Result<Vec<NodeInfo>, BrokerError> {
        self.timed("nodes", self.inner.nodes(local)).await
    }

    async fn track_join(
        &self,
        kind: TrackKind,
        key: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<bool, BrokerError> {
        self.timed("track_join", self.inner.track_join(kind, key, member, ttl))
            .await
    }

    async fn track_leave(
        &self,
        kind: TrackKind,
        key: &str,
        member: &str,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        self.timed(
            "track_leave",
            self.inner.track_leave(kind, key, member, delay),
        )
        .await
    }

    async fn track_refresh(
        &self,
        kind: TrackKind,
        keys: &[String],
        member: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, BrokerError> {
        self.timed(
            "track_refresh",
            self.inner.track_refresh(kind, keys, member, ttl),
        )
        .await
    }

    async fn track_sweep(&self, kind: TrackKind) -> Result<Vec<String>, BrokerError> {
        self.timed("track_sweep", self.inner.track_sweep(kind))
            .await
    }

    fn scheduled_pending(&self) -> usize {
        self.inner.scheduled_pending()
    }

    fn is_up(&self) -> bool {
        self.inner.is_up()
    }
}
