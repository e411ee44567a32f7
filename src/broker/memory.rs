//! The in-memory broker: one node, full feature parity (history with offsets and epochs,
//! presence with expiry, scheduled publications, idempotency keys). It is the embedded default
//! that `make run` starts and the reference the Redis brokers are tested against.
//!
//! State is striped over independently locked maps by channel hash, so publishes on different
//! channels don't contend. The lock covers offset assignment and the history append of one
//! publication — per publication, never per subscriber.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::tracking::Memberships;
use super::{
    Broker, BrokerError, ChannelOptions, Control, DeliverySink, HistoryItem, HistoryResult,
    NodeInfo, PresenceEntry, PublishRequest, Published, StreamPosition, TrackKind,
};
use crate::clock::unix_micros;
use crate::protocol::{reply, ChannelName, Position};

const STRIPES: usize = 64;
/// Idempotency keys are remembered this long.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(300);

/// One channel's stream position and history. Every channel a client subscribes to has one (a
/// personal channel nothing is published to included: the position a subscriber is given must
/// stay valid until the stream expires), so it is kept compact: 32 bytes in its stripe's map and
/// nothing on the heap until the first publication kept in history.
struct Stream {
    epoch: [u8; EPOCH_LEN],
    top: u64,
    /// When the stream expires, in milliseconds on the broker's clock (`Inner::now_ms`).
    expires_at: u64,
    #[allow(clippy::box_collection)] // one pointer here; the deque's three words only once used
    items: Option<Box<VecDeque<HistoryItem>>>,
}

/// Random epochs: 8 characters of `[a-z0-9]`, as `broker::new_epoch`, stored inline.
const EPOCH_LEN: usize = 8;

impl Stream {
    fn new(now_ms: u64, ttl: Duration) -> Self {
        use rand::Rng;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::thread_rng();
        Stream {
            epoch: std::array::from_fn(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())]),
            top: 0,
            items: None,
            expires_at: now_ms + ttl_ms(ttl),
        }
    }

    fn epoch(&self) -> &str {
        std::str::from_utf8(&self.epoch).expect("epochs are ASCII")
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: Arc::from(self.epoch()),
        }
    }

    fn items(&self) -> &VecDeque<HistoryItem> {
        static NONE: VecDeque<HistoryItem> = VecDeque::new();
        self.items.as_deref().unwrap_or(&NONE)
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2)
}

#[derive(Default)]
struct Stripe {
    streams: HashMap<ChannelName, Stream>,
    presence: HashMap<ChannelName, HashMap<String, (PresenceEntry, Instant)>>,
}

struct Scheduled {
    id: String,
    req: PublishRequest,
}

struct Inner {
    hub: Arc<dyn DeliverySink>,
    stripes: Vec<Mutex<Stripe>>,
    idempotency: Mutex<HashMap<String, (Published, Instant)>>,
    /// (unix ms, sequence) → publication; the sequence keeps equal times distinct and ordered.
    schedule: Mutex<BTreeMap<(u64, u64), Scheduled>>,
    schedule_changed: Notify,
    seq: AtomicU64,
    /// The broker's clock for stream expiry (`now_ms`).
    started: Instant,
    /// Webhooks' memberships (users online, channels occupied); empty unless webhooks are on.
    tracking: Mutex<Memberships>,
}

pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl MemoryBroker {
    /// Creates the broker and starts its scheduler and expiry sweeper on the current runtime.
    pub fn start(hub: Arc<dyn DeliverySink>) -> Arc<dyn Broker> {
        let inner = Arc::new(Inner {
            hub,
            stripes: (0..STRIPES)
                .map(|_| Mutex::new(Stripe::default()))
                .collect(),
            idempotency: Mutex::new(HashMap::new()),
            schedule: Mutex::new(BTreeMap::new()),
            schedule_changed: Notify::new(),
            seq: AtomicU64::new(1),
            started: Instant::now(),
            tracking: Mutex::new(Memberships::default()),
        });
        tokio::spawn(run_scheduler(inner.clone()));
        tokio::spawn(run_sweeper(Arc::downgrade(&inner)));
        Arc::new(MemoryBroker { inner })
    }
}

impl Inner {
    fn stripe(&self, channel: &ChannelName) -> &Mutex<Stripe> {
        let mut h = DefaultHasher::new();
        channel.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    /// Milliseconds since the broker started: the clock streams expire by.
    fn now_ms(&self) -> u64 {
        ttl_ms(self.started.elapsed())
    }

    fn publish_now(&self, req: &PublishRequest) -> StreamPosition {
        let now = self.now_ms();
        let ttl = req.options.meta_ttl();
        let published_at = unix_micros();
        let mut stripe = self.stripe(&req.channel).lock();
        let stream = stripe
            .streams
            .entry(req.channel.clone())
            .or_insert_with(|| Stream::new(now, ttl));
        if stream.expires_at <= now {
            *stream = Stream::new(now, ttl);
        }
        stream.top += 1;
        stream.expires_at = now + ttl_ms(ttl);
        let offset = stream.top;
        if req.options.history_size > 0 {
            let items = stream.items.get_or_insert_with(Default::default);
            items.push_back(HistoryItem {
                offset,
                data: req.data.clone(),
                info: req.info.clone(),
            });
            while items.len() > req.options.history_size {
                items.pop_front();
            }
        }
        let position = stream.position();
        // Hand-off inside the lock so that shards see a channel's publications in offset order.
        let payload = reply::publication(&req.channel, offset, &req.data, req.info.as_deref());
        self.hub
            .deliver(&req.channel, offset, Bytes::from(payload), published_at);
        position
    }

    fn remembered(&self, key: &Option<String>) -> Option<Published> {
        let key = key.as_ref()?;
        let map = self.idempotency.lock();
        map.get(key)
            .filter(|(_, at)| at.elapsed() < IDEMPOTENCY_TTL)
            .map(|(p, _)| p.clone())
    }

    fn remember(&self, key: &Option<String>, outcome: &Published) {
        if let Some(key) = key {
            self.idempotency
                .lock()
                .insert(key.clone(), (outcome.clone(), Instant::now()));
        }
    }
}

/// Idempotency keys are per channel: the same key on two channels is two publications.
fn scoped_key(req: &PublishRequest) -> Option<String> {
    req.idempotency_key
        .as_ref()
        .map(|k| format!("{}\n{k}", req.channel.as_str()))
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, req: PublishRequest) -> Result<Published, BrokerError> {
        let key = scoped_key(&req);
        if let Some(p) = self.inner.remembered(&key) {
            return Ok(p);
        }
        let outcome = Published::Now(self.inner.publish_now(&req));
        self.inner.remember(&key, &outcome);
        Ok(outcome)
    }

    async fn schedule(
        &self,
        at: SystemTime,
        req: PublishRequest,
    ) -> Result<Published, BrokerError> {
        let key = scoped_key(&req);
        if let Some(p) = self.inner.remembered(&key) {
            return Ok(p);
        }
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{seq}", unix_millis(SystemTime::now()));
        self.inner.schedule.lock().insert(
            (unix_millis(at), seq),
            Scheduled {
                id: id.clone(),
                req,
            },
        );
        self.inner.schedule_changed.notify_one();
        let outcome = Published::Scheduled(id);
        self.inner.remember(&key, &outcome);
        Ok(outcome)
    }

    async fn cancel(&self, id: &str) -> Result<(), BrokerError> {
        let mut schedule = self.inner.schedule.lock();
        let key = schedule
            .iter()
            .find(|(_, s)| s.id == id)
            .map(|(k, _)| *k)
            .ok_or(BrokerError::NotFound)?;
        schedule.remove(&key);
        drop(schedule);
        self.inner.schedule_changed.notify_one();
        Ok(())
    }

    async fn publish_control(
        &self,
        channel: &ChannelName,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        self.inner.hub.deliver(channel, 0, payload, unix_micros());
        Ok(())
    }

    async fn history(
        &self,
        channel: &ChannelName,
        options: ChannelOptions,
        since: Option<&Position>,
        limit: Option<usize>,
    ) -> Result<HistoryResult, BrokerError> {
        let now = self.inner.now_ms();
        let ttl = options.meta_ttl();
        let mut stripe = self.inner.stripe(channel).lock();
        let stream = stripe
            .streams
            .entry(channel.clone())
            .or_insert_with(|| Stream::new(now, ttl));
        if stream.expires_at <= now {
            *stream = Stream::new(now, ttl);
        }
        let position = stream.position();
        let items = stream.items();
        let limit = limit.unwrap_or(usize::MAX);
        let publications = match since {
            None => {
                let skip = items.len().saturating_sub(limit);
                items.iter().skip(skip).cloned().collect()
            }
            Some(since) => {
                let oldest = items.front().map_or(stream.top + 1, |i| i.offset);
                let lost = since.offset + 1 < oldest;
                if *since.epoch != *stream.epoch() || since.offset > stream.top || lost {
                    return Err(BrokerError::Unrecoverable { position });
                }
                items
                    .iter()
                    .filter(|i| i.offset > since.offset)
                    .take(limit)
                    .cloned()
                    .collect()
            }
        };
        Ok(HistoryResult {
            publications,
            position,
        })
    }

    async fn subscribe(&self, _channel: &ChannelName) -> Result<(), BrokerError> {
        // Every publication reaches the local hub already.
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &ChannelName) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn presence_add(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let mut stripe = self.inner.stripe(channel).lock();
        stripe
            .presence
            .entry(channel.clone())
            .or_default()
            .insert(entry.client.clone(), (entry, Instant::now() + ttl));
        Ok(())
    }

    async fn presence_remove(
        &self,
        channel: &ChannelName,
        client: &str,
    ) -> Result<(), BrokerError> {
        let mut stripe = self.inner.stripe(channel).lock();
        if let Some(members) = stripe.presence.get_mut(channel) {
            members.remove(client);
            if members.is_empty() {
                stripe.presence.remove(channel);
            }
        }
        Ok(())
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, BrokerError> {
        let now = Instant::now();
        let stripe = self.inner.stripe(channel).lock();
        Ok(stripe
            .presence
            .get(channel)
            .map(|m| {
                m.values()
                    .filter(|(_, exp)| *exp > now)
                    .map(|(e, _)| e.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn control(&self, msg: Control) -> Result<(), BrokerError> {
        self.inner.hub.control(msg);
        Ok(())
    }

    async fn nodes(&self, local: NodeInfo) -> Result<Vec<NodeInfo>, BrokerError> {
        Ok(vec![local])
    }

    async fn track_join(
        &self,
        kind: TrackKind,
        key: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<bool, BrokerError> {
        let expires = self.inner.now_ms() + ttl_ms(ttl);
        Ok(self.inner.tracking.lock().join(kind, key, member, expires))
    }

    async fn track_leave(
        &self,
        kind: TrackKind,
        key: &str,
        member: &str,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        let now = self.inner.now_ms();
        self.inner
            .tracking
            .lock()
            .leave(kind, key, member, now, ttl_ms(delay));
        Ok(())
    }

    async fn track_refresh(
        &self,
        kind: TrackKind,
        keys: &[String],
        member: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, BrokerError> {
        let expires = self.inner.now_ms() + ttl_ms(ttl);
        let mut m = self.inner.tracking.lock();
        Ok(keys
            .iter()
            .filter(|k| !m.refresh(kind, k, member, expires))
            .cloned()
            .collect())
    }

    async fn track_sweep(&self, kind: TrackKind) -> Result<Vec<String>, BrokerError> {
        let now = self.inner.now_ms();
        Ok(self.inner.tracking.lock().sweep(kind, now))
    }

    fn scheduled_pending(&self) -> usize {
        self.inner.schedule.lock().len()
    }

    fn is_up(&self) -> bool {
        true
    }
}

/// Publishes scheduled publications when their time comes. Each entry is removed from the map
/// before it is published, so it is delivered exactly once.
async fn run_scheduler(inner: Arc<Inner>) {
    loop {
        let next = inner.schedule.lock().keys().next().copied();
        let now_ms = unix_millis(SystemTime::now());
        match next {
            Some((at, seq)) if at <= now_ms => {
                let due = inner.schedule.lock().remove(&(at, seq));
                if let Some(s) = due {
                    let position = inner.publish_now(&s.req);
                    crate::metrics::metrics()
                        .publications
                        .with_label_values(&["scheduled"])
                        .inc();
                    tracing::debug!(id = %s.id, channel = %s.req.channel, offset = position.offset, "scheduled publication delivered");
                }
            }
            Some((at, _)) => {
                let wait = Duration::from_millis(at - now_ms);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = inner.schedule_changed.notified() => {}
                }
            }
            None => inner.schedule_changed.notified().await,
        }
    }
}

/// Drops expired streams, presence entries and idempotency keys.
async fn run_sweeper(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let now_ms = inner.now_ms();
        for stripe in &inner.stripes {
            let mut s = stripe.lock();
            s.streams.retain(|_, st| st.expires_at > now_ms);
            s.presence.retain(|_, members| {
                members.retain(|_, (_, exp)| *exp > now);
                !members.is_empty()
            });
        }
        inner
            .idempotency
            .lock()
            .retain(|_, (_, at)| at.elapsed() < IDEMPOTENCY_TTL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream exists for every subscribed channel: keep it at 32 bytes (it was 72 and an
    /// allocated epoch).
    #[test]
    fn a_stream_stays_small() {
        assert!(std::mem::size_of::<Stream>() <= 32);
        let s = Stream::new(0, Duration::from_secs(1));
        assert_eq!(s.epoch().len(), EPOCH_LEN);
        assert!(s
            .epoch()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_eq!(s.expires_at, 1000);
        assert!(s.items().is_empty() && s.items.is_none());
    }
}
