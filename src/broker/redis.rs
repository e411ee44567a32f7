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
//! | `P:{C}:m` | hash: `e` epoch, `o` last offset (expires `meta_ttl` after the last publish) |
//! | `P:{C}:s` | stream: history, entry id `<offset>-0`, `MAXLEN ~ history_size`, expires `history_ttl` |
//! | `P:{C}:p` / `P:{C}:z` | presence: hash client → entry, sorted set client → expiry (ms) |
//! | `P:{C}:i:<key>` | idempotency key → `"<offset> <epoch>"`, 5 minutes |
//! | `P:{!sched:N}:z/h/i:<key>` | scheduled publications, 16 buckets spread over slots |
//! | `P:{!nodes}` / `P:{!nodes}:z` | node infos for `/api/info`, with expiry |
//! | `P:{!ctl}` | shard channel of fleet-wide commands (disconnect, unsubscribe) |
//!
//! Delivery guarantees on a node: every publication of a channel it subscribes to passes one
//! sequencer (per channel: epoch and last offset delivered). Duplicates are dropped; a gap (a
//! lost pub/sub message, a lagging receiver, a failover) is filled from history before the next
//! publication goes out; when history can't fill it, local subscribers get an `unsubscribe` push
//! with `resubscribe: true` and recover by themselves. A periodic position check catches gaps no
//! later publication would reveal, and re-subscribes channels whose live stream went quiet.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::{
    ClientLike, Config as FredConfig, Error as FredError, EventInterface, PubsubInterface,
    ReconnectPolicy, ServerConfig, Value,
};
use fred::types::scripts::Script;
use fred::types::Builder;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use super::{
    new_epoch, Broker, BrokerError, ChannelOptions, Control, DeliverySink, HistoryItem,
    HistoryResult, NodeInfo, PresenceEntry, PublishRequest, Published, StreamPosition,
};
use crate::config::BrokerConfig;
use crate::metrics::metrics;
use crate::protocol::{reply, ChannelName, Position};

const IDEMPOTENCY_TTL_SECS: u64 = 300;
const SCHEDULE_BUCKETS: usize = 16;
/// How often each node looks for due scheduled publications.
const SCHEDULE_POLL: Duration = Duration::from_millis(25);
/// A claimed scheduled publication returns to the queue after this long unless its node
/// confirmed it (the idempotency key then stops a second delivery).
const SCHEDULE_LEASE_MS: u64 = 30_000;
/// Node infos expire after this long without a heartbeat.
const NODE_TTL_MS: u64 = 15_000;
/// At most this many subscription changes go to Redis in one batch.
const MAX_BATCH: usize = 4096;

/// Parses `redis://[user:password@]host:port[/db]` into fred's config (validation and start).
pub fn parse_url(url: &str) -> Result<FredConfig, String> {
    if !url.starts_with("redis://") {
        return Err("must start with redis://".into());
    }
    FredConfig::from_url(url).map_err(|e| e.details().to_string())
}

// ---- Lua scripts (atomic per channel: all keys share the channel's hash tag) -------------------

/// KEYS: stream, meta, shard channel, idempotency key. ARGV: data, info, history_size,
/// history_ttl_ms, meta_ttl_ms, new_epoch, published_at_us, has_idempotency_key, idem_ttl_s.
/// Returns {"ok"|"dup", offset, epoch}.
const PUBLISH_LUA: &str = r#"
if ARGV[8] == '1' then
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local sp = string.find(prev, ' ')
    return {'dup', tonumber(string.sub(prev, 1, sp - 1)), string.sub(prev, sp + 1)}
  end
end
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', KEYS[2], 'e', epoch)
  redis.call('DEL', KEYS[1])
end
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', size, offset .. '-0', 'd', ARGV[1], 'i', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
redis.call('SPUBLISH', KEYS[3], 'p ' .. offset .. ' ' .. epoch .. ' ' .. ARGV[7] .. ' ' ..
  string.len(ARGV[2]) .. '\n' .. ARGV[2] .. ARGV[1])
if ARGV[8] == '1' then
  redis.call('SET', KEYS[4], offset .. ' ' .. epoch, 'EX', ARGV[9])
end
return {'ok', offset, epoch}
"#;

/// KEYS: stream, meta. ARGV: new_epoch, meta_ttl_ms, mode ("last" | "since"), since_offset,
/// since_epoch, limit (-1 = none), history_size.
/// Returns {epoch, top, recovered (1/0), entries}.
const HISTORY_LUA: &str = r#"
local epoch = redis.call('HGET', KEYS[2], 'e')
local top = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[1])
else
  top = tonumber(redis.call('HGET', KEYS[2], 'o') or '0')
end
local limit = tonumber(ARGV[6])
if ARGV[3] == 'last' then
  local n = tonumber(ARGV[7])
  if limit >= 0 and limit < n then n = limit end
  local out = {}
  if n > 0 then
    local rows = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', n)
    for i = #rows, 1, -1 do table.insert(out, rows[i]) end
  end
  return {epoch, top, 1, out}
end
local since = tonumber(ARGV[4])
if ARGV[5] ~= epoch or since > top then return {epoch, top, 0, {}} end
if since == top or limit == 0 then return {epoch, top, 1, {}} end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first == 0 then return {epoch, top, 0, {}} end
local firstoff = tonumber(string.match(first[1][1], '^(%d+)'))
if firstoff > since + 1 then return {epoch, top, 0, {}} end
local rows
if limit > 0 then
  rows = redis.call('XRANGE', KEYS[1], '(' .. since .. '-0', '+', 'COUNT', limit)
else
  rows = redis.call('XRANGE', KEYS[1], '(' .. since .. '-0', '+')
end
return {epoch, top, 1, rows}
"#;

/// KEYS: presence hash, presence zset. ARGV: client, entry, expire_at_ms, ttl_ms.
const PRESENCE_ADD_LUA: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"#;

/// KEYS: presence hash, presence zset. ARGV: client.
const PRESENCE_REMOVE_LUA: &str = r#"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"#;

/// KEYS: presence hash, presence zset. ARGV: now_ms. Drops expired entries, returns the rest.
const PRESENCE_GET_LUA: &str = r#"
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, c in ipairs(dead) do redis.call('HDEL', KEYS[1], c) end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1]) end
return redis.call('HVALS', KEYS[1])
"#;

/// KEYS: zset, hash, idempotency key. ARGV: id, at_ms, payload, has_idem, idem_ttl_s.
/// Returns the id (the earlier one when the idempotency key was seen).
const SCHEDULE_ADD_LUA: &str = r#"
if ARGV[4] == '1' then
  local prev = redis.call('GET', KEYS[3])
  if prev then return prev end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if ARGV[4] == '1' then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[5]) end
return ARGV[1]
"#;

/// KEYS: zset, hash. ARGV: now_ms, lease_ms, max. Claims due entries by pushing their score a
/// lease into the future; returns {id, payload, id, payload, …}.
const SCHEDULE_CLAIM_LUA: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, id in ipairs(ids) do
  local p = redis.call('HGET', KEYS[2], id)
  if p then
    redis.call('ZADD', KEYS[1], until_ms, id)
    table.insert(out, id)
    table.insert(out, p)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"#;

/// KEYS: zset, hash. ARGV: id.
const SCHEDULE_DONE_LUA: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#;

/// KEYS: zset, hash. ARGV: id. 1 when it was waiting (now cancelled), else 0.
const SCHEDULE_CANCEL_LUA: &str = r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"#;

/// KEYS: nodes hash, nodes zset. ARGV: id, info json, expire_at_ms, now_ms.
const NODES_LUA: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
for _, n in ipairs(dead) do redis.call('HDEL', KEYS[1], n) end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4]) end
return redis.call('HVALS', KEYS[1])
"#;

struct Scripts {
    publish: Script,
    history: Script,
    presence_add: Script,
    presence_remove: Script,
    presence_get: Script,
    schedule_add: Script,
    schedule_claim: Script,
    schedule_done: Script,
    schedule_cancel: Script,
    nodes: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            publish: Script::from_lua(PUBLISH_LUA),
            history: Script::from_lua(HISTORY_LUA),
            presence_add: Script::from_lua(PRESENCE_ADD_LUA),
            presence_remove: Script::from_lua(PRESENCE_REMOVE_LUA),
            presence_get: Script::from_lua(PRESENCE_GET_LUA),
            schedule_add: Script::from_lua(SCHEDULE_ADD_LUA),
            schedule_claim: Script::from_lua(SCHEDULE_CLAIM_LUA),
            schedule_done: Script::from_lua(SCHEDULE_DONE_LUA),
            schedule_cancel: Script::from_lua(SCHEDULE_CANCEL_LUA),
            nodes: Script::from_lua(NODES_LUA),
        }
    }
}

// ---- the broker -------------------------------------------------------------------------------

enum SubReq {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
    /// Subscribe again (the live stream of the channel looks broken).
    Refresh(String),
    /// Subscribe every channel again (after a reconnect or a topology change).
    RefreshAll,
}

/// Events for the sequencer task (which owns every channel's delivery state).
enum SeqEvent {
    /// The node just subscribed; publications up to `top` are of no interest to anyone here.
    Baseline {
        channel: String,
        epoch: Arc<str>,
        top: u64,
    },
    Forget(String),
    /// The position check read the channel's stream top.
    Check {
        channel: String,
        epoch: Arc<str>,
        top: u64,
        /// `Inner::generation` before the read was issued.
        read_at: u64,
    },
}

struct Inner {
    hub: Arc<dyn DeliverySink>,
    client: fred::clients::Client,
    sub: SubscriberClient,
    prefix: String,
    cluster: bool,
    node_tag: String,
    seq: AtomicU64,
    scripts: Scripts,
    scheduled_pending: AtomicUsize,
    /// The last command reached Redis (health, readiness).
    healthy: AtomicBool,
    sub_tx: mpsc::UnboundedSender<SubReq>,
    seq_tx: mpsc::UnboundedSender<SeqEvent>,
    /// Shard channels this node subscribes to (the position check walks it).
    subscribed: Mutex<HashSet<String>>,
    check_now: Notify,
    check_interval: Duration,
    /// Bumped on every change of a channel's sequencer state (see `ChanState::generation`).
    generation: AtomicU64,
    /// `ferrocast_publications_total{source="broker"}`, resolved once (a label lookup locks).
    broker_publications: prometheus::IntCounter,
}

pub struct RedisBroker {
    inner: Arc<Inner>,
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

fn unavailable(e: FredError) -> BrokerError {
    BrokerError::Unavailable(e.details().to_string())
}

fn value_bytes(v: &Value) -> Option<Bytes> {
    match v {
        Value::Bytes(b) => Some(b.clone()),
        Value::String(s) => Some(s.inner().clone()),
        Value::Integer(i) => Some(Bytes::from(i.to_string())),
        _ => None,
    }
}

fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => u64::try_from(*i).ok(),
        Value::String(s) => s.parse().ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn value_str(v: &Value) -> Option<Arc<str>> {
    match v {
        Value::String(s) => Some(Arc::from(&**s)),
        Value::Bytes(b) => std::str::from_utf8(b).ok().map(Arc::from),
        _ => None,
    }
}

fn value_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

fn bad_reply(what: &str) -> BrokerError {
    BrokerError::Unavailable(format!("unexpected Redis reply to {what}"))
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

impl RedisBroker {
    /// Connects (without waiting for Redis to be up: the node starts, reports not ready, and
    /// serves as soon as Redis answers) and starts the broker's tasks on the current runtime.
    pub async fn start(
        config: &BrokerConfig,
        hub: Arc<dyn DeliverySink>,
    ) -> anyhow::Result<Arc<dyn Broker>> {
        let first = parse_url(&config.urls[0]).map_err(|e| anyhow::anyhow!("broker.urls: {e}"))?;
        let mut fred_config = first.clone();
        if config.kind == "redis-cluster" {
            let mut hosts = Vec::new();
            for url in &config.urls {
                let c = parse_url(url).map_err(|e| anyhow::anyhow!("broker.urls: {e}"))?;
                match c.server {
                    ServerConfig::Centralized { server } => hosts.push(server),
                    _ => anyhow::bail!("broker.urls: {url:?} is not a host:port URL"),
                }
            }
            fred_config.server = ServerConfig::Clustered {
                hosts,
                policy: Default::default(),
            };
        }
        fred_config.fail_fast = false;
        let timeout = config.command_timeout.0;
        let mut builder = Builder::from_config(fred_config);
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

        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let (seq_tx, seq_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            hub,
            node_tag: new_epoch().to_string(),
            client,
            sub,
            prefix: config.prefix.clone(),
            cluster: config.kind == "redis-cluster",
            seq: AtomicU64::new(1),
            scripts: Scripts::new(),
            scheduled_pending: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            sub_tx,
            seq_tx,
            subscribed: Mutex::new(HashSet::new()),
            check_now: Notify::new(),
            generation: AtomicU64::new(1),
            broker_publications: metrics().publications.with_label_values(&["broker"]),
            check_interval: config.position_check_interval.0,
        });
        let messages = inner.sub.message_rx();
        tokio::spawn(run_sequencer(inner.clone(), messages, seq_rx));
        tokio::spawn(run_subscriptions(inner.clone(), sub_rx));
        tokio::spawn(run_reconnects(inner.clone()));
        tokio::spawn(run_position_checks(inner.clone()));
        tokio::spawn(run_scheduler(inner.clone()));
        // Fleet-wide commands travel on one shard channel every node subscribes to.
        let (tx, _rx) = oneshot::channel();
        let _ = inner
            .sub_tx
            .send(SubReq::Subscribe(inner.control_channel(), tx));
        Ok(Arc::new(RedisBroker { inner }))
    }
}

impl Inner {
    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

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

    fn ok<T>(&self, r: Result<T, FredError>) -> Result<T, BrokerError> {
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

    async fn eval(
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

    async fn publish_now(
        &self,
        req: &PublishRequest,
        published_at_us: u64,
    ) -> Result<StreamPosition, BrokerError> {
        let ch = req.channel.as_str();
        let idem = req.idempotency_key.as_deref();
        let keys = vec![
            self.key(ch, "s"),
            self.key(ch, "m"),
            self.shard_channel(ch),
            self.key(ch, &format!("i:{}", idem.unwrap_or(""))),
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
            Value::from(if idem.is_some() { "1" } else { "0" }),
            Value::Integer(IDEMPOTENCY_TTL_SECS as i64),
        ];
        let v = value_array(self.eval(&self.scripts.publish, keys, args).await?);
        match (v.get(1).and_then(value_u64), v.get(2).and_then(value_str)) {
            (Some(offset), Some(epoch)) => Ok(StreamPosition { offset, epoch }),
            _ => Err(bad_reply("publish")),
        }
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

    fn schedule_bucket(&self, key: &str) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() as usize) % SCHEDULE_BUCKETS
    }

    fn schedule_keys(&self, bucket: usize) -> (String, String) {
        let tag = format!("!sched:{bucket}");
        (self.key(&tag, "z"), self.key(&tag, "h"))
    }
}

#[derive(Deserialize)]
struct PresenceRaw<'a> {
    c: String,
    u: String,
    #[serde(borrow)]
    i: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ScheduledRaw<'a> {
    c: String,
    #[serde(borrow)]
    d: &'a RawValue,
    #[serde(borrow)]
    i: Option<&'a RawValue>,
    hs: usize,
    ht: u64,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn raw_or_null(b: Option<&Bytes>) -> &str {
    b.and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("null")
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
        let inner = &self.inner;
        let seq = inner.seq.fetch_add(1, Ordering::Relaxed);
        // Idempotency keys are per channel, as for immediate publications.
        let scoped = req
            .idempotency_key
            .as_deref()
            .map(|k| format!("{}\n{k}", req.channel.as_str()));
        // The bucket leads the id, so `cancel` knows where to look.
        let bucket = match &scoped {
            Some(k) => inner.schedule_bucket(k),
            None => (seq as usize) % SCHEDULE_BUCKETS,
        };
        let id = format!("{bucket}.{}-{}-{seq}", unix_ms(), inner.node_tag);
        let (z, h) = inner.schedule_keys(bucket);
        let idem_key = inner.key(
            &format!("!sched:{bucket}"),
            &format!("i:{}", scoped.as_deref().unwrap_or("")),
        );
        let payload = format!(
            "{{\"c\":{},\"d\":{},\"i\":{},\"hs\":{},\"ht\":{}}}",
            json_str(req.channel.as_str()),
            std::str::from_utf8(&req.data).unwrap_or("null"),
            raw_or_null(req.info.as_ref()),
            req.options.history_size,
            req.options.history_ttl.as_millis(),
        );
        let at_ms = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let args: Vec<Value> = vec![
            Value::from(id.as_str()),
            Value::Integer(at_ms),
            Value::from(payload),
            Value::from(if req.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            }),
            Value::Integer(IDEMPOTENCY_TTL_SECS as i64),
        ];
        let v = inner
            .eval(&inner.scripts.schedule_add, vec![z, h, idem_key], args)
            .await?;
        let id = value_str(&v).ok_or_else(|| bad_reply("schedule"))?;
        Ok(Published::Scheduled(id.to_string()))
    }

    async fn cancel(&self, id: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let bucket = id
            .split_once('.')
            .and_then(|(b, _)| b.parse::<usize>().ok())
            .filter(|b| *b < SCHEDULE_BUCKETS)
            .ok_or(BrokerError::NotFound)?;
        let (z, h) = inner.schedule_keys(bucket);
        let v = inner
            .eval(
                &inner.scripts.schedule_cancel,
                vec![z, h],
                vec![Value::from(id)],
            )
            .await?;
        match value_u64(&v) {
            Some(1) => Ok(()),
            _ => Err(BrokerError::NotFound),
        }
    }

    async fn publish_control(
        &self,
        channel: &ChannelName,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        let mut msg = format!("c {}\n", unix_us()).into_bytes();
        msg.extend_from_slice(&payload);
        let r = self
            .inner
            .client
            .spublish::<Value, _, _>(self.inner.shard_channel(channel.as_str()), Bytes::from(msg))
            .await;
        self.inner.ok(r).map(|_| ())
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
        let (tx, rx) = oneshot::channel();
        let _ = self.inner.sub_tx.send(SubReq::Subscribe(
            self.inner.shard_channel(channel.as_str()),
            tx,
        ));
        rx.await
            .unwrap_or_else(|_| Err(BrokerError::Unavailable("broker stopped".into())))
    }

    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        let _ = self.inner.sub_tx.send(SubReq::Unsubscribe(
            self.inner.shard_channel(channel.as_str()),
        ));
        Ok(())
    }

    async fn presence_add(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let ch = channel.as_str();
        let json = format!(
            "{{\"c\":{},\"u\":{},\"i\":{}}}",
            json_str(&entry.client),
            json_str(&entry.user),
            raw_or_null(entry.info.as_ref())
        );
        let ttl_ms = ttl.as_millis().max(1) as i64;
        let args: Vec<Value> = vec![
            Value::from(entry.client.as_str()),
            Value::from(json),
            Value::Integer(unix_ms() as i64 + ttl_ms),
            Value::Integer(ttl_ms),
        ];
        inner
            .eval(
                &inner.scripts.presence_add,
                vec![inner.key(ch, "p"), inner.key(ch, "z")],
                args,
            )
            .await
            .map(|_| ())
    }

    async fn presence_remove(
        &self,
        channel: &ChannelName,
        client: &str,
    ) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let ch = channel.as_str();
        inner
            .eval(
                &inner.scripts.presence_remove,
                vec![inner.key(ch, "p"), inner.key(ch, "z")],
                vec![Value::from(client)],
            )
            .await
            .map(|_| ())
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, BrokerError> {
        let inner = &self.inner;
        let ch = channel.as_str();
        let v = inner
            .eval(
                &inner.scripts.presence_get,
                vec![inner.key(ch, "p"), inner.key(ch, "z")],
                vec![Value::Integer(unix_ms() as i64)],
            )
            .await?;
        let mut out = Vec::new();
        for item in value_array(v) {
            let Some(b) = value_bytes(&item) else {
                continue;
            };
            if let Ok(p) = serde_json::from_slice::<PresenceRaw>(&b) {
                out.push(PresenceEntry {
                    client: p.c,
                    user: p.u,
                    info: p
                        .i
                        .filter(|r| r.get() != "null")
                        .map(|r| Bytes::copy_from_slice(r.get().as_bytes())),
                });
            }
        }
        Ok(out)
    }

    async fn control(&self, msg: Control) -> Result<(), BrokerError> {
        let json = match &msg {
            Control::DisconnectUser { user, code, reason } => serde_json::json!({
                "t": "disconnect", "user": user, "code": code, "reason": reason,
            }),
            Control::UnsubscribeUser { user, channel } => serde_json::json!({
                "t": "unsubscribe", "user": user, "channel": channel.as_str(),
            }),
            // Local by nature.
            Control::ResetChannel { .. } => {
                self.inner.hub.control(msg);
                return Ok(());
            }
        };
        let r = self
            .inner
            .client
            .spublish::<Value, _, _>(self.inner.control_channel(), json.to_string())
            .await;
        self.inner.ok(r).map(|_| ())
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

    fn scheduled_pending(&self) -> usize {
        self.inner.scheduled_pending.load(Ordering::Relaxed)
    }

    fn is_up(&self) -> bool {
        self.inner.client.is_connected()
            && self.inner.sub.is_connected()
            && self.inner.healthy.load(Ordering::Relaxed)
    }
}

// ---- subscriptions: batched, in order -----------------------------------------------------------

/// Applies subscription changes in the order they were asked for, batching everything queued
/// (thousands of sockets arriving at once become a few `SSUBSCRIBE`s, one per hash slot).
async fn run_subscriptions(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<SubReq>) {
    let inner = &*inner;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // The last request per channel wins; every waiter is answered with the outcome.
        let mut want: HashMap<String, bool> = HashMap::new();
        let mut waiters: HashMap<String, Vec<oneshot::Sender<Result<(), BrokerError>>>> =
            HashMap::new();
        let mut refresh = Vec::new();
        let mut refresh_all = false;
        for r in batch {
            match r {
                SubReq::Subscribe(c, tx) => {
                    waiters.entry(c.clone()).or_default().push(tx);
                    want.insert(c, true);
                }
                SubReq::Unsubscribe(c) => {
                    want.insert(c, false);
                }
                SubReq::Refresh(c) => refresh.push(c),
                SubReq::RefreshAll => refresh_all = true,
            }
        }
        let (subs, unsubs): (Vec<_>, Vec<_>) = want.into_iter().partition(|(_, w)| *w);
        let subs: Vec<String> = subs.into_iter().map(|(c, _)| c).collect();
        let unsubs: Vec<String> = unsubs.into_iter().map(|(c, _)| c).collect();

        if !unsubs.is_empty() {
            {
                let mut set = inner.subscribed.lock();
                for c in &unsubs {
                    set.remove(c);
                }
            }
            for c in &unsubs {
                let _ = inner.seq_tx.send(SeqEvent::Forget(c.clone()));
            }
            for group in by_slot(inner.cluster, unsubs) {
                if let Err(e) = inner.sub.sunsubscribe(group).await {
                    tracing::warn!(error = %e, "SUNSUBSCRIBE failed");
                }
            }
        }

        let mut failed: HashSet<String> = HashSet::new();
        if !subs.is_empty() {
            let groups = by_slot(inner.cluster, subs.clone());
            let results = futures_util::future::join_all(
                groups
                    .iter()
                    .map(|g| async move { (g, inner.sub.ssubscribe(g.clone()).await) }),
            )
            .await;
            for (group, r) in results {
                if let Err(e) = inner.ok(r) {
                    tracing::warn!(error = %e, channels = group.len(), "SSUBSCRIBE failed");
                    failed.extend(group.iter().cloned());
                }
            }
            let ok: Vec<&String> = subs.iter().filter(|c| !failed.contains(*c)).collect();
            inner
                .subscribed
                .lock()
                .extend(ok.iter().map(|c| (*c).clone()));
            // Where each stream stands now, so the sequencer can tell a gap from a start.
            let positions =
                futures_util::future::join_all(ok.iter().map(|c| read_position(inner, c.as_str())))
                    .await;
            for (c, pos) in ok.iter().zip(positions) {
                if let Some((epoch, top)) = pos {
                    let _ = inner.seq_tx.send(SeqEvent::Baseline {
                        channel: (*c).clone(),
                        epoch,
                        top,
                    });
                }
            }
        }
        for (c, txs) in waiters {
            let r = if failed.contains(&c) {
                Err(BrokerError::Unavailable("subscribe failed".into()))
            } else {
                Ok(())
            };
            for tx in txs {
                let _ = tx.send(r.clone());
            }
        }
        // Applied after this batch's changes and only to channels still wanted, so a
        // resubscription can't revive a channel the node just left.
        let refresh: Vec<String> = {
            let set = inner.subscribed.lock();
            if refresh_all {
                set.iter().cloned().collect()
            } else {
                refresh.into_iter().filter(|c| set.contains(c)).collect()
            }
        };
        for group in by_slot(inner.cluster, refresh) {
            let n = group.len() as u64;
            match inner.ok(inner.sub.ssubscribe(group).await) {
                Ok(()) => metrics().broker_resubscribes.inc_by(n),
                Err(e) => {
                    tracing::warn!(error = %e, "resubscribe failed; the position check will retry")
                }
            }
        }
    }
}

/// Groups channels for `SSUBSCRIBE`/`SUNSUBSCRIBE`: a cluster takes one hash slot per command
/// (the groups then go out pipelined, concurrently); a single server takes any channels, in
/// chunks of 1,000.
fn by_slot(cluster: bool, channels: Vec<String>) -> Vec<Vec<String>> {
    if !cluster {
        return channels.chunks(1000).map(|c| c.to_vec()).collect();
    }
    let mut groups: HashMap<u16, Vec<String>> = HashMap::new();
    for c in channels {
        groups
            .entry(fred::util::redis_keyslot(c.as_bytes()))
            .or_default()
            .push(c);
    }
    groups.into_values().collect()
}

/// (epoch, top offset) of a channel's stream, or None when it has none or Redis can't say.
async fn read_position(inner: &Inner, shard_channel: &str) -> Option<(Arc<str>, u64)> {
    use fred::interfaces::HashesInterface;
    let channel = inner.channel_of(shard_channel)?;
    let r: Result<Vec<Value>, _> = inner
        .client
        .hmget(inner.key(channel, "m"), vec!["e", "o"])
        .await;
    let v = inner.ok(r).ok()?;
    let epoch = v.first().and_then(value_str)?;
    let top = v.get(1).and_then(value_u64).unwrap_or(0);
    Some((epoch, top))
}

// ---- the sequencer: every publication reaching this node passes here -----------------------------

struct ChanState {
    /// Parsed once, shared with every delivery of the channel.
    channel: ChannelName,
    epoch: Arc<str>,
    last: u64,
    /// `Inner::generation` when this state last changed: a position read issued before that
    /// may be older than the state, so it can't prove a regression.
    generation: u64,
    /// The last position check found a gap; a second one in a row re-subscribes the channel.
    suspect: bool,
}

impl ChanState {
    fn new(channel: ChannelName, epoch: Arc<str>, last: u64, inner: &Inner) -> Self {
        ChanState {
            channel,
            epoch,
            last,
            suspect: false,
            generation: inner.next_generation(),
        }
    }

    /// The stream is followed from (`epoch`, `last`) on.
    fn restart(&mut self, epoch: Arc<str>, last: u64, inner: &Inner) {
        self.epoch = epoch;
        self.last = last;
        self.suspect = false;
        self.generation = inner.next_generation();
    }
}

async fn run_sequencer(
    inner: Arc<Inner>,
    mut messages: broadcast::Receiver<fred::types::Message>,
    mut events: mpsc::UnboundedReceiver<SeqEvent>,
) {
    let mut states: HashMap<String, ChanState> = HashMap::new();
    let control = inner.control_channel();
    loop {
        tokio::select! {
            m = messages.recv() => match m {
                Ok(m) => {
                    let Some(payload) = value_bytes(&m.value) else { continue };
                    if *m.channel == *control {
                        apply_control(&inner, &payload);
                    } else {
                        on_message(&inner, &mut states, &m.channel, payload).await;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "pub/sub receiver lagged; repairing from history");
                    inner.check_now.notify_one();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            e = events.recv() => match e {
                Some(SeqEvent::Baseline { channel, epoch, top }) => match states.get_mut(&channel) {
                    Some(st) if st.epoch == epoch => st.last = st.last.max(top),
                    Some(st) => st.restart(epoch, top, &inner),
                    None => {
                        let parsed = inner.channel_of(&channel).map(ChannelName::parse);
                        if let Some(Ok(name)) = parsed {
                            states.insert(channel, ChanState::new(name, epoch, top, &inner));
                        }
                    }
                },
                Some(SeqEvent::Forget(channel)) => {
                    states.remove(&channel);
                }
                Some(SeqEvent::Check { channel, epoch, top, read_at }) => {
                    on_check(&inner, &mut states, channel, epoch, top, read_at).await;
                }
                None => return,
            },
        }
    }
}

fn apply_control(inner: &Inner, payload: &[u8]) {
    #[derive(Deserialize)]
    struct Raw {
        t: String,
        user: String,
        code: Option<u16>,
        reason: Option<String>,
        channel: Option<String>,
    }
    let Ok(raw) = serde_json::from_slice::<Raw>(payload) else {
        tracing::warn!("undecodable fleet command");
        return;
    };
    let msg = match raw.t.as_str() {
        "disconnect" => Control::DisconnectUser {
            user: raw.user,
            code: raw.code.unwrap_or(4000),
            reason: raw.reason.unwrap_or_default(),
        },
        "unsubscribe" => {
            let Some(Ok(channel)) = raw.channel.as_deref().map(ChannelName::parse) else {
                return;
            };
            Control::UnsubscribeUser {
                user: raw.user,
                channel,
            }
        }
        _ => return,
    };
    inner.hub.control(msg);
}

struct Wire<'a> {
    offset: u64,
    epoch: &'a str,
    published_at_us: u64,
    info: Option<&'a [u8]>,
    data: &'a [u8],
}

/// `p <offset> <epoch> <published_at_us> <info_len>\n<info><data>`
fn parse_wire(payload: &[u8]) -> Option<Wire<'_>> {
    let nl = payload.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&payload[..nl]).ok()?;
    let mut parts = header.split(' ');
    if parts.next()? != "p" {
        return None;
    }
    let offset = parts.next()?.parse().ok()?;
    let epoch = parts.next()?;
    let published_at_us = parts.next()?.parse().ok()?;
    let info_len: usize = parts.next()?.parse().ok()?;
    let body = &payload[nl + 1..];
    if body.len() < info_len {
        return None;
    }
    let (info, data) = body.split_at(info_len);
    Some(Wire {
        offset,
        epoch,
        published_at_us,
        info: (!info.is_empty()).then_some(info),
        data,
    })
}

async fn on_message(
    inner: &Inner,
    states: &mut HashMap<String, ChanState>,
    shard_channel: &str,
    payload: Bytes,
) {
    let known = states.get(shard_channel).map(|st| st.channel.clone());
    let Some(channel) = known.or_else(|| {
        inner
            .channel_of(shard_channel)
            .and_then(|name| ChannelName::parse(name).ok())
    }) else {
        return;
    };
    if payload.first() == Some(&b'c') {
        // Join/leave: `c <published_at_us>\n<frame>`, no offset.
        let Some(nl) = payload.iter().position(|b| *b == b'\n') else {
            return;
        };
        let at = std::str::from_utf8(&payload[2..nl])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(unix_us);
        inner.hub.deliver(&channel, 0, payload.slice(nl + 1..), at);
        return;
    }
    let Some(w) = parse_wire(&payload) else {
        tracing::warn!(%channel, "undecodable publication from Redis");
        return;
    };
    if !states.contains_key(shard_channel) {
        let st = ChanState::new(
            channel.clone(),
            Arc::from(w.epoch),
            w.offset.saturating_sub(1),
            inner,
        );
        states.insert(shard_channel.to_string(), st);
    }
    let Some(st) = states.get_mut(shard_channel) else {
        return;
    };
    if *st.epoch != *w.epoch {
        // The stream restarted under a new epoch (it expired, or was lost with a Redis shard).
        // Offsets start over; clients notice the lower offset and resubscribe (protocol §11).
        st.restart(Arc::from(w.epoch), w.offset.saturating_sub(1), inner);
    }
    if w.offset <= st.last {
        return; // already delivered (repaired from history, or a second subscription)
    }
    if w.offset > st.last + 1 {
        repair(inner, st, &channel, shard_channel, w.offset - 1).await;
        if w.offset <= st.last {
            return;
        }
    }
    st.suspect = false;
    st.last = w.offset;
    st.generation = inner.next_generation();
    inner.broker_publications.inc();
    let frame = reply::publication(&channel, w.offset, w.data, w.info);
    inner
        .hub
        .deliver(&channel, w.offset, Bytes::from(frame), w.published_at_us);
}

/// Delivers the publications after `st.last` up to at least `upto` from history; when they are
/// gone, tells local subscribers to resubscribe with recovery and moves on.
async fn repair(
    inner: &Inner,
    st: &mut ChanState,
    channel: &ChannelName,
    shard_channel: &str,
    upto: u64,
) {
    let options = ChannelOptions {
        history_size: 0,
        history_ttl: Duration::ZERO,
    };
    let missing = upto - st.last;
    match inner
        .read_history(channel.as_str(), options, Some((st.last, &st.epoch)), None)
        .await
    {
        Ok(h) => {
            let now = unix_us();
            let mut n = 0;
            for p in h.publications {
                if p.offset <= st.last {
                    continue;
                }
                st.last = p.offset;
                n += 1;
                let frame = reply::publication(channel, p.offset, &p.data, p.info.as_deref());
                inner
                    .hub
                    .deliver(channel, p.offset, Bytes::from(frame), now);
            }
            if n > 0 {
                st.generation = inner.next_generation();
            }
            tracing::info!(%channel, missing, repaired = n, "filled a gap from history");
            if st.last < upto {
                reset(inner, st, channel, upto);
            }
        }
        Err(e) => {
            tracing::warn!(%channel, shard_channel, missing, error = %e, "gap not recoverable; asking subscribers to resubscribe");
            reset(inner, st, channel, upto);
        }
    }
}

fn reset(inner: &Inner, st: &mut ChanState, channel: &ChannelName, upto: u64) {
    st.last = st.last.max(upto);
    st.generation = inner.next_generation();
    inner.hub.control(Control::ResetChannel {
        channel: channel.clone(),
    });
}

async fn on_check(
    inner: &Inner,
    states: &mut HashMap<String, ChanState>,
    shard_channel: String,
    epoch: Arc<str>,
    top: u64,
    read_at: u64,
) {
    let Some(st) = states.get_mut(&shard_channel) else {
        return;
    };
    let channel = st.channel.clone();
    // The read is newer than our state only if the state didn't change after it was issued.
    let fresh = st.generation <= read_at;
    if fresh && (st.epoch != epoch || top < st.last) {
        // The stream we were following is gone (lost in a failover, or expired and restarted
        // with publications we never saw): subscribers must recover from the new state.
        tracing::warn!(%channel, "stream changed under us; asking subscribers to resubscribe");
        st.restart(epoch, top, inner);
        inner.hub.control(Control::ResetChannel { channel });
        return;
    }
    if st.epoch == epoch && top > st.last {
        repair(inner, st, &channel, &shard_channel, top).await;
        if st.suspect {
            // Two checks in a row saw publications that never came live: re-subscribe.
            let _ = inner.sub_tx.send(SubReq::Refresh(shard_channel));
            st.suspect = false;
        } else {
            st.suspect = true;
        }
    }
}

// ---- background tasks -----------------------------------------------------------------------------

/// After a reconnect (or a cluster topology change) re-subscribes every channel, then checks
/// positions at once so anything published meanwhile is repaired from history.
async fn run_reconnects(inner: Arc<Inner>) {
    let mut sub_events = inner.sub.reconnect_rx();
    let mut cmd_events = inner.client.reconnect_rx();
    let mut topology = inner.sub.cluster_change_rx();
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
            r = cmd_events.recv() => match r {
                Err(broadcast::error::RecvError::Closed) => return,
                Ok(server) => {
                    tracing::info!(%server, "command connection re-established");
                    false
                }
                Err(_) => false,
            },
        };
        metrics().broker_reconnects.inc();
        if resubscribe {
            let _ = inner.sub_tx.send(SubReq::RefreshAll);
        }
        inner.check_now.notify_one();
    }
}

/// Every `position_check_interval` (and at once after reconnects), reads each subscribed
/// channel's stream top and hands it to the sequencer, which repairs gaps. Also keeps `healthy`
/// current while the node is idle.
async fn run_position_checks(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.check_interval) => {}
            _ = inner.check_now.notified() => {
                // Let resubscriptions land first.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let ping: Result<(), _> = inner.client.ping(None).await;
        if inner.ok(ping).is_err() {
            continue;
        }
        let control = inner.control_channel();
        let channels: Vec<String> = inner
            .subscribed
            .lock()
            .iter()
            .filter(|c| **c != control)
            .cloned()
            .collect();
        for chunk in channels.chunks(512) {
            let read_at = inner.generation.load(Ordering::Relaxed);
            let positions =
                futures_util::future::join_all(chunk.iter().map(|c| read_position(&inner, c)))
                    .await;
            for (c, pos) in chunk.iter().zip(positions) {
                if let Some((epoch, top)) = pos {
                    let _ = inner.seq_tx.send(SeqEvent::Check {
                        channel: c.clone(),
                        epoch,
                        top,
                        read_at,
                    });
                }
            }
        }
    }
}

/// Claims due scheduled publications (atomically, with a lease) from every bucket and
/// publishes them with an idempotency key derived from their id: exactly once across the fleet,
/// even when a node dies between claim and confirmation.
async fn run_scheduler(inner: Arc<Inner>) {
    let mut ticks: u64 = 0;
    loop {
        tokio::time::sleep(SCHEDULE_POLL).await;
        ticks += 1;
        let now = unix_ms();
        let claims = futures_util::future::join_all((0..SCHEDULE_BUCKETS).map(|b| {
            let inner = &inner;
            async move {
                let (z, h) = inner.schedule_keys(b);
                let r = inner
                    .eval(
                        &inner.scripts.schedule_claim,
                        vec![z, h],
                        vec![
                            Value::Integer(now as i64),
                            Value::Integer(SCHEDULE_LEASE_MS as i64),
                            Value::Integer(100),
                        ],
                    )
                    .await;
                (b, r)
            }
        }))
        .await;
        for (bucket, r) in claims {
            let Ok(v) = r else { continue };
            let mut items = value_array(v).into_iter();
            while let (Some(id), Some(payload)) = (items.next(), items.next()) {
                let (Some(id), Some(payload)) = (value_str(&id), value_bytes(&payload)) else {
                    continue;
                };
                deliver_scheduled(&inner, bucket, &id, &payload).await;
            }
        }
        if ticks % 40 == 0 {
            count_scheduled(&inner).await;
        }
    }
}

async fn deliver_scheduled(inner: &Inner, bucket: usize, id: &str, payload: &[u8]) {
    let (z, h) = inner.schedule_keys(bucket);
    let Ok(raw) = serde_json::from_slice::<ScheduledRaw>(payload) else {
        tracing::warn!(id, "undecodable scheduled publication dropped");
        let _ = inner
            .eval(
                &inner.scripts.schedule_done,
                vec![z, h],
                vec![Value::from(id)],
            )
            .await;
        return;
    };
    let Ok(channel) = ChannelName::parse(&raw.c) else {
        return;
    };
    let req = PublishRequest {
        channel,
        data: Bytes::copy_from_slice(raw.d.get().as_bytes()),
        info: raw
            .i
            .filter(|r| r.get() != "null")
            .map(|r| Bytes::copy_from_slice(r.get().as_bytes())),
        options: ChannelOptions {
            history_size: raw.hs,
            history_ttl: if raw.ht == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(raw.ht)
            },
        },
        idempotency_key: Some(format!("sched:{id}")),
    };
    match inner.publish_now(&req, unix_us()).await {
        Ok(position) => {
            metrics()
                .publications
                .with_label_values(&["scheduled"])
                .inc();
            tracing::debug!(id, channel = %req.channel, offset = position.offset, "scheduled publication delivered");
            let _ = inner
                .eval(
                    &inner.scripts.schedule_done,
                    vec![z, h],
                    vec![Value::from(id)],
                )
                .await;
        }
        Err(e) => {
            // The lease runs out and some node (maybe this one) tries again.
            tracing::warn!(id, error = %e, "scheduled publication failed; will retry");
        }
    }
}

async fn count_scheduled(inner: &Inner) {
    use fred::interfaces::SortedSetsInterface;
    let counts = futures_util::future::join_all((0..SCHEDULE_BUCKETS).map(|b| {
        let (z, _) = inner.schedule_keys(b);
        async move {
            let r: Result<u64, _> = inner.client.zcard(z).await;
            r.unwrap_or(0)
        }
    }))
    .await;
    inner
        .scheduled_pending
        .store(counts.iter().sum::<u64>() as usize, Ordering::Relaxed);
}

// The sequencer's wire format is part of the fleet contract: test it without Redis.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        let w = parse_wire(b"p 17 abc 123 10\n{\"user\":1}{\"x\":2}").unwrap();
        assert_eq!(w.offset, 17);
        assert_eq!(w.epoch, "abc");
        assert_eq!(w.published_at_us, 123);
        assert_eq!(w.info, Some(&b"{\"user\":1}"[..]));
        assert_eq!(w.data, b"{\"x\":2}");
        let w = parse_wire(b"p 1 e 5 0\n{}").unwrap();
        assert_eq!(w.info, None);
        assert!(parse_wire(b"p 1 e 5 9\n{}").is_none());
        assert!(parse_wire(b"c 1\n{}").is_none());
    }

    #[test]
    fn urls_are_checked() {
        assert!(parse_url("redis://127.0.0.1:6379").is_ok());
        assert!(parse_url("http://127.0.0.1:6379").is_err());
    }
}
