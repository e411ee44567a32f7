//! `Node`: the node's shared state — what every shard, the server API and the admin listener
//! share: config, the token verifier, the broker, the hub, identity and counters. Immutable after
//! start except for atomics. (Built and started by `crate::node`, the wiring.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Hub;
use crate::auth::TokenVerifier;
use crate::broker::{Broker, BrokerError, ChannelOptions, NodeInfo};
use crate::config::{Config, NamespaceConfig};
use crate::metrics::metrics;
use crate::protocol::ChannelName;

/// Local interest in one channel: how many shards have subscribers, and where the broker
/// subscription stands. One small map entry per channel and nothing on the heap: a watch channel
/// exists only while shards wait for the first shard's broker subscribe (several shards getting
/// their first subscriber of a channel at the same moment), created by the first one to wait.
pub struct Interest {
    count: u32,
    state: Subscription,
    /// Shards waiting for the outcome of the `Pending` subscribe.
    waiters: Option<tokio::sync::watch::Sender<Option<bool>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Subscription {
    /// The first shard's broker subscribe is under way.
    Pending,
    Ready,
    /// The subscribe failed: shards arriving before the channel's entry is gone fail too.
    Failed,
}

/// What a shard does in `add_interest`.
enum Role {
    /// Subscribe at the broker, then tell the waiters.
    Lead,
    Wait(tokio::sync::watch::Receiver<Option<bool>>),
    Done(bool),
}

/// The leading shard's subscribe: publishes its outcome to the channel's entry and waiters, also
/// when the subscribe is dropped before it finished (then as a failure, releasing its count).
struct Leading<'a> {
    node: &'a Node,
    channel: &'a ChannelName,
    done: bool,
}

impl Leading<'_> {
    fn finish(&mut self, ok: bool) {
        self.done = true;
        let mut m = self.node.interest.lock();
        if let Some(i) = m.get_mut(self.channel) {
            i.state = if ok {
                Subscription::Ready
            } else {
                Subscription::Failed
            };
            if let Some(waiters) = i.waiters.take() {
                waiters.send_replace(Some(ok));
            }
        }
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(false);
            self.node.remove_interest_count(self.channel);
        }
    }
}

pub struct Node {
    pub config: Config,
    pub verifier: TokenVerifier,
    pub broker: Arc<dyn Broker>,
    pub hub: Arc<Hub>,
    /// Random per process: client ids are `<id>-<n>`, unique across the fleet.
    pub id: String,
    pub name: String,
    pub started: Instant,
    pub draining: AtomicBool,
    /// Open WebSocket connections on this node (all shards).
    pub connections: AtomicUsize,
    next_client: AtomicU64,
    /// The `user` namespace used when the config has none.
    default_user_ns: NamespaceConfig,
    /// Shards with local subscribers, per channel: the broker is told to subscribe on 0→1 and
    /// to unsubscribe on 1→0.
    interest: Mutex<HashMap<ChannelName, Interest>>,
    /// Webhook hooks (`[webhooks]`); None when webhooks are off. Set by the wiring.
    pub events: Option<Arc<crate::events::Events>>,
}

impl Node {
    pub fn new(
        config: Config,
        broker: Arc<dyn Broker>,
        hub: Arc<Hub>,
    ) -> Result<Arc<Node>, crate::auth::KeyError> {
        let verifier = TokenVerifier::new(&config.auth)?;
        let id = {
            use rand::Rng;
            format!("{:08x}", rand::thread_rng().gen::<u32>())
        };
        let name = if config.node.name.is_empty() {
            format!("{}-{}", hostname(), std::process::id())
        } else {
            config.node.name.clone()
        };
        Ok(Arc::new(Node {
            config,
            verifier,
            broker,
            hub,
            id,
            name,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            next_client: AtomicU64::new(1),
            default_user_ns: NamespaceConfig {
                history_size: 16,
                history_ttl: crate::config::HumanDuration(Duration::from_secs(600)),
                ..NamespaceConfig::default()
            },
            interest: Mutex::new(HashMap::new()),
            events: None,
        }))
    }

    pub fn next_client_id(&self) -> u64 {
        self.next_client.fetch_add(1, Ordering::Relaxed)
    }

    pub fn client_name(&self, n: u64) -> String {
        format!("{}-{n}", self.id)
    }

    /// The namespace a channel belongs to; `None` = unknown channel (error 102).
    pub fn namespace(&self, channel: &ChannelName) -> Option<&NamespaceConfig> {
        let ns = channel.namespace();
        match self.config.namespaces.get(ns) {
            Some(cfg) => Some(cfg),
            None if ns == "user" => Some(&self.default_user_ns),
            None => None,
        }
    }

    pub fn channel_options(ns: &NamespaceConfig) -> ChannelOptions {
        ChannelOptions {
            history_size: ns.history_size,
            history_ttl: ns.history_ttl.0,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A shard got its first local subscriber of `channel`. Resolves once the broker delivers
    /// the channel to this node, also for a shard that arrives while another shard's subscribe
    /// is still under way (so no shard reads a position before the live stream is flowing).
    pub async fn add_interest(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        let role = {
            let mut m = self.interest.lock();
            match m.get_mut(channel) {
                Some(i) => {
                    i.count += 1;
                    match i.state {
                        Subscription::Ready => Role::Done(true),
                        Subscription::Failed => Role::Done(false),
                        Subscription::Pending => Role::Wait(
                            i.waiters
                                .get_or_insert_with(|| tokio::sync::watch::channel(None).0)
                                .subscribe(),
                        ),
                    }
                }
                None => {
                    m.insert(
                        channel.clone(),
                        Interest {
                            count: 1,
                            state: Subscription::Pending,
                            waiters: None,
                        },
                    );
                    Role::Lead
                }
            }
        };
        let outcome = match role {
            Role::Lead => {
                let mut leading = Leading {
                    node: self,
                    channel,
                    done: false,
                };
                let r = self.broker.subscribe(channel).await;
                leading.finish(r.is_ok());
                if let (Ok(()), Some(events)) = (&r, &self.events) {
                    events.channel_occupied(channel);
                }
                r
            }
            Role::Wait(mut ready) => {
                let subscribed = matches!(
                    ready.wait_for(|v| v.is_some()).await.map(|v| *v),
                    Ok(Some(true))
                );
                if subscribed {
                    Ok(())
                } else {
                    Err(BrokerError::Unavailable("broker subscribe failed".into()))
                }
            }
            Role::Done(true) => Ok(()),
            Role::Done(false) => Err(BrokerError::Unavailable("broker subscribe failed".into())),
        };
        if outcome.is_err() {
            self.remove_interest_count(channel);
        }
        outcome
    }

    /// A shard lost its last local subscriber of `channel`.
    pub async fn remove_interest(&self, channel: &ChannelName) {
        if self.remove_interest_count(channel) {
            if let Some(events) = &self.events {
                events.channel_vacated(channel);
            }
            if let Err(e) = self.broker.unsubscribe(channel).await {
                tracing::warn!(%channel, error = %e, "broker unsubscribe failed");
            }
        }
    }

    fn remove_interest_count(&self, channel: &ChannelName) -> bool {
        let mut m = self.interest.lock();
        match m.get_mut(channel) {
            Some(i) if i.count > 1 => {
                i.count -= 1;
                false
            }
            Some(_) => {
                m.remove(channel);
                true
            }
            None => false,
        }
    }

    /// Channels with local subscribers on this node whose name starts with `prefix`.
    pub fn local_channels(&self, prefix: &str) -> Vec<ChannelName> {
        self.interest
            .lock()
            .keys()
            .filter(|c| c.as_str().starts_with(prefix))
            .cloned()
            .collect()
    }

    pub fn info(&self) -> NodeInfo {
        let m = metrics();
        let sum = |g: &prometheus::IntGaugeVec| -> u64 {
            (0..self.hub.shard_count())
                .map(|i| g.with_label_values(&[&i.to_string()]).get().max(0) as u64)
                .sum()
        };
        NodeInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            connections: self.connections.load(Ordering::Relaxed) as u64,
            subscriptions: sum(&m.subscriptions),
            channels: sum(&m.channels),
            uptime_seconds: self.started.elapsed().as_secs(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "ferrocast".into())
}
