//! A `Shard`: one thread, one current-thread runtime, and everything its connections need as
//! plain shard-local data — the connection slab, the channel → subscribers table, the dirty list
//! for corked flushes. Nothing here is shared with other threads, so the per-message path takes
//! no lock: publications arrive through the inbox, are framed once for the shard, queued by
//! reference on each subscriber, and flushed with one `writev` per connection per batch.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::client;
use super::connection::{self, Connection, Route};
use super::node::Node;
use super::{Delivery, ShardMsg};
use crate::auth::Identity;
use crate::broker::{Control, PresenceEntry};
pub use crate::clock::uptime_secs as clock;
use crate::metrics::{count_error, metrics};
use crate::protocol::{reply, ChannelName, CloseCode};
use crate::ws::frame;
use crate::ws::outbound::Flushed;

/// Publications handled per inbox wake-up before flushing: bounds latency under a flood while
/// still letting many publications share one write per socket.
const BATCH: usize = 256;

/// The shard's read buffer: one socket read at a time goes through it.
const SCRATCH_BYTES: usize = 64 * 1024;

/// Queue pushes the fan-out may do before it flushes and yields, so one hot channel can't keep
/// the shard's other sockets (their reads, pings, replies) waiting for a whole batch. Large
/// enough that a flood still leaves in few writes per socket (cork): 256k pushes are a few
/// milliseconds of queueing — 25 publications to 10k subscribers.
const FAN_OUT_TURN: usize = 256 * 1024;

/// A subscriber between "subscribe received" and "caught up with the live stream".
///
/// Until the reply is queued (`after` is None) live publications are held. Once the reply covered
/// the stream up to `after`, publications still in flight with an offset ≤ `after` are dropped
/// (the reply had them) and the first one past it moves the subscriber to the live list, so the
/// client sees every offset exactly once and in order.
pub struct Joining {
    pub key: u32,
    pub after: Option<u64>,
    pub held: Vec<(u64, Bytes)>,
}

/// A channel's local subscribers.
#[derive(Default)]
pub struct ChannelSubs {
    /// Connections receiving live publications.
    pub subscribers: Vec<u32>,
    /// Connections whose subscription is being set up (see [`Joining`]).
    pub joining: JoiningList,
    /// The offset of the last publication fanned out here (0: none yet).
    pub last_offset: u64,
}

/// A channel's joining connections: empty nearly always (a subscribe is set up in one round
/// trip), so it is one null pointer in the channel's entry — every subscribed channel has one —
/// instead of a `Vec`'s three words. Never an empty allocation: the list is freed when it
/// empties.
#[derive(Default)]
#[allow(clippy::box_collection)] // one pointer in every channel's entry instead of three words
pub struct JoiningList(Option<Box<Vec<Joining>>>);

impl JoiningList {
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn push(&mut self, j: Joining) {
        self.0
            .get_or_insert_with(|| Box::new(Vec::with_capacity(1)))
            .push(j);
    }

    fn position(&self, key: u32) -> Option<usize> {
        self.0.as_ref()?.iter().position(|j| j.key == key)
    }

    fn get_mut(&mut self, i: usize) -> &mut Joining {
        &mut self.0.as_mut().expect("a joining connection")[i]
    }

    fn swap_remove(&mut self, i: usize) {
        if let Some(list) = &mut self.0 {
            list.swap_remove(i);
            if list.is_empty() {
                self.0 = None;
            }
        }
    }

    fn retain_mut(&mut self, f: impl FnMut(&mut Joining) -> bool) {
        if let Some(list) = &mut self.0 {
            list.retain_mut(f);
            if list.is_empty() {
                self.0 = None;
            }
        }
    }
}

pub struct ShardState {
    pub conns: Slab<Connection>,
    pub channels: HashMap<ChannelName, ChannelSubs>,
    dirty: Vec<u32>,
    subscriptions: usize,
    /// Deliveries and bytes not yet added to the shared counters.
    deliveries: u64,
    pub bytes_out: u64,
    /// Channels whose first subscriber on this shard is still subscribing the node at the broker
    /// (`Node::add_interest`): later subscribers wait for its outcome here. `Some(false)` stays
    /// until the channel's entry empties, so nobody joins a subscription that failed. Empty
    /// nearly always.
    pub pending: HashMap<ChannelName, tokio::sync::watch::Sender<Option<bool>>>,
    /// This node's number in Pusher socket ids (`crate::pusher`): a Pusher client event is not
    /// sent back to its sender.
    pub pusher_node: u64,
}

pub struct Shard {
    pub index: usize,
    pub node: Arc<Node>,
    pub state: RefCell<ShardState>,
    /// The read buffer every connection of the shard shares (see hub::connection and ws::socket).
    pub scratch: RefCell<Vec<u8>>,
    pub draining: Cell<bool>,
    /// Things that live exactly as long as a connection (the server's per-IP slot), by key;
    /// empty unless such limits are configured.
    attached: RefCell<HashMap<usize, Box<dyn std::any::Any>>>,
    /// Wakes the accept loop when the drain starts.
    pub drain_started: tokio::sync::Notify,
    label: String,
    /// Pusher connections' own state (socket id, app, signed-in user, presence), by key — kept
    /// out of `Connection`, whose size every socket pays.
    pub pusher: RefCell<HashMap<usize, crate::pusher::ConnState>>,
}

impl Shard {
    pub fn new(index: usize, node: Arc<Node>) -> Rc<Shard> {
        // One read's worth: the decoder keeps a message that spans reads itself.
        let scratch = vec![0u8; SCRATCH_BYTES];
        let mut state = ShardState::with_capacity(slots_per_shard(&node));
        state.pusher_node = crate::pusher::protocol::node_number(&node.id);
        Rc::new(Shard {
            index,
            node,
            state: RefCell::new(state),
            scratch: RefCell::new(scratch),
            draining: Cell::new(false),
            attached: RefCell::new(HashMap::new()),
            drain_started: tokio::sync::Notify::new(),
            label: index.to_string(),
            pusher: RefCell::new(HashMap::new()),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Adopts an upgraded socket and starts its task. `read_ahead` = bytes hyper read past the
    /// handshake (a client may send its first frame right behind the upgrade request).
    pub fn register(
        self: &Rc<Self>,
        stream: TcpStream,
        read_ahead: Bytes,
        route: Route,
        identity: Option<Identity>,
        close_with: Option<CloseCode>,
    ) -> usize {
        let cfg = &self.node.config;
        let deadline = clock() + cfg.auth.timeout.0.as_secs().max(1) as u32;
        let client = self.node.next_client_id();
        let key = {
            let mut st = self.state.borrow_mut();
            let out_limit = cfg.limits.outbound_queue_bytes;
            let mut conn =
                Connection::new(Some(Rc::new(stream)), client, deadline, route, out_limit);
            let authenticated = identity.is_some();
            if let (Some(events), Some(i)) = (&self.node.events, &identity) {
                events.user_connected(&i.user);
            }
            conn.identity = identity.map(Box::new);
            if let Some(code) = close_with {
                conn.closing = Some(code);
            } else if authenticated {
                let body =
                    serde_json::json!({"connected": connection::connected_body(self, &conn)});
                conn.queue_text(&serde_json::to_vec(&body).expect("json"));
            }
            st.conns.insert(conn)
        };
        self.node.connections.fetch_add(1, Ordering::Relaxed);
        let m = metrics();
        m.connects.inc();
        m.sockets.with_label_values(&[&self.label]).inc();
        self.flush(key);
        tokio::task::spawn_local(connection::run(self.clone(), key, read_ahead));
        self.start_server_subscriptions(key);
        key
    }

    /// Adopts an SSE stream (`server::sse`): an authenticated connection without a socket or a
    /// task, numbered `client` (`Node::next_client_id`); its `connected` push is queued. Returns
    /// its key.
    pub fn register_sse(self: &Rc<Self>, identity: Identity, client: u64) -> usize {
        let cfg = &self.node.config;
        let key = {
            let mut st = self.state.borrow_mut();
            let out_limit = cfg.limits.outbound_queue_bytes;
            let mut conn = Connection::new(None, client, 0, Route::Sse, out_limit);
            if let Some(events) = &self.node.events {
                events.user_connected(&identity.user);
            }
            conn.identity = Some(Box::new(identity));
            let body = serde_json::json!({"connected": connection::connected_body(self, &conn)});
            conn.queue_text(&serde_json::to_vec(&body).expect("json"));
            st.conns.insert(conn)
        };
        self.node.connections.fetch_add(1, Ordering::Relaxed);
        let m = metrics();
        m.connects.inc();
        m.sockets.with_label_values(&[&self.label]).inc();
        key
    }

    /// Subscribes an authenticated connection to its identity's `subs` (no recovery: a client
    /// that wants it authenticates with the `connect` command and its positions).
    pub fn start_server_subscriptions(self: &Rc<Self>, key: usize) {
        let has_subs = self
            .state
            .borrow()
            .conns
            .get(key)
            .and_then(|c| c.identity.as_ref())
            .is_some_and(|i| !i.subs.is_empty());
        if has_subs {
            let shard = self.clone();
            tokio::task::spawn_local(async move {
                client::server_subscriptions(&shard, key, Vec::new(), Vec::new()).await;
            });
        }
    }

    /// Keeps `thing` until the connection `key` is removed (then drops it).
    pub fn attach(&self, key: usize, thing: Box<dyn std::any::Any>) {
        if self.state.borrow().conns.contains(key) {
            self.attached.borrow_mut().insert(key, thing);
        }
    }

    /// Writes what the connection has queued. Returns true when the queue is empty.
    pub fn flush(&self, key: usize) -> bool {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let Some(conn) = st.conns.get_mut(key) else {
            return true;
        };
        if conn.blocked {
            return false;
        }
        let Some(stream) = conn.stream.clone() else {
            // An SSE stream: its response body takes the output when woken.
            conn.wake();
            return true;
        };
        match conn
            .out
            .flush_with(|slices| stream.try_write_vectored(slices))
        {
            Ok((n, Flushed::All)) => {
                st.bytes_out += n as u64;
                true
            }
            Ok((n, Flushed::Blocked)) => {
                st.bytes_out += n as u64;
                conn.blocked = true;
                conn.wake();
                false
            }
            Err(_) => {
                // The peer is gone; nothing more can be written.
                conn.out.clear();
                conn.close(CloseCode::Gone);
                true
            }
        }
    }

    /// Takes a connection out of the shard and releases its subscriptions everywhere.
    pub async fn remove_connection(self: &Rc<Self>, key: usize) {
        let (conn, emptied) = {
            let mut st = self.state.borrow_mut();
            let conn = st.conns.remove(key);
            let mut emptied = Vec::new();
            for ch in &conn.subs {
                if st.remove_subscriber(ch, key as u32) {
                    emptied.push(ch.clone());
                }
            }
            st.subscriptions -= conn.subs.len();
            (conn, emptied)
        };
        self.node.connections.fetch_sub(1, Ordering::Relaxed);
        metrics().sockets.with_label_values(&[&self.label]).dec();
        if !self.attached.borrow().is_empty() {
            self.attached.borrow_mut().remove(&key);
        }
        if let (Some(events), Some(i)) = (&self.node.events, &conn.identity) {
            events.user_disconnected(&i.user);
        }
        let client = self.node.client_name(conn.client);
        for ch in &conn.subs {
            self.after_leave(ch, &client, conn.identity.as_deref())
                .await;
        }
        if conn.route == Route::Pusher {
            crate::pusher::conn::removed(self, key, conn.client).await;
        }
        for ch in emptied {
            self.node.remove_interest(&ch).await;
        }
        let _ = conn.stream; // dropping the last Rc closes the socket
    }

    /// Presence removal and the leave push for a subscription that ended.
    pub async fn after_leave(&self, ch: &ChannelName, client: &str, identity: Option<&Identity>) {
        let Some(ns) = self.node.namespace(ch) else {
            return;
        };
        if ns.presence {
            if let Err(e) = self.node.broker.presence_remove(ch, client).await {
                tracing::warn!(channel = %ch, error = %e, "presence remove failed");
            }
        }
        if ns.join_leave {
            let user = identity.map(|i| i.user.to_string()).unwrap_or_default();
            let push = reply::channel_push(
                ch,
                "leave",
                &serde_json::json!({"user": user, "client": client}),
            );
            let _ = self
                .node
                .broker
                .publish_control(ch, Bytes::from(push))
                .await;
        }
    }

    /// Presence entry and join push for a new subscription.
    pub async fn after_join(&self, ch: &ChannelName, client: &str, identity: &Identity) {
        let Some(ns) = self.node.namespace(ch) else {
            return;
        };
        if ns.presence {
            let entry = PresenceEntry {
                client: client.to_string(),
                user: identity.user.to_string(),
                info: identity.info.clone(),
            };
            let ttl = self.node.config.client.presence_ttl.0;
            if let Err(e) = self.node.broker.presence_add(ch, entry, ttl).await {
                tracing::warn!(channel = %ch, error = %e, "presence add failed");
            }
        }
        if ns.join_leave {
            let push = reply::channel_push(
                ch,
                "join",
                &serde_json::json!({"user": &*identity.user, "client": client}),
            );
            let _ = self
                .node
                .broker
                .publish_control(ch, Bytes::from(push))
                .await;
        }
    }

    /// Drains the inbox: deliveries are fanned out in batches, each batch ending with one flush
    /// per touched connection.
    pub async fn run_inbox(self: Rc<Self>, mut rx: mpsc::UnboundedReceiver<ShardMsg>) {
        let mut batch: Vec<ShardMsg> = Vec::with_capacity(BATCH);
        let mut published: Vec<u64> = Vec::with_capacity(BATCH);
        loop {
            if rx.recv_many(&mut batch, BATCH).await == 0 {
                return;
            }
            let mut pushed = 0;
            for msg in batch.drain(..) {
                match msg {
                    ShardMsg::Deliver(d) => {
                        self.node.hub.taken(1);
                        let limit = self.node.config.limits.outbound_queue_bytes;
                        {
                            let mut st = self.state.borrow_mut();
                            let before = st.deliveries;
                            if st.fan_out(&d, limit) {
                                published.push(d.published_at_us);
                            }
                            pushed += (st.deliveries - before) as usize;
                        }
                        if pushed >= FAN_OUT_TURN {
                            // A hot channel's turn is over: send what is queued and let the
                            // shard's sockets run before the rest of the batch.
                            pushed = 0;
                            self.flush_dirty();
                            tokio::task::yield_now().await;
                        }
                    }
                    ShardMsg::Control(c) => self.apply_control(c),
                    ShardMsg::Drain(done) => {
                        tokio::task::spawn_local(self.clone().drain(done));
                    }
                }
            }
            self.flush_dirty();
            if !published.is_empty() {
                let now = crate::clock::unix_micros();
                let h = &metrics().delivery_latency;
                for at in published.drain(..) {
                    h.observe(now.saturating_sub(at) as f64 / 1e6);
                }
            }
        }
    }

    fn flush_dirty(&self) {
        let mut dirty = self.state.borrow_mut().take_dirty();
        for &key in &dirty {
            self.flush(key as usize);
        }
        // Hand the allocation back for the next batch.
        dirty.clear();
        let mut st = self.state.borrow_mut();
        if st.dirty.is_empty() {
            st.dirty = dirty;
        }
    }

    fn apply_control(self: &Rc<Self>, c: Control) {
        let mut st = self.state.borrow_mut();
        match c {
            Control::DisconnectUser { user, code, reason } => {
                for (_, conn) in st.conns.iter_mut() {
                    if conn.identity.as_ref().is_some_and(|i| *i.user == *user) {
                        conn.custom_close = Some(Box::new((code, reason.clone())));
                        conn.close(CloseCode::ServerClose);
                    }
                }
            }
            Control::UnsubscribeUser { user, channel } => {
                let keys: Vec<usize> = st
                    .conns
                    .iter()
                    .filter(|(_, c)| {
                        c.identity.as_ref().is_some_and(|i| *i.user == *user)
                            && c.subs.contains(&channel)
                    })
                    .map(|(k, _)| k)
                    .collect();
                drop(st);
                for key in keys {
                    self.server_unsubscribe(key, &channel, false);
                }
            }
            Control::SubscribeUser { user, channel } => {
                let targets: Vec<(usize, u64)> = st
                    .conns
                    .iter()
                    .filter(|(_, c)| {
                        c.closing.is_none()
                            && c.identity.as_ref().is_some_and(|i| *i.user == *user)
                            && !c.subs.contains(&channel)
                    })
                    .map(|(k, c)| (k, c.client))
                    .collect();
                drop(st);
                for (key, client) in targets {
                    let shard = self.clone();
                    let channel = channel.clone();
                    tokio::task::spawn_local(async move {
                        client::subscribe_by_server(&shard, key, client, channel).await;
                    });
                }
            }
            Control::ResetChannel { channel } => {
                let keys: Vec<usize> = st
                    .channels
                    .get(&channel)
                    .map(|s| s.subscribers.iter().map(|k| *k as usize).collect())
                    .unwrap_or_default();
                drop(st);
                for key in keys {
                    self.server_unsubscribe(key, &channel, true);
                }
            }
        }
    }

    /// Unsubscribes a connection on the server's initiative and tells the client. With
    /// `resubscribe`, the node lost track of the channel's stream (a gap it could not repair from
    /// history): the client is asked to subscribe again with `recover`, which tells it what it
    /// missed or that it cannot be recovered.
    fn server_unsubscribe(&self, key: usize, channel: &ChannelName, resubscribe: bool) {
        let emptied = {
            let mut st = self.state.borrow_mut();
            let st = &mut *st;
            let Some(conn) = st.conns.get_mut(key) else {
                return;
            };
            let Some(i) = conn.subs.iter().position(|c| c == channel) else {
                return;
            };
            conn.subs.swap_remove(i);
            let body = if resubscribe {
                serde_json::json!({"resubscribe": true, "reason": "insufficient state"})
            } else {
                serde_json::json!({})
            };
            conn.queue_text(&reply::channel_push(channel, "unsubscribe", &body));
            st.subscriptions -= 1;
            st.remove_subscriber(channel, key as u32)
        };
        self.flush(key);
        let (client, identity) = {
            let st = self.state.borrow();
            let conn = &st.conns[key];
            (self.node.client_name(conn.client), conn.identity.clone())
        };
        let node = self.node.clone();
        let channel = channel.clone();
        tokio::task::spawn_local(async move {
            if let Some(ns) = node.namespace(&channel) {
                if ns.presence {
                    let _ = node.broker.presence_remove(&channel, &client).await;
                }
                if ns.join_leave {
                    let user = identity.map(|i| i.user.to_string()).unwrap_or_default();
                    let push = reply::channel_push(
                        &channel,
                        "leave",
                        &serde_json::json!({"user": user, "client": client}),
                    );
                    let _ = node
                        .broker
                        .publish_control(&channel, Bytes::from(push))
                        .await;
                }
            }
            if emptied {
                node.remove_interest(&channel).await;
            }
        });
    }

    /// Once a second: auth deadlines, token expiry, pings and pong deadlines, presence refresh,
    /// gauges.
    pub async fn run_ticker(self: Rc<Self>) {
        let cfg = &self.node.config;
        let ping_every = cfg.client.ping_interval.0.as_secs().max(1) as u32;
        let pong_timeout = cfg.client.pong_timeout.0.as_secs().max(1) as u32;
        // How long a pong may be late while the ping can't have reached the peer yet.
        let pong_grace = pong_timeout.saturating_mul(3).max(30);
        let presence_ttl = cfg.client.presence_ttl.0;
        let refresh_every = (presence_ttl.as_secs() / 3).max(1) as u32;
        let ping = frame::encode(frame::OP_PING, b"");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = clock();
            let unix = crate::auth::now_unix();
            let refresh_presence = now % refresh_every == 0;
            let mut presence: Vec<(ChannelName, PresenceEntry)> = Vec::new();
            let mut to_flush = Vec::new();
            let mut stuck = Vec::new();
            {
                let mut st = self.state.borrow_mut();
                for (key, conn) in st.conns.iter_mut() {
                    conn.out.release_if_idle();
                    if conn.closing.is_some() {
                        if conn.route == Route::Sse {
                            // A closing SSE stream ends when hyper has written its last event;
                            // a client that stopped reading is cut off after 2 s, as a
                            // WebSocket's close is (`ping_sent` holds when it started closing).
                            let since = *conn.ping_sent.get_or_insert(now);
                            if now.saturating_sub(since) >= 2 {
                                stuck.push(key);
                            }
                        }
                        continue;
                    }
                    let Some(identity) = conn.identity.as_ref() else {
                        // The echo route has no authentication (and no server pings: they'd
                        // be events a conformance client does not expect).
                        if conn.route == Route::Commands && now >= conn.auth_deadline {
                            conn.close(CloseCode::AuthTimeout);
                        }
                        continue;
                    };
                    if identity.expires_at.is_some_and(|exp| exp <= unix) {
                        count_error(109);
                        conn.close(CloseCode::TokenExpired);
                        continue;
                    }
                    if conn.route == Route::Sse {
                        // No pongs on SSE: the heartbeat only keeps proxies from timing the
                        // stream out; a dead client shows as a failed write.
                        if now.saturating_sub(conn.last_seen) >= ping_every {
                            if conn.out.bytes() + ping.len() <= conn.out_limit as usize {
                                conn.out.push(ping.clone());
                            }
                            conn.last_seen = now;
                            to_flush.push(key);
                        }
                    } else {
                        match conn.ping_sent {
                            Some(at) if now.saturating_sub(at) >= pong_timeout => {
                                // A pong that is only late (the ping still queued behind other
                                // output, or the answer unread on our side: a busy host) gets
                                // up to `pong_grace`; a peer that is gone does not.
                                if now.saturating_sub(at) < pong_grace && pong_may_be_late(conn) {
                                    continue;
                                }
                                conn.close(CloseCode::ServerClose);
                                continue;
                            }
                            None if now.saturating_sub(conn.last_seen) >= ping_every => {
                                // Within the queue bound (a full queue is closing already).
                                if conn.out.bytes() + ping.len() <= conn.out_limit as usize {
                                    conn.out.push(ping.clone());
                                }
                                conn.ping_sent = Some(now);
                                to_flush.push(key);
                            }
                            _ => {}
                        }
                    }
                    if refresh_presence {
                        for ch in &conn.subs {
                            if self.node.namespace(ch).is_some_and(|ns| ns.presence) {
                                presence.push((
                                    ch.clone(),
                                    PresenceEntry {
                                        client: self.node.client_name(conn.client),
                                        user: identity.user.to_string(),
                                        info: identity.info.clone(),
                                    },
                                ));
                            }
                        }
                    }
                }
            }
            for key in to_flush {
                self.flush(key);
            }
            for key in stuck {
                // Dropping what is attached to it ends the HTTP connection (server::sse).
                let shard = self.clone();
                tokio::task::spawn_local(async move { shard.remove_connection(key).await });
            }
            self.update_gauges();
            if !presence.is_empty() {
                let node = self.node.clone();
                tokio::task::spawn_local(async move {
                    for (ch, entry) in presence {
                        let _ = node.broker.presence_add(&ch, entry, presence_ttl).await;
                    }
                });
            }
        }
    }

    fn update_gauges(&self) {
        let m = metrics();
        let mut st = self.state.borrow_mut();
        m.deliveries.inc_by(std::mem::take(&mut st.deliveries));
        m.bytes_out.inc_by(std::mem::take(&mut st.bytes_out));
        m.subscriptions
            .with_label_values(&[&self.label])
            .set(st.subscriptions as i64);
        m.channels
            .with_label_values(&[&self.label])
            .set(st.channels.len() as i64);
        let queued: usize = st.conns.iter().map(|(_, c)| c.out.bytes()).sum();
        m.outbound_queue_bytes
            .with_label_values(&[&self.label])
            .set(queued as i64);
    }

    /// Closes every connection with 4010 in batches spread over `shutdown.drain_seconds`, so a
    /// fleet behind nginx rebalances without a reconnect storm.
    async fn drain(self: Rc<Self>, done: oneshot::Sender<()>) {
        self.draining.set(true);
        self.drain_started.notify_waiters();
        let keys: Vec<usize> = self.state.borrow().conns.iter().map(|(k, _)| k).collect();
        let secs = self.node.config.shutdown.drain_seconds;
        let steps = (secs * 10).max(1) as usize;
        let per_step = keys.len().div_ceil(steps).max(1);
        for (i, chunk) in keys.chunks(per_step).enumerate() {
            {
                let mut st = self.state.borrow_mut();
                for &k in chunk {
                    if let Some(c) = st.conns.get_mut(k) {
                        c.close(CloseCode::Shutdown);
                    }
                }
            }
            if i + 1 < keys.len().div_ceil(per_step) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Late arrivals (upgrades in flight) get the same treatment until the shard is empty.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            {
                let mut st = self.state.borrow_mut();
                for (_, c) in st.conns.iter_mut() {
                    c.close(CloseCode::Shutdown);
                }
                if st.conns.is_empty() || Instant::now() > deadline {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.update_gauges();
        let _ = done.send(());
    }
}

/// Whether a missing pong may only be late rather than never coming: output (the ping among it)
/// has not left this host yet — still in the connection's queue, or in the kernel's send queue
/// (`TIOCOUTQ`: the peer's window is full or it has not acknowledged) — or input waits unread in
/// the socket (the peer answered; this shard was too busy to read it yet). Under a broadcast that
/// keeps both CPUs busy for seconds, that is most connections, and they are alive.
fn pong_may_be_late(conn: &Connection) -> bool {
    use std::os::fd::AsRawFd;
    if !conn.out.is_empty() {
        return true;
    }
    let Some(stream) = &conn.stream else {
        return false;
    };
    let fd = stream.as_raw_fd();
    let mut unsent: libc::c_int = 0;
    // SAFETY: TIOCOUTQ on a socket fd writes one int into `unsent`, which we own.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unsent) } == 0 && unsent > 0 {
        return true;
    }
    let mut byte = 0u8;
    // SAFETY: a non-blocking peek of at most 1 byte into `byte`, which we own; nothing is consumed.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

/// Connection slots each shard reserves at start: `node.target_sockets` spread over the shards,
/// capped by the open-file limit (which bounds the sockets anyway). The slab fills from its front
/// (a freed slot is the next one reused), so the reserved tail costs address space until sockets
/// arrive, and the slab never doubles while they do (each doubling copies every connection on the
/// shard thread, and leaves up to half of the new array unused). The channel tables are not
/// reserved this way: their entries land anywhere in the table, so a table sized for the target
/// would be touched all over by a fraction of it.
fn slots_per_shard(node: &Node) -> usize {
    let shards = node.hub.shard_count().max(1) as u64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid, initialized struct.
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    let files = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur as u64
    } else {
        0
    };
    (node.config.node.target_sockets.min(files) / shards) as usize
}

impl Default for ShardState {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardState {
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// A shard state with `slots` connection slots reserved.
    pub fn with_capacity(slots: usize) -> Self {
        ShardState {
            conns: Slab::with_capacity(slots),
            channels: HashMap::new(),
            dirty: Vec::new(),
            subscriptions: 0,
            deliveries: 0,
            bytes_out: 0,
            pending: HashMap::new(),
            pusher_node: 0,
        }
    }

    /// Connections with output queued since the last flush (taken: the caller flushes them).
    pub fn take_dirty(&mut self) -> Vec<u32> {
        let dirty = std::mem::take(&mut self.dirty);
        for &k in &dirty {
            if let Some(c) = self.conns.get_mut(k as usize) {
                c.dirty = false;
            }
        }
        dirty
    }

    /// Queues one publication on every local subscriber. Returns whether anyone here listens.
    ///
    /// The frame is copied once into a shard-owned buffer so the per-subscriber reference count
    /// increments stay on this core's cache line.
    pub fn fan_out(&mut self, d: &Delivery, limit: usize) -> bool {
        let Some(subs) = self.channels.get_mut(&d.channel) else {
            return false;
        };
        let frame = frame::text(&d.payload);
        let mut n = 0u64;
        if d.offset != 0 {
            subs.last_offset = d.offset;
        }
        // The Pusher form, built on the first Pusher subscriber (once per delivery and shard).
        let mut pusher: Option<crate::pusher::protocol::PusherFrame> = None;
        let node = self.pusher_node;
        for &key in &subs.subscribers {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            if conn.closing.is_some() {
                continue;
            }
            let Some(frame) = frame_for_route(conn, &frame, d, &mut pusher, node) else {
                continue;
            };
            if conn.out.bytes() + frame.len() > limit {
                metrics().slow_consumer_closes.inc();
                conn.close(CloseCode::SlowConsumer);
                continue;
            }
            conn.out.push(frame);
            n += 1;
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
        if !subs.joining.is_empty() {
            let conns = &mut self.conns;
            let dirty = &mut self.dirty;
            let live = &mut subs.subscribers;
            subs.joining.retain_mut(|j| match j.after {
                None => {
                    if let Some(frame) = conns
                        .get(j.key as usize)
                        .and_then(|c| frame_for_route(c, &frame, d, &mut pusher, node))
                    {
                        j.held.push((d.offset, frame));
                    }
                    true
                }
                Some(after) if d.offset != 0 && d.offset <= after => true,
                Some(_) => {
                    if let Some(conn) = conns.get_mut(j.key as usize) {
                        if let Some(frame) = frame_for_route(conn, &frame, d, &mut pusher, node) {
                            conn.out.push(frame);
                        }
                        n += 1;
                        if !conn.dirty {
                            conn.dirty = true;
                            dirty.push(j.key);
                        }
                    }
                    if d.offset == 0 {
                        true
                    } else {
                        push_small(live, j.key);
                        false
                    }
                }
            });
        }
        self.deliveries += n;
        true
    }

    /// Registers `key` as subscribing to `ch` (joining: live publications are held).
    /// Returns true when the channel is new on this shard.
    pub fn add_joining(&mut self, ch: &ChannelName, key: u32) -> bool {
        self.join(ch.clone(), key).1
    }

    /// `add_joining` that also returns the shard's own copy of the name: one allocation per
    /// channel, for every subscriber's subscription list to share instead of one per subscribe.
    pub fn join(&mut self, ch: ChannelName, key: u32) -> (ChannelName, bool) {
        let (name, subs, new) = match self.channels.entry(ch) {
            Entry::Occupied(o) => (o.key().clone(), o.into_mut(), false),
            Entry::Vacant(v) => (v.key().clone(), v.insert(ChannelSubs::default()), true),
        };
        subs.joining.push(Joining {
            key,
            after: None,
            held: Vec::new(),
        });
        self.subscriptions += 1;
        (name, new)
    }

    /// Called right after the subscribe reply (covering the stream up to `after`) was queued:
    /// queues the held publications that come after it (and every push without an offset).
    pub fn activate(&mut self, ch: &ChannelName, key: u32, after: u64) {
        let Some(subs) = self.channels.get_mut(ch) else {
            return;
        };
        let Some(i) = subs.joining.position(key) else {
            return;
        };
        let j = subs.joining.get_mut(i);
        j.after = Some(after);
        let held = std::mem::take(&mut j.held);
        if after == subs.last_offset {
            // Nothing at or below `after` can still be on its way to this shard (a channel's
            // publications reach it in offset order, and the last one here is `after`): the
            // connection goes live at once instead of waiting for the next publication.
            subs.joining.swap_remove(i);
            push_small(&mut subs.subscribers, key);
        }
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        for (offset, frame) in held {
            if (offset == 0 || offset > after) && !conn.send(frame) {
                break; // past the queue limit: the connection is closing with 4005
            }
        }
    }

    /// Removes `key` from `ch`'s local subscribers. Returns true when the channel has no local
    /// subscriber left.
    pub fn remove_subscriber(&mut self, ch: &ChannelName, key: u32) -> bool {
        let Some(subs) = self.channels.get_mut(ch) else {
            return false;
        };
        if let Some(i) = subs.subscribers.iter().position(|k| *k == key) {
            subs.subscribers.swap_remove(i);
        } else if let Some(i) = subs.joining.position(key) {
            subs.joining.swap_remove(i);
        }
        if subs.subscribers.is_empty() && subs.joining.is_empty() {
            self.channels.remove(ch);
            if !self.pending.is_empty() {
                self.pending.remove(ch);
            }
            true
        } else {
            false
        }
    }

    /// Undo of `add_joining` for a subscribe that failed; returns true when the channel is
    /// gone from the shard.
    pub fn abort_subscribe(&mut self, ch: &ChannelName, key: u32) -> bool {
        self.subscriptions -= 1;
        self.remove_subscriber(ch, key)
    }
}

/// The frame a subscriber gets for a delivery: the shard's frame, or for a Pusher connection the
/// delivery's Pusher form (built once, on first need; `None` when there is none, or when this
/// subscriber sent the client event).
fn frame_for_route(
    conn: &Connection,
    frame: &Bytes,
    d: &Delivery,
    pusher: &mut Option<crate::pusher::protocol::PusherFrame>,
    node: u64,
) -> Option<Bytes> {
    if conn.route != Route::Pusher {
        return Some(frame.clone());
    }
    let built = pusher.get_or_insert_with(|| crate::pusher::protocol::frame_for(&d.payload));
    let (frame, sender) = built.as_ref()?;
    if *sender == Some((node, conn.client)) {
        return None;
    }
    Some(frame.clone())
}

/// Pushes with exact growth up to 4 elements, doubling beyond: most lists here (a personal
/// channel's subscribers, a connection's subscriptions) stay at one or two entries, paid once per
/// socket, where `Vec`'s first growth would reserve four.
pub fn push_small<T>(v: &mut Vec<T>, x: T) {
    if v.len() == v.capacity() && v.len() < 4 {
        v.reserve_exact(1);
    }
    v.push(x);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every channel subscribed on a shard has an entry: the name (a pointer and a length) and
    /// this (it was 56 bytes).
    #[test]
    fn a_channel_entry_stays_small() {
        assert!(std::mem::size_of::<ChannelSubs>() <= 40);
    }

    #[test]
    fn joining_lists_free_themselves() {
        let mut l = JoiningList::default();
        for key in [1, 2] {
            l.push(Joining {
                key,
                after: None,
                held: Vec::new(),
            });
        }
        assert_eq!(l.position(2), Some(1));
        l.swap_remove(0);
        assert_eq!(l.position(2), Some(0));
        l.retain_mut(|j| j.key != 2);
        assert!(l.is_empty() && l.0.is_none());
        let mut v = Vec::new();
        push_small(&mut v, 1u32);
        push_small(&mut v, 2);
        assert_eq!(v.capacity(), 2);
    }
}
