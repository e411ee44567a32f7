//! Lifecycle events and webhooks (`[webhooks]`, docs/webhooks.md).
//!
//! Between `broker/` and `hub/`: it uses the broker, config, metrics and protocol, never the hub
//! or the server. The hub calls [`Events`]' hooks from its shard threads; they never block (an
//! unbounded channel to one task on the node's main runtime, or the webhook queue, which drops
//! when full). Nothing of this exists when webhooks are off, and a kind of event nobody listed is
//! not tracked at all.
//!
//! The task keeps how many local connections each user has on this node (channels arrive as
//! the node's own first-subscriber / last-subscriber transitions already, from `Node`), and
//! tells the broker only this node's 0↔1 transitions: `track_join` / `track_leave` with this
//! node's id as the member. Whether that made the user online (or the channel occupied) fleet
//! wide is decided by the broker, atomically, so exactly one node sends each transition. Every
//! held key is refreshed every third of `client.presence_ttl`; a node that dies stops refreshing
//! and its holds expire. Every node sweeps once a second (`track_sweep`): keys whose vacating
//! delay passed without a re-join, or whose holders all expired, become user_offline /
//! channel_vacated, each reported by exactly one sweeper.
//!
//! Pusher apps with a `webhook_url` (docs/pusher.md) get Pusher-format webhooks from the same
//! machinery: their channels' occupied/vacated transitions are the same tracked transitions of
//! the ferrocast channel `pusher-<app>:<name>` (with the app's `webhook_vacate_delay`), sent to
//! the app's own sender; `member_added` / `member_removed` and `client_event` come from the
//! Pusher adapter (`pusher_member`, `pusher_client_event`).
//!
//! Broker calls for one key run in order (a key always goes to the same worker task); different
//! keys run concurrently. A failed join or leave heals itself: a join the broker didn't record is
//! noticed by the next refresh (and joined again), a leave it didn't record expires after the TTL.

pub mod webhook;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::broker::{Broker, TrackKind};
use crate::config::Config;
use crate::protocol::ChannelName;
use webhook::{Event, EventFactory, Format, InFlight, Queue, Target};

/// How often every node looks for final transitions to empty.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Worker tasks running broker calls (a key always goes to the same one).
const WORKERS: usize = 16;
/// Keys per `track_refresh` call.
const REFRESH_CHUNK: usize = 1000;

/// What a shard tells the events task.
enum Hook {
    /// A local connection of the user / the node's first local subscriber of the channel.
    Up(TrackKind, String),
    /// The matching end.
    Down(TrackKind, String),
    /// A refresh found the node's hold gone (swept): join again if still held.
    Lost(TrackKind, String),
}

/// A broker call for one key.
enum Op {
    Join(TrackKind, String),
    Leave(TrackKind, String),
}

/// A Pusher app's webhook sender and what it sends.
struct PusherHooks {
    queue: Queue,
    in_flight: Arc<InFlight>,
    events: Vec<String>,
    vacate_delay: Duration,
}

impl PusherHooks {
    fn wants(&self, name: &str) -> bool {
        self.events.iter().any(|e| e == name)
    }
}

/// The Pusher apps' senders (by app index) and which ferrocast namespaces carry channels of an
/// app that wants channel_occupied / channel_vacated.
#[derive(Default)]
struct PusherDests {
    apps: Vec<Option<PusherHooks>>,
    channel_namespaces: HashMap<String, usize>,
}

impl PusherDests {
    /// The app whose channel-existence webhooks `channel` (a ferrocast channel) is tracked for.
    fn channel_app(&self, channel: &str) -> Option<&PusherHooks> {
        if self.channel_namespaces.is_empty() {
            return None;
        }
        let (ns, _) = channel.split_once(':')?;
        let app = *self.channel_namespaces.get(ns)?;
        self.apps[app].as_ref()
    }
}

/// The node's event hooks. Present on `Node` only while webhooks are on (`[webhooks]`, or a
/// Pusher app's `webhook_url`).
pub struct Events {
    tx: Option<mpsc::UnboundedSender<Hook>>,
    users: bool,
    /// ferrocast's own channel events (every channel is tracked).
    channels: bool,
    publish: bool,
    /// ferrocast's own sender (`[webhooks] url`).
    queue: Option<(Queue, Arc<InFlight>)>,
    pusher: Arc<PusherDests>,
    factory: Arc<EventFactory>,
    /// Hooks and broker calls not finished yet (drain waits for them).
    pending: Arc<AtomicUsize>,
}

impl Events {
    /// Starts the events task, the sweeper and the webhook senders on the current runtime; None
    /// when no webhook is configured (or none lists an event).
    pub fn start(
        config: &Config,
        broker: Arc<dyn Broker>,
        node_id: &str,
        node_name: &str,
    ) -> Option<Arc<Events>> {
        let wh = &config.webhooks;
        let users = wh.wants("user_online") || wh.wants("user_offline");
        let channels = wh.wants("channel_occupied") || wh.wants("channel_vacated");
        let publish = wh.wants("client_publish");
        let mut pusher = PusherDests::default();
        for (i, app) in config.pusher.apps.iter().enumerate() {
            let on = !app.webhook_url.is_empty() && !app.webhook_events.is_empty();
            let hooks = on.then(|| {
                let (queue, in_flight) = webhook::start(
                    wh,
                    Target {
                        url: app.webhook_url.clone(),
                        format: Format::Pusher {
                            key: app.key.clone(),
                            secret: app.secret.clone(),
                        },
                    },
                );
                tracing::info!(app = %app.app_id, url = %app.webhook_url, events = ?app.webhook_events, "pusher webhooks on");
                PusherHooks {
                    queue,
                    in_flight,
                    events: app.webhook_events.clone(),
                    vacate_delay: app.webhook_vacate_delay.0,
                }
            });
            if hooks
                .as_ref()
                .is_some_and(|h| h.wants("channel_occupied") || h.wants("channel_vacated"))
            {
                for ns in [
                    crate::pusher::protocol::namespace(&app.app_id),
                    crate::pusher::protocol::cache_namespace(&app.app_id),
                ] {
                    pusher.channel_namespaces.insert(ns, i);
                }
            }
            pusher.apps.push(hooks);
        }
        let pusher_on = pusher.apps.iter().any(Option::is_some);
        let pusher_channels = !pusher.channel_namespaces.is_empty();
        if !(users || channels || publish || pusher_on) {
            return None;
        }
        let pusher = Arc::new(pusher);
        let queue = (users || channels || publish).then(|| {
            tracing::info!(url = %wh.url, events = ?wh.events, "webhooks on");
            webhook::start(
                wh,
                Target {
                    url: wh.url.clone(),
                    format: Format::Ferrocast {
                        node: node_name.to_string(),
                        secret: wh.secret.clone(),
                    },
                },
            )
        });
        let factory = Arc::new(EventFactory::default());
        let pending = Arc::new(AtomicUsize::new(0));
        let tracked_channels = channels || pusher_channels;
        let tx = (users || tracked_channels).then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let emit = Emitter {
                queue: queue.as_ref().map(|(q, _)| q.clone()),
                factory: factory.clone(),
                names: wh.events.clone(),
                pusher: pusher.clone(),
            };
            let tracker = Tracker {
                broker: broker.clone(),
                member: node_id.to_string(),
                ttl: config.client.presence_ttl.0,
                offline_delay: wh.offline_delay.0,
                vacate_delay: wh.vacate_delay.0,
                emit: emit.clone(),
                pending: pending.clone(),
            };
            let kinds: Vec<TrackKind> = [
                (users, TrackKind::User),
                (tracked_channels, TrackKind::Channel),
            ]
            .into_iter()
            .filter_map(|(on, k)| on.then_some(k))
            .collect();
            tokio::spawn(run_tracker(Arc::new(tracker), rx, tx.clone()));
            tokio::spawn(run_sweeper(broker, kinds, emit));
            tx
        });
        Some(Arc::new(Events {
            tx,
            users,
            channels,
            publish,
            queue,
            pusher,
            factory,
            pending,
        }))
    }

    fn hook(&self, hook: Hook) {
        if let Some(tx) = &self.tx {
            self.pending.fetch_add(1, Ordering::Relaxed);
            if tx.send(hook).is_err() {
                self.pending.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// An authenticated connection of `user` opened on this node (anonymous: ignored).
    pub fn user_connected(&self, user: &str) {
        if self.users && !user.is_empty() {
            self.hook(Hook::Up(TrackKind::User, user.to_string()));
        }
    }

    /// An authenticated connection of `user` on this node closed.
    pub fn user_disconnected(&self, user: &str) {
        if self.users && !user.is_empty() {
            self.hook(Hook::Down(TrackKind::User, user.to_string()));
        }
    }

    /// Whether `channel`'s existence is tracked (ferrocast's channel events, or a Pusher app's).
    fn tracks(&self, channel: &ChannelName) -> bool {
        self.channels || self.pusher.channel_app(channel.as_str()).is_some()
    }

    /// This node's first local subscriber of `channel`.
    pub fn channel_occupied(&self, channel: &ChannelName) {
        if self.tracks(channel) {
            self.hook(Hook::Up(TrackKind::Channel, channel.as_str().to_string()));
        }
    }

    /// This node's last local subscriber of `channel` left.
    pub fn channel_vacated(&self, channel: &ChannelName) {
        if self.tracks(channel) {
            self.hook(Hook::Down(TrackKind::Channel, channel.as_str().to_string()));
        }
    }

    /// Whether `client_published` sends anything (callers skip preparing its arguments).
    pub fn wants_publish(&self) -> bool {
        self.publish
    }

    /// A client publication the broker accepted; `data` is the client's raw JSON.
    pub fn client_published(&self, channel: &ChannelName, user: &str, client: &str, data: &Bytes) {
        if let (true, Some((queue, _))) = (self.publish, &self.queue) {
            queue.push(self.factory.publish(channel.as_str(), user, client, data));
        }
    }

    fn pusher_app(&self, app: usize, name: &str) -> Option<&PusherHooks> {
        self.pusher
            .apps
            .get(app)?
            .as_ref()
            .filter(|h| h.wants(name))
    }

    /// The Pusher adapter decided that `user_id` joined (its first connection) or left (its last)
    /// the presence channel `channel` (a ferrocast channel) of app `app`.
    pub fn pusher_member(&self, app: usize, added: bool, channel: &ChannelName, user_id: &str) {
        let name = if added {
            "member_added"
        } else {
            "member_removed"
        };
        let Some(hooks) = self.pusher_app(app, name) else {
            return;
        };
        if let Some(pusher_name) = crate::pusher::protocol::from_ferrocast(channel.as_str()) {
            tracing::debug!(event = name, channel = %pusher_name, user_id, "pusher webhook event");
            hooks
                .queue
                .push(webhook::pusher::member(name, &pusher_name, user_id));
        }
    }

    /// Whether app `app` sends `client_event` webhooks (callers skip preparing the arguments).
    pub fn wants_pusher_client_events(&self, app: usize) -> bool {
        self.pusher_app(app, "client_event").is_some()
    }

    /// A Pusher client event the broker accepted; `data` is the client's raw JSON.
    pub fn pusher_client_event(
        &self,
        app: usize,
        channel: &ChannelName,
        event: &str,
        data: &str,
        socket_id: &str,
        user_id: Option<&str>,
    ) {
        let Some(hooks) = self.pusher_app(app, "client_event") else {
            return;
        };
        if let Some(pusher_name) = crate::pusher::protocol::from_ferrocast(channel.as_str()) {
            hooks.queue.push(webhook::pusher::client_event(
                &pusher_name,
                event,
                data,
                socket_id,
                user_id,
            ));
        }
    }

    fn senders_idle(&self) -> bool {
        let idle = |q: &Queue, f: &InFlight| q.is_empty() && !f.get();
        self.queue.as_ref().is_none_or(|(q, f)| idle(q, f))
            && self
                .pusher
                .apps
                .iter()
                .flatten()
                .all(|h| idle(&h.queue, &h.in_flight))
    }

    /// Waits (at most `timeout`) until hooks, broker calls and queued webhooks are done: a
    /// draining node's leaves reach the broker before the process exits.
    pub async fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let idle = self.pending.load(Ordering::Relaxed) == 0 && self.senders_idle();
            if idle {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Turns transitions into queued events, for the names configured.
#[derive(Clone)]
struct Emitter {
    /// ferrocast's own sender, if on.
    queue: Option<Queue>,
    factory: Arc<EventFactory>,
    names: Vec<String>,
    pusher: Arc<PusherDests>,
}

impl Emitter {
    fn emit(&self, kind: TrackKind, up: bool, key: &str) {
        let name = match (kind, up) {
            (TrackKind::User, true) => "user_online",
            (TrackKind::User, false) => "user_offline",
            (TrackKind::Channel, true) => "channel_occupied",
            (TrackKind::Channel, false) => "channel_vacated",
        };
        if kind == TrackKind::Channel {
            if let Some(hooks) = self.pusher.channel_app(key).filter(|h| h.wants(name)) {
                if let Some(pusher_name) = crate::pusher::protocol::from_ferrocast(key) {
                    tracing::debug!(event = name, channel = %pusher_name, "pusher webhook event");
                    hooks
                        .queue
                        .push(webhook::pusher::channel(name, &pusher_name));
                }
            }
        }
        let Some(queue) = &self.queue else { return };
        if !self.names.iter().any(|n| n == name) {
            return;
        }
        let event: Event = match kind {
            TrackKind::User => self.factory.user(name, key),
            TrackKind::Channel => self.factory.channel(name, key),
        };
        tracing::debug!(event = name, key, "webhook event");
        queue.push(event);
    }
}

struct Tracker {
    broker: Arc<dyn Broker>,
    /// This node's id: the member of every key it holds.
    member: String,
    ttl: Duration,
    offline_delay: Duration,
    vacate_delay: Duration,
    emit: Emitter,
    pending: Arc<AtomicUsize>,
}

impl Tracker {
    async fn apply(&self, op: Op) {
        match op {
            Op::Join(kind, key) => {
                match self
                    .broker
                    .track_join(kind, &key, &self.member, self.ttl)
                    .await
                {
                    Ok(true) => self.emit.emit(kind, true, &key),
                    Ok(false) => {}
                    // The next refresh finds the hold missing and joins again.
                    Err(e) => tracing::warn!(kind = kind.as_str(), error = %e, "track join failed"),
                }
            }
            Op::Leave(kind, key) => {
                let delay = match kind {
                    TrackKind::User => self.offline_delay,
                    // A Pusher app's channel: the app's delay (one key, one delay).
                    TrackKind::Channel => match self.emit.pusher.channel_app(&key) {
                        Some(hooks) => hooks.vacate_delay,
                        None => self.vacate_delay,
                    },
                };
                // On failure the hold expires after the TTL, and the sweep reports it then.
                if let Err(e) = self
                    .broker
                    .track_leave(kind, &key, &self.member, delay)
                    .await
                {
                    tracing::warn!(kind = kind.as_str(), error = %e, "track leave failed");
                }
            }
        }
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

fn worker_of(kind: TrackKind, key: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (kind, key).hash(&mut h);
    (h.finish() as usize) % WORKERS
}

/// Local counts, 0↔1 transitions to the workers, periodic refresh.
async fn run_tracker(
    tracker: Arc<Tracker>,
    mut rx: mpsc::UnboundedReceiver<Hook>,
    lost_tx: mpsc::UnboundedSender<Hook>,
) {
    let workers: Vec<mpsc::UnboundedSender<Op>> = (0..WORKERS)
        .map(|_| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Op>();
            let tracker = tracker.clone();
            tokio::spawn(async move {
                while let Some(op) = rx.recv().await {
                    tracker.apply(op).await;
                }
            });
            tx
        })
        .collect();
    let send = |op: Op| {
        let (kind, key) = match &op {
            Op::Join(k, key) | Op::Leave(k, key) => (*k, key.as_str()),
        };
        tracker.pending.fetch_add(1, Ordering::Relaxed);
        let _ = workers[worker_of(kind, key)].send(op);
    };
    // (kind, key) → local holders (connections of a user; 1 for a channel the node follows).
    let mut held: HashMap<(TrackKind, String), u32> = HashMap::new();
    let mut refresh = tokio::time::interval(tracker.ttl / 3);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    refresh.tick().await;
    loop {
        tokio::select! {
            hook = rx.recv() => {
                let Some(hook) = hook else { return };
                match hook {
                    Hook::Up(kind, key) => {
                        let n = held.entry((kind, key.clone())).or_insert(0);
                        *n += 1;
                        if *n == 1 {
                            send(Op::Join(kind, key));
                        }
                    }
                    Hook::Down(kind, key) => {
                        let k = (kind, key);
                        if let Some(n) = held.get_mut(&k) {
                            *n -= 1;
                            if *n == 0 {
                                held.remove(&k);
                                send(Op::Leave(k.0, k.1));
                            }
                        }
                    }
                    Hook::Lost(kind, key) => {
                        if held.contains_key(&(kind, key.clone())) {
                            send(Op::Join(kind, key));
                        }
                    }
                }
                tracker.pending.fetch_sub(1, Ordering::Relaxed);
            }
            _ = refresh.tick() => {
                for kind in [TrackKind::User, TrackKind::Channel] {
                    let keys: Vec<String> = held
                        .keys()
                        .filter(|(k, _)| *k == kind)
                        .map(|(_, key)| key.clone())
                        .collect();
                    if keys.is_empty() {
                        continue;
                    }
                    let tracker = tracker.clone();
                    let lost_tx = lost_tx.clone();
                    tokio::spawn(async move {
                        for chunk in keys.chunks(REFRESH_CHUNK) {
                            match tracker
                                .broker
                                .track_refresh(kind, chunk, &tracker.member, tracker.ttl)
                                .await
                            {
                                Ok(lost) => {
                                    for key in lost {
                                        tracker.pending.fetch_add(1, Ordering::Relaxed);
                                        let _ = lost_tx.send(Hook::Lost(kind, key));
                                    }
                                }
                                Err(e) => tracing::warn!(kind = kind.as_str(), error = %e, "track refresh failed"),
                            }
                        }
                    });
                }
            }
        }
    }
}

/// Once a second: final transitions to empty, reported by exactly one node of the fleet.
async fn run_sweeper(broker: Arc<dyn Broker>, kinds: Vec<TrackKind>, emit: Emitter) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for &kind in &kinds {
            match broker.track_sweep(kind).await {
                Ok(gone) => {
                    for key in gone {
                        emit.emit(kind, false, &key);
                    }
                }
                Err(e) => {
                    tracing::debug!(kind = kind.as_str(), error = %e, "track sweep failed")
                }
            }
        }
    }
}
