//! Connections and topology: the command client and the subscriber client (one server or a
//! cluster from its seed nodes), health, reconnect and cluster-change events, and decoding of
//! Redis replies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::prelude::{
    ClientLike, Config as FredConfig, Error as FredError, EventInterface, ReconnectPolicy,
    ServerConfig, Value,
};
use fred::types::scripts::Script;
use fred::types::Builder;
use tokio::sync::broadcast;

use super::subscriptions::SubReq;
use super::Inner;
use crate::broker::BrokerError;
use crate::config::BrokerConfig;
use crate::metrics::metrics;

/// Why the Redis broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("broker.urls: {0}")]
    Url(String),
    #[error("broker.urls: {0:?} is not a host:port URL")]
    NotHostPort(String),
    #[error(transparent)]
    Client(#[from] FredError),
}

/// Parses `redis://[user:password@]host:port[/db]` into fred's config (validation and start).
pub fn parse_url(url: &str) -> Result<FredConfig, String> {
    if !url.starts_with("redis://") {
        return Err("must start with redis://".into());
    }
    FredConfig::from_url(url).map_err(|e| e.details().to_string())
}

/// fred's config for `broker.urls`: the first URL for one server, every URL's host as a seed
/// node for a cluster (credentials and database from the first).
fn fred_config(config: &BrokerConfig) -> Result<FredConfig, StartError> {
    let first = config
        .urls
        .first()
        .ok_or_else(|| StartError::Url("needs at least one redis:// URL".into()))?;
    let mut fred_config = parse_url(first).map_err(StartError::Url)?;
    if config.kind == "redis-cluster" {
        let mut hosts = Vec::new();
        for url in &config.urls {
            let c = parse_url(url).map_err(StartError::Url)?;
            match c.server {
                ServerConfig::Centralized { server } => hosts.push(server),
                _ => return Err(StartError::NotHostPort(url.clone())),
            }
        }
        fred_config.server = ServerConfig::Clustered {
            hosts,
            policy: Default::default(),
        };
    }
    fred_config.fail_fast = false;
    Ok(fred_config)
}

/// The two connections (pools) to Redis and whether the last command reached it.
pub(super) struct Connection {
    /// Commands and scripts.
    pub(super) client: Client,
    /// Sharded pub/sub; fred keeps its channel set and re-subscribes after reconnects.
    pub(super) sub: SubscriberClient,
    pub(super) cluster: bool,
    /// The last command reached Redis (health, readiness).
    healthy: AtomicBool,
}

impl Connection {
    /// Connects without waiting for Redis to be up beyond a short grace (the node starts,
    /// reports not ready, and serves as soon as Redis answers); fred reconnects with
    /// exponential backoff (50 ms → 2 s) and follows cluster topology changes.
    pub(super) async fn open(config: &BrokerConfig) -> Result<Connection, StartError> {
        let timeout = config.command_timeout.0;
        let mut builder = Builder::from_config(fred_config(config)?);
        builder
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2000, 2))
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
                p.broadcast_channel_capacity = 1 << 16;
            })
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 2;
            });
        let client = builder.build()?;
        let sub = builder.build_subscriber_client()?;
        client.connect();
        sub.connect();
        // Give Redis a moment so a healthy fleet starts ready; don't block a node on it.
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            let _ = client.wait_for_connect().await;
            let _ = sub.wait_for_connect().await;
        })
        .await;
        Ok(Connection {
            client,
            sub,
            cluster: config.kind == "redis-cluster",
            healthy: AtomicBool::new(true),
        })
    }

    /// Maps fred's outcome to the broker's, keeping `healthy` current (a reply that didn't
    /// parse still reached Redis).
    pub(super) fn ok<T>(&self, r: Result<T, FredError>) -> Result<T, BrokerError> {
        match r {
            Ok(v) => {
                self.healthy.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => {
                if !matches!(e.kind(), fred::error::ErrorKind::Parse) {
                    self.healthy.store(false, Ordering::Relaxed);
                }
                Err(unavailable(e))
            }
        }
    }

    /// Runs a script by its SHA-1, loading it first where Redis doesn't know it.
    pub(super) async fn eval(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, BrokerError> {
        let r = script
            .evalsha_with_reload::<Value, _, _>(&self.client, keys, args)
            .await;
        self.ok(r)
    }

    /// Cluster: refreshes the subscriber client's slot map (`SSUBSCRIBE` goes where it says).
    /// The subscriber notices no failover by itself when its old master went silent (stopped)
    /// rather than away, and kept sending new subscriptions there.
    pub(super) async fn sync_subscriber_topology(&self) {
        use fred::prelude::ClusterInterface;
        if !self.cluster {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(2), self.sub.sync_cluster()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "subscriber cluster sync failed"),
            Err(_) => tracing::debug!("subscriber cluster sync timed out"),
        }
    }

    /// Both connections are up and the last command reached Redis.
    pub(super) fn is_up(&self) -> bool {
        self.client.is_connected()
            && self.sub.is_connected()
            && self.healthy.load(Ordering::Relaxed)
    }
}

/// After a reconnect (or a cluster topology change) re-subscribes every channel, then checks
/// positions at once so anything published meanwhile is repaired from history.
pub(super) async fn run_reconnects(inner: Arc<Inner>) {
    let mut sub_events = inner.conn.sub.reconnect_rx();
    let mut cmd_events = inner.conn.client.reconnect_rx();
    let mut topology = inner.conn.sub.cluster_change_rx();
    loop {
        let resubscribe = tokio::select! {
            r = sub_events.recv() => match r {
                Err(broadcast::error::RecvError::Closed) => return,
                Ok(server) => {
                    tracing::info!(%server, "pub/sub connection re-established");
                    true
                }
                Err(_) => true,
            },
            r = topology.recv() => match r {
                Err(broadcast::error::RecvError::Closed) => return,
                _ => {
                    tracing::info!("cluster topology changed");
                    true
                }
            },
            // In a cluster the command client is often the first to learn of a failover (its
            // commands meet the new topology): the subscriber's map and subscriptions follow.
            r = cmd_events.recv() => match r {
                Err(broadcast::error::RecvError::Closed) => return,
                Ok(server) => {
                    tracing::info!(%server, "command connection re-established");
                    inner.conn.cluster
                }
                Err(_) => inner.conn.cluster,
            },
        };
        metrics().broker_reconnects.inc();
        if resubscribe {
            // Several events of one failover come together: one refresh for them all.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while sub_events.try_recv().is_ok()
                || topology.try_recv().is_ok()
                || cmd_events.try_recv().is_ok()
            {}
            let _ = inner.sub_tx.send(SubReq::RefreshAll);
        }
        inner.check_now.notify_one();
    }
}

// ---- replies ----------------------------------------------------------------------------------

pub(super) fn unavailable(e: FredError) -> BrokerError {
    BrokerError::Unavailable(e.details().to_string())
}

pub(super) fn bad_reply(what: &str) -> BrokerError {
    BrokerError::Unavailable(format!("unexpected Redis reply to {what}"))
}

pub(super) fn value_bytes(v: &Value) -> Option<Bytes> {
    match v {
        Value::Bytes(b) => Some(b.clone()),
        Value::String(s) => Some(s.inner().clone()),
        Value::Integer(i) => Some(Bytes::from(i.to_string())),
        _ => None,
    }
}

pub(super) fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => u64::try_from(*i).ok(),
        Value::String(s) => s.parse().ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

pub(super) fn value_str(v: &Value) -> Option<Arc<str>> {
    match v {
        Value::String(s) => Some(Arc::from(&**s)),
        Value::Bytes(b) => std::str::from_utf8(b).ok().map(Arc::from),
        _ => None,
    }
}

pub(super) fn value_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: &str, urls: &[&str]) -> BrokerConfig {
        BrokerConfig {
            kind: kind.into(),
            urls: urls.iter().map(|u| u.to_string()).collect(),
            ..BrokerConfig::default()
        }
    }

    #[test]
    fn urls_are_checked() {
        assert!(parse_url("redis://127.0.0.1:6379").is_ok());
        assert!(parse_url("http://127.0.0.1:6379").is_err());
    }

    #[test]
    fn one_server_or_a_cluster_from_its_seeds() {
        let c = fred_config(&config("redis", &["redis://127.0.0.1:7000"])).unwrap();
        assert!(matches!(c.server, ServerConfig::Centralized { .. }));
        assert!(!c.fail_fast);
        let c = fred_config(&config(
            "redis-cluster",
            &["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"],
        ))
        .unwrap();
        match c.server {
            ServerConfig::Clustered { hosts, .. } => assert_eq!(hosts.len(), 2),
            other => panic!("{other:?}"),
        }
        let e = fred_config(&config("redis", &["http://x:1"])).unwrap_err();
        assert_eq!(e.to_string(), "broker.urls: must start with redis://");
        assert!(fred_config(&config("redis", &[])).is_err());
    }

    #[test]
    fn replies_decode() {
        assert_eq!(value_u64(&Value::Integer(7)), Some(7));
        assert_eq!(value_u64(&Value::Integer(-1)), None);
        assert_eq!(value_u64(&Value::from("12")), Some(12));
        assert_eq!(
            value_u64(&Value::Bytes(Bytes::from_static(b"13"))),
            Some(13)
        );
        assert_eq!(value_str(&Value::from("ab")).as_deref(), Some("ab"));
        assert_eq!(value_str(&Value::Integer(1)), None);
        assert_eq!(
            value_bytes(&Value::Integer(42)).as_deref(),
            Some(&b"42"[..])
        );
        assert!(value_array(Value::Null).is_empty());
        assert_eq!(value_array(Value::Integer(1)).len(), 1);
    }
}
