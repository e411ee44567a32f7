//! Redis and Redis Cluster brokers (`broker.kind = "redis"` / `"redis-cluster"`), on `fred`.
//!
//! One implementation serves both: sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`, Redis ≥ 7) behaves
//! like plain pub/sub on a single server and routes each channel to the shard owning its slot in
//! a cluster. Every key of one channel carries the channel as its hash tag, so one Lua script can
//! touch them all atomically:
//!
//! | key | what |
//! | --- | --- |
//! | `P:{C}` | the shard channel publications of `C` travel on |
//! | `P:{C}:m` | hash: `e` epoch, `o` last offset, `r` replication id of the master that wrote it (a different master → new epoch); expires `meta_ttl` after the last publish |
//! | `P:{C}:s` | stream: history, entry id `<offset>-0`, `MAXLEN ~ history_size`, expires `history_ttl` |
//! | `P:{C}:p` / `P:{C}:z` | presence: hash client → entry, sorted set client → expiry (ms) |
//! | `P:{C}:i:<key>` | idempotency key → `"<offset> <epoch>"`, 5 minutes |
//! | `P:{C}:r:<id>` | a publish request's own id (no idempotency key given) → same, `3 × command_timeout + 5 s` (≥ 10 s): a retried attempt isn't published twice |
//! | `P:{!sched:N}:z/h/i:<key>` | scheduled publications, 16 buckets spread over slots |
//! | `P:{!nodes}` / `P:{!nodes}:z` | node infos for `/api/info`, with expiry |
//! | `P:{!ctl}` | shard channel of fleet-wide commands (disconnect, unsubscribe) |
//! | `P:{C}:w`, `P:{!u:<user>}:w`, `P:{!track:<u/c>:N}:z` | webhooks' memberships and their sweep index (`tracking`) |
//!
//! Delivery guarantees on a node: every publication of a channel it subscribes to passes one
//! sequencer (per channel: epoch and last offset delivered). Duplicates are dropped; a gap (a
//! lost pub/sub message, a lagging receiver, a failover) is filled from history before the next
//! publication goes out; when history can't fill it, local subscribers get an `unsubscribe` push
//! with `resubscribe: true` and recover by themselves. A periodic position check catches gaps no
//! later publication would reveal, and re-subscribes channels whose live stream went quiet.
//! A repair's history read runs in its own task; only that channel's publications wait for it.
//! With `broker.replicas_ack = N`, a publish is acknowledged after `WAIT N` succeeds.
//!
//! The parts:
//!
//! | module | what |
//! | --- | --- |
//! | `mod.rs` | [`RedisBroker`], its shared state, publish and history, fleet commands, node infos |
//! | `connection` | the clients, one server or a cluster, health, reconnect/topology events |
//! | `scripts` | the Lua scripts (`scripts/*.lua`) and their handles |
//! | `subscriptions` | the ordered, batching subscription task; the task feeding the sequencer; position checks |
//! | `sequencer` | the per-channel sequencer, a pure state machine (holds a channel's publications until its baseline, or while it is repaired) |
//! | `scheduling` | scheduled publications: buckets, claims with a lease, cancel |
//! | `presence` | presence entries with expiry |
//! | `tracking` | membership with expiry for webhooks (users online, channels occupied) |

mod connection;
mod presence;
mod scheduling;
mod scripts;
mod sequencer;
mod subscriptions;
mod tracking;

pub use connection::{parse_url, StartError};

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::{EventInterface, PubsubInterface, Value};
use fred::types::scripts::Script;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, Notify};

use super::{
    new_epoch, Broker, BrokerError, ChannelOptions, Control, DeliverySink, HistoryItem,
    HistoryResult, NodeInfo, PresenceEntry, PublishRequest, Published, StreamPosition, TrackKind,
};
use crate::config::BrokerConfig;
use crate::metrics::metrics;
use crate::protocol::{ChannelName, Position};
use connection::{bad_reply, value_array, value_bytes, value_str, value_u64, Connection};
use scripts::Scripts;
use subscriptions::{SeqEvent, SubReq};

const IDEMPOTENCY_TTL_SECS: u64 = 300;
/// Node infos expire after this long without a heartbeat.
const NODE_TTL_MS: u64 = 15_000;

/// What the broker's tasks share.
struct Inner {
    hub: Arc<dyn DeliverySink>,
    conn: Connection,
    prefix: String,
    /// Tells this node's scheduled-publication ids apart from other nodes'.
    node_tag: String,
    /// Numbers this node's scheduled publications.
    schedule_seq: AtomicU64,
    scripts: Scripts,
    scheduled_pending: AtomicUsize,
    sub_tx: mpsc::UnboundedSender<SubReq>,
    seq_tx: mpsc::UnboundedSender<SeqEvent>,
    /// Shard channels this node subscribes to (the position check walks it).
    subscribed: Mutex<HashSet<String>>,
    check_now: Notify,
    check_interval: Duration,
    /// The sequencer's generation (see `Sequencer::generation`) as of its last step, for the
    /// position check to record before it reads.
    generation: AtomicU64,
    /// `ferrocast_publications_total{source="broker"}`, resolved once (a label lookup locks).
    broker_publications: prometheus::IntCounter,
    /// `broker.replicas_ack`: replicas that must have a publication before it is acknowledged.
    replicas_ack: u32,
    /// The `WAIT` timeout (half of `broker.command_timeout`, so WAIT answers before fred gives
    /// up on it).
    wait_timeout: Duration,
    /// How long a publish request's own id is remembered (covers the client library's retries).
    request_id_ttl_secs: u64,
}

pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl RedisBroker {
    /// Connects (without waiting for Redis to be up: the node starts, reports not ready, and
    /// serves as soon as Redis answers) and starts the broker's tasks on the current runtime.
    pub async fn start(
        config: &BrokerConfig,
        hub: Arc<dyn DeliverySink>,
    ) -> Result<Arc<dyn Broker>, StartError> {
        let conn = Connection::open(config).await?;
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let (seq_tx, seq_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            hub,
            node_tag: new_epoch().to_string(),
            conn,
            prefix: config.prefix.clone(),
            schedule_seq: AtomicU64::new(1),
            scripts: Scripts::new(),
            scheduled_pending: AtomicUsize::new(0),
            sub_tx,
            seq_tx,
            subscribed: Mutex::new(HashSet::new()),
            check_now: Notify::new(),
            generation: AtomicU64::new(1),
            broker_publications: metrics().publications.with_label_values(&["broker"]),
            check_interval: config.position_check_interval.0,
            replicas_ack: config.replicas_ack,
            wait_timeout: (config.command_timeout.0 / 2).max(Duration::from_millis(1)),
            request_id_ttl_secs: request_id_ttl(config.command_timeout.0),
        });
        let messages = inner.conn.sub.message_rx();
        tokio::spawn(subscriptions::run_sequencer(
            inner.clone(),
            messages,
            seq_rx,
        ));
        tokio::spawn(subscriptions::run_subscriptions(inner.clone(), sub_rx));
        tokio::spawn(connection::run_reconnects(inner.clone()));
        tokio::spawn(subscriptions::run_position_checks(inner.clone()));
        tokio::spawn(scheduling::run_scheduler(inner.clone()));
        // Fleet-wide commands travel on one shard channel every node subscribes to.
        let (tx, _rx) = oneshot::channel();
        let _ = inner
            .sub_tx
            .send(SubReq::Subscribe(inner.control_channel(), tx));
        Ok(Arc::new(RedisBroker { inner }))
    }
}

impl Inner {
    fn key(&self, channel: &str, suffix: &str) -> String {
        format!("{}:{{{}}}:{}", self.prefix, channel, suffix)
    }

    fn shard_channel(&self, channel: &str) -> String {
        format!("{}:{{{}}}", self.prefix, channel)
    }

    fn control_channel(&self) -> String {
        self.shard_channel("!ctl")
    }

    /// `P:{C}` → `C`.
    fn channel_of<'a>(&self, shard_channel: &'a str) -> Option<&'a str> {
        shard_channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix('}')
    }

    async fn eval(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, BrokerError> {
        self.conn.eval(script, keys, args).await
    }

    async fn publish_now(
        &self,
        req: &PublishRequest,
        published_at_us: u64,
    ) -> Result<StreamPosition, BrokerError> {
        let ch = req.channel.as_str();
        // Without the caller's idempotency key the request gets an id of its own: fred may send
        // the script again after a connection drop (`max_command_attempts`) when the first
        // attempt did run, and the id makes that second run answer the first one's outcome.
        let idem_key = match req.idempotency_key.as_deref() {
            Some(k) => (self.key(ch, &format!("i:{k}")), IDEMPOTENCY_TTL_SECS),
            None => (
                self.key(ch, &format!("r:{}", new_epoch())),
                self.request_id_ttl_secs,
            ),
        };
        let keys = vec![
            self.key(ch, "s"),
            self.key(ch, "m"),
            self.shard_channel(ch),
            idem_key.0,
        ];
        let meta_ttl = req.options.meta_ttl().as_millis().max(1) as i64;
        let history_ttl = if req.options.history_ttl.is_zero() {
            meta_ttl
        } else {
            req.options.history_ttl.as_millis().max(1) as i64
        };
        let args: Vec<Value> = vec![
            Value::Bytes(req.data.clone()),
            Value::Bytes(req.info.clone().unwrap_or_default()),
            Value::Integer(req.options.history_size as i64),
            Value::Integer(history_ttl),
            Value::Integer(meta_ttl),
            Value::from(&*new_epoch()),
            Value::Integer(published_at_us as i64),
            Value::from("1"),
            Value::Integer(idem_key.1 as i64),
        ];
        let v = value_array(self.eval(&self.scripts.publish, keys, args).await?);
        let position = match (v.get(1).and_then(value_u64), v.get(2).and_then(value_str)) {
            (Some(offset), Some(epoch)) => StreamPosition { offset, epoch },
            _ => return Err(bad_reply("publish")),
        };
        if self.replicas_ack > 0 {
            self.wait_replicas(ch).await?;
        }
        Ok(position)
    }

    /// `WAIT replicas_ack <timeout>` on the connection to the channel's master (the one that ran
    /// the publish script): Err when fewer replicas acknowledged in time.
    async fn wait_replicas(&self, channel: &str) -> Result<(), BrokerError> {
        use fred::prelude::ClientLike;
        use fred::types::{ClusterHash, CustomCommand};
        let slot = fred::util::redis_keyslot(self.key(channel, "m").as_bytes());
        let cmd = CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), false);
        let r: Result<Value, _> = self
            .conn
            .client
            .custom(
                cmd,
                vec![
                    Value::Integer(self.replicas_ack as i64),
                    Value::Integer(self.wait_timeout.as_millis().max(1) as i64),
                ],
            )
            .await;
        let acked = value_u64(&self.conn.ok(r)?).ok_or_else(|| bad_reply("WAIT"))?;
        if acked < u64::from(self.replicas_ack) {
            return Err(BrokerError::Unavailable(format!(
                "{acked} of {} replicas acknowledged the publication in time",
                self.replicas_ack
            )));
        }
        Ok(())
    }

    /// History read used by both the API and gap repair.
    async fn read_history(
        &self,
        channel: &str,
        options: ChannelOptions,
        since: Option<(u64, &str)>,
        limit: Option<usize>,
    ) -> Result<HistoryResult, BrokerError> {
        let keys = vec![self.key(channel, "s"), self.key(channel, "m")];
        let (mode, since_offset, since_epoch) = match since {
            Some((o, e)) => ("since", o as i64, e.to_string()),
            None => ("last", 0, String::new()),
        };
        let args: Vec<Value> = vec![
            Value::from(&*new_epoch()),
            Value::Integer(options.meta_ttl().as_millis().max(1) as i64),
            Value::from(mode),
            Value::Integer(since_offset),
            Value::from(since_epoch),
            Value::Integer(limit.map_or(-1, |l| l.min(i64::MAX as usize) as i64)),
            Value::Integer(options.history_size as i64),
        ];
        let mut v = value_array(self.eval(&self.scripts.history, keys, args).await?).into_iter();
        let (Some(epoch), Some(top), Some(ok), rows) = (v.next(), v.next(), v.next(), v.next())
        else {
            return Err(bad_reply("history"));
        };
        let position = StreamPosition {
            offset: value_u64(&top).ok_or_else(|| bad_reply("history"))?,
            epoch: value_str(&epoch).ok_or_else(|| bad_reply("history"))?,
        };
        if value_u64(&ok) != Some(1) {
            return Err(BrokerError::Unrecoverable { position });
        }
        Ok(HistoryResult {
            publications: rows.map(parse_entries).unwrap_or_default(),
            position,
        })
    }
}

/// How long a publish request's own id is kept: past every retry fred may make of it (each
/// attempt times out after `command_timeout`; reconnect backoff is at most 2 s).
fn request_id_ttl(command_timeout: Duration) -> u64 {
    (command_timeout.as_secs() * 3 + 5).max(10)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unix_us() -> u64 {
    crate::clock::unix_micros()
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn raw_or_null(b: Option<&Bytes>) -> &str {
    b.and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("null")
}

/// Stream entries `[[id, [field, value, …]], …]` → history items.
fn parse_entries(v: Value) -> Vec<HistoryItem> {
    let mut out = Vec::new();
    for row in value_array(v) {
        let mut row = value_array(row).into_iter();
        let (Some(id), Some(fields)) = (row.next(), row.next()) else {
            continue;
        };
        let Some(id) = value_bytes(&id) else { continue };
        let Some(offset) = std::str::from_utf8(&id)
            .ok()
            .and_then(|s| s.split('-').next())
            .and_then(|s| s.parse().ok())
        else {
            continue;
        };
        let mut data = None;
        let mut info = None;
        let mut fields = value_array(fields).into_iter();
        while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
            match value_bytes(&k).as_deref() {
                Some(b"d") => data = value_bytes(&v),
                Some(b"i") => info = value_bytes(&v).filter(|b| !b.is_empty()),
                _ => {}
            }
        }
        if let Some(data) = data {
            out.push(HistoryItem { offset, data, info });
        }
    }
    out
}

// ---- fleet commands on `{!ctl}` ------------------------------------------------------------------

/// A fleet command as it travels on the control channel; None for the ones local by nature.
fn encode_control(msg: &Control) -> Option<String> {
    let json = match msg {
        Control::DisconnectUser { user, code, reason } => serde_json::json!({
            "t": "disconnect", "user": user, "code": code, "reason": reason,
        }),
        Control::UnsubscribeUser { user, channel } => serde_json::json!({
            "t": "unsubscribe", "user": user, "channel": channel.as_str(),
        }),
        Control::SubscribeUser { user, channel } => serde_json::json!({
            "t": "subscribe", "user": user, "channel": channel.as_str(),
        }),
        Control::ResetChannel { .. } => return None,
    };
    Some(json.to_string())
}

/// A fleet command from the control channel: Err when it doesn't decode, None when it names a
/// command or channel this node doesn't know.
fn decode_control(payload: &[u8]) -> Result<Option<Control>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Raw {
        t: String,
        user: String,
        code: Option<u16>,
        reason: Option<String>,
        channel: Option<String>,
    }
    let raw = serde_json::from_slice::<Raw>(payload)?;
    Ok(match raw.t.as_str() {
        "disconnect" => Some(Control::DisconnectUser {
            user: raw.user,
            code: raw.code.unwrap_or(4000),
            reason: raw.reason.unwrap_or_default(),
        }),
        "unsubscribe" => match raw.channel.as_deref().map(ChannelName::parse) {
            Some(Ok(channel)) => Some(Control::UnsubscribeUser {
                user: raw.user,
                channel,
            }),
            _ => None,
        },
        "subscribe" => match raw.channel.as_deref().map(ChannelName::parse) {
            Some(Ok(channel)) => Some(Control::SubscribeUser {
                user: raw.user,
                channel,
            }),
            _ => None,
        },
        _ => None,
    })
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, req: PublishRequest) -> Result<Published, BrokerError> {
        let position = self.inner.publish_now(&req, unix_us()).await?;
        Ok(Published::Now(position))
    }

    async fn schedule(
        &self,
        at: SystemTime,
        req: PublishRequest,
    ) -> Result<Published, BrokerError> {
        scheduling::schedule(&self.inner, at, req).await
    }

    async fn cancel(&self, id: &str) -> Result<(), BrokerError> {
        scheduling::cancel(&self.inner, id).await
    }

    async fn publish_control(
        &self,
        channel: &ChannelName,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        let mut msg = format!("c {}\n", unix_us()).into_bytes();
        msg.extend_from_slice(&payload);
        let inner = &self.inner;
        let r = inner
            .conn
            .client
            .spublish::<Value, _, _>(inner.shard_channel(channel.as_str()), Bytes::from(msg))
            .await;
        inner.conn.ok(r).map(|_| ())
    }

    async fn history(
        &self,
        channel: &ChannelName,
        options: ChannelOptions,
        since: Option<&Position>,
        limit: Option<usize>,
    ) -> Result<HistoryResult, BrokerError> {
        self.inner
            .read_history(
                channel.as_str(),
                options,
                since.map(|p| (p.offset, &*p.epoch)),
                limit,
            )
            .await
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        subscriptions::subscribe(&self.inner, channel).await
    }

    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        subscriptions::unsubscribe(&self.inner, channel);
        Ok(())
    }

    async fn presence_add(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        presence::add(&self.inner, channel, entry, ttl).await
    }

    async fn presence_remove(
        &self,
        channel: &ChannelName,
        client: &str,
    ) -> Result<(), BrokerError> {
        presence::remove(&self.inner, channel, client).await
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, BrokerError> {
        presence::get(&self.inner, channel).await
    }

    async fn control(&self, msg: Control) -> Result<(), BrokerError> {
        let Some(json) = encode_control(&msg) else {
            // Local by nature.
            self.inner.hub.control(msg);
            return Ok(());
        };
        let inner = &self.inner;
        let r = inner
            .conn
            .client
            .spublish::<Value, _, _>(inner.control_channel(), json)
            .await;
        inner.conn.ok(r).map(|_| ())
    }

    async fn nodes(&self, local: NodeInfo) -> Result<Vec<NodeInfo>, BrokerError> {
        let inner = &self.inner;
        let now = unix_ms();
        let json = serde_json::to_string(&local).unwrap_or_default();
        let v = inner
            .eval(
                &inner.scripts.nodes,
                vec![inner.key("!nodes", "h"), inner.key("!nodes", "z")],
                vec![
                    Value::from(local.id.as_str()),
                    Value::from(json),
                    Value::Integer((now + NODE_TTL_MS) as i64),
                    Value::Integer(now as i64),
                ],
            )
            .await?;
        let mut out: Vec<NodeInfo> = value_array(v)
            .iter()
            .filter_map(value_bytes)
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn track_join(
        &self,
        kind: TrackKind,
        key: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<bool, BrokerError> {
        tracking::join(&self.inner, kind, key, member, ttl).await
    }

    async fn track_leave(
        &self,
        kind: TrackKind,
        key: &str,
        member: &str,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        tracking::leave(&self.inner, kind, key, member, delay).await
    }

    async fn track_refresh(
        &self,
        kind: TrackKind,
        keys: &[String],
        member: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, BrokerError> {
        tracking::refresh(&self.inner, kind, keys, member, ttl).await
    }

    async fn track_sweep(&self, kind: TrackKind) -> Result<Vec<String>, BrokerError> {
        tracking::sweep(&self.inner, kind).await
    }

    fn scheduled_pending(&self) -> usize {
        self.inner.scheduled_pending.load(Ordering::Relaxed)
    }

    fn is_up(&self) -> bool {
        self.inner.conn.is_up()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        let mut kv = Vec::new();
        for (k, v) in fields {
            kv.push(Value::from(*k));
            kv.push(Value::from(*v));
        }
        Value::Array(vec![Value::from(id), Value::Array(kv)])
    }

    #[test]
    fn stream_entries_become_history_items() {
        let rows = Value::Array(vec![
            entry("3-0", &[("d", "{\"a\":1}"), ("i", "")]),
            entry("4-0", &[("d", "2"), ("i", "{\"user\":\"17\"}")]),
            entry("x-0", &[("d", "3")]),  // no offset
            entry("5-0", &[("i", "{}")]), // no data
        ]);
        let items = parse_entries(rows);
        assert_eq!(items.len(), 2);
        assert_eq!(
            (items[0].offset, &items[0].data[..]),
            (3, &b"{\"a\":1}"[..])
        );
        assert_eq!(items[0].info, None);
        assert_eq!(items[1].offset, 4);
        assert_eq!(items[1].info.as_deref(), Some(&b"{\"user\":\"17\"}"[..]));
        assert!(parse_entries(Value::Null).is_empty());
    }

    #[test]
    fn fleet_commands_round_trip() {
        let msg = Control::DisconnectUser {
            user: "ada".into(),
            code: 4001,
            reason: "bye".into(),
        };
        let json = encode_control(&msg).unwrap();
        match decode_control(json.as_bytes()).unwrap() {
            Some(Control::DisconnectUser { user, code, reason }) => {
                assert_eq!((user.as_str(), code, reason.as_str()), ("ada", 4001, "bye"))
            }
            other => panic!("{other:?}"),
        }
        let msg = Control::UnsubscribeUser {
            user: "ada".into(),
            channel: ChannelName::parse("room:1").unwrap(),
        };
        let json = encode_control(&msg).unwrap();
        match decode_control(json.as_bytes()).unwrap() {
            Some(Control::UnsubscribeUser { user, channel }) => {
                assert_eq!((user.as_str(), channel.as_str()), ("ada", "room:1"))
            }
            other => panic!("{other:?}"),
        }
        let msg = Control::SubscribeUser {
            user: "ada".into(),
            channel: ChannelName::parse("room:2").unwrap(),
        };
        let json = encode_control(&msg).unwrap();
        match decode_control(json.as_bytes()).unwrap() {
            Some(Control::SubscribeUser { user, channel }) => {
                assert_eq!((user.as_str(), channel.as_str()), ("ada", "room:2"))
            }
            other => panic!("{other:?}"),
        }
        let reset = Control::ResetChannel {
            channel: ChannelName::parse("room:1").unwrap(),
        };
        assert!(encode_control(&reset).is_none(), "local only");
        // A disconnect without code or reason gets the defaults.
        match decode_control(br#"{"t":"disconnect","user":"u"}"#).unwrap() {
            Some(Control::DisconnectUser { code, reason, .. }) => {
                assert_eq!((code, reason.as_str()), (4000, ""))
            }
            other => panic!("{other:?}"),
        }
        assert!(decode_control(br#"{"t":"reboot","user":"u"}"#)
            .unwrap()
            .is_none());
        assert!(
            decode_control(br#"{"t":"unsubscribe","user":"u","channel":"a b"}"#)
                .unwrap()
                .is_none()
        );
        assert!(decode_control(b"{").is_err());
    }
}
