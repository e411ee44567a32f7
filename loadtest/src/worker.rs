//! One process's share of the sockets: the ramp, one task per socket, and the phases the parent
//! steps them through (connect → go → drain → stop).
//!
//! A socket task owns its connection and its bookkeeping outright; the only shared state it
//! touches per delivery is a sharded latency histogram and a few relaxed counters.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferrocast_codec::frame::OP_PONG;
use hdrhistogram::Histogram;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::plan::{Kind, Plan};
use crate::proto::{self, Incoming, Marker, PushKind};
use crate::stats::{self, Live, Reasons, ShardedHist, WorkerReport};
use crate::tracker::{Seen, SeqTracker};
use crate::ws::{self, Conn, Message};

/// Parent → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ctl {
    /// Every worker is connected: start the traffic (chat, raw, churn).
    Go,
    /// The API publisher is done; publications made per channel and source. Drain, then stop.
    Expected(Vec<Vec<u64>>),
    /// million, before `Expected`: notifications made to this worker's sockets (socket, count),
    /// source 1 on each socket's `user:<id>`.
    ExpectedUsers(Vec<(u64, u64)>),
    /// Stop now (timeout, interrupt).
    Stop,
}

/// Worker → parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Progress(stats::LiveSnapshot),
    Ready,
    /// million: every socket has what it expects (or --drain ran out); the sockets stay open.
    Delivered,
    Report(Box<WorkerReport>),
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Connecting,
    Go,
    Drain,
    Stop,
}

/// Final per-socket figures, summed as sockets finish.
#[derive(Default)]
struct Totals {
    subscribers: u64,
    deliveries: u64,
    unique: u64,
    duplicates: u64,
    foreign: u64,
    expected: u64,
    lost: u64,
    subscribers_with_loss: u64,
    sent: u64,
    sent_ok: u64,
    received_raw: u64,
    bytes_in: u64,
    recovered: u64,
    recover_failed: u64,
    expected_notify: u64,
    lost_notify: u64,
}

/// The close code a draining ferrocast node sends: "shutdown, reconnect elsewhere".
const CLOSE_SHUTDOWN: u16 = 4010;
/// Nodes a socket closed by a drain tries before it gives up.
const FAILOVER_ATTEMPTS: u32 = 5;
/// The longest wait a Retry-After can impose on one retry, and the shortest.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
const MIN_RETRY_WAIT: Duration = Duration::from_millis(100);

/// The wait before retrying an upgrade refused with 503 + Retry-After: the delay asked for
/// (within 100 ms – 30 s) times 1 + `jitter` (0..1), so a shed storm does not come back in
/// lockstep and nobody comes back before the node asked.
pub fn retry_delay(asked: Duration, jitter: f64) -> Duration {
    let base = asked.clamp(MIN_RETRY_WAIT, MAX_RETRY_WAIT);
    base.mul_f64(1.0 + jitter.clamp(0.0, 1.0))
        .min(MAX_RETRY_WAIT)
}

struct Shared {
    plan: Arc<Plan>,
    live: Arc<Live>,
    phase: watch::Receiver<Phase>,
    expected: OnceLock<Arc<Vec<Vec<u64>>>>,
    /// million: notifications per socket of this worker.
    expected_users: OnceLock<HashMap<u64, u64>>,
    latency: ShardedHist,
    /// million: notification latency (`latency` then holds the broadcast's).
    latency_notify: ShardedHist,
    failover: Mutex<Histogram<u64>>,
    last_failover_ns: AtomicU64,
    upgrade: Mutex<Histogram<u64>>,
    ready: Mutex<Histogram<u64>>,
    reconnect: Mutex<Histogram<u64>>,
    failures: Reasons,
    disconnects: Reasons,
    send_errors: Reasons,
    totals: Mutex<Totals>,
    /// Established sockets that have not finished (all expected received, or dead).
    pending: AtomicU64,
    /// Sockets that finished sending their frames (chat, raw).
    senders_done: AtomicU64,
    /// Chat: frames sent per (room, member), the expected counts of everyone in the room.
    chat_sent: Vec<AtomicU64>,
    first_attempt_ns: AtomicU64,
    last_connected_ns: AtomicU64,
    last_delivery_ns: AtomicU64,
}

/// Drives this worker's sockets through the run; the parent talks to it through `ctl`/`events`.
pub async fn run_worker(
    plan: Arc<Plan>,
    index: u32,
    live: Arc<Live>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    events: mpsc::UnboundedSender<Event>,
) {
    let sockets = plan.sockets_of(index);
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let sh = Arc::new(Shared {
        live,
        phase: phase_rx,
        expected: OnceLock::new(),
        expected_users: OnceLock::new(),
        latency: ShardedHist::new(threads * 8),
        latency_notify: ShardedHist::new(threads),
        failover: Mutex::new(stats::new_hist()),
        last_failover_ns: AtomicU64::new(0),
        upgrade: Mutex::new(stats::new_hist()),
        ready: Mutex::new(stats::new_hist()),
        reconnect: Mutex::new(stats::new_hist()),
        failures: Reasons::default(),
        disconnects: Reasons::default(),
        send_errors: Reasons::default(),
        totals: Mutex::new(Totals::default()),
        pending: AtomicU64::new(0),
        senders_done: AtomicU64::new(0),
        chat_sent: if plan.kind == Kind::Chat {
            (0..plan.channels.len() as u64 * plan.room_size)
                .map(|_| AtomicU64::new(0))
                .collect()
        } else {
            Vec::new()
        },
        first_attempt_ns: AtomicU64::new(u64::MAX),
        last_connected_ns: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        plan,
    });
    let mut tasks = JoinSet::new();
    // Stopped early or not, the sockets close and the report goes out the same way.
    drive(&sh, &sockets, &mut tasks, &mut ctl, &events, &phase_tx).await;
    let _ = phase_tx.send(Phase::Stop);
    // Sockets close and deposit their figures; a wedged one must not hold the report back.
    let joined = timeout(Duration::from_secs(15), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        tasks.abort_all();
    }
    let _ = events.send(Event::Report(Box::new(report(&sh, sockets.len() as u64))));
}

/// Runs the phases; returns true when stopped early by the parent.
async fn drive(
    sh: &Arc<Shared>,
    sockets: &[u64],
    tasks: &mut JoinSet<()>,
    ctl: &mut mpsc::UnboundedReceiver<Ctl>,
    events: &mpsc::UnboundedSender<Event>,
    phase_tx: &watch::Sender<Phase>,
) -> bool {
    let plan = &sh.plan;
    let total = sockets.len() as u64;
    let rate = plan.opts.connect_rate / plan.procs as f64;
    let tick = Duration::from_millis(10);
    let mut early_expected: Option<Vec<Vec<u64>>> = None;

    // Ramp: start socket k at k / rate seconds.
    let start = Instant::now();
    let mut started = 0usize;
    loop {
        let due = if rate > 0.0 {
            ((start.elapsed().as_secs_f64() * rate) as usize + 1).min(sockets.len())
        } else {
            sockets.len()
        };
        while started < due {
            let s = sockets[started];
            let sh2 = sh.clone();
            if plan.kind.is_raw() {
                tasks.spawn(raw_socket(sh2, s));
            } else {
                tasks.spawn(protocol_socket(sh2, s));
            }
            started += 1;
        }
        if started == sockets.len() && sh.live.settled.load(Relaxed) >= total {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            m = ctl.recv() => match m {
                Some(Ctl::Go) => {}
                Some(Ctl::Expected(e)) => early_expected = Some(e),
                Some(Ctl::ExpectedUsers(u)) => set_users(sh, u),
                Some(Ctl::Stop) | None => return true,
            }
        }
    }
    let _ = events.send(Event::Ready);

    // Wait for the parent's go (every worker is connected).
    while early_expected.is_none() {
        match ctl.recv().await {
            Some(Ctl::Go) => break,
            Some(Ctl::Expected(e)) => early_expected = Some(e),
            Some(Ctl::ExpectedUsers(u)) => set_users(sh, u),
            Some(Ctl::Stop) | None => return true,
        }
    }
    let _ = phase_tx.send(Phase::Go);

    // Expected counts: from the parent's publisher, or counted here for socket-driven traffic.
    let expected = if let Some(e) = early_expected {
        e
    } else if plan.kind.sockets_send() {
        let senders = sh.live.settled.load(Relaxed) - sh.live.failed.load(Relaxed);
        loop {
            if sh.senders_done.load(Relaxed) >= senders {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                m = ctl.recv() => match m {
                    Some(Ctl::Stop) | None => return true,
                    _ => {}
                }
            }
        }
        chat_expected(sh)
    } else {
        loop {
            match ctl.recv().await {
                Some(Ctl::Expected(e)) => break e,
                Some(Ctl::ExpectedUsers(u)) => set_users(sh, u),
                Some(Ctl::Go) => {}
                Some(Ctl::Stop) | None => return true,
            }
        }
    };
    let _ = sh.expected.set(Arc::new(expected));
    let _ = phase_tx.send(Phase::Drain);

    // Drain: until every live socket has everything it expects, or --drain runs out.
    let deadline = Instant::now() + plan.opts.drain;
    let quiet_mode = plan.kind == Kind::Raw && !plan.opts.echo;
    let mut last_seen = (sh.live.deliveries.load(Relaxed), Instant::now());
    while Instant::now() < deadline {
        if sh.pending.load(Relaxed) == 0 && !quiet_mode {
            break;
        }
        if quiet_mode {
            // Without --echo nothing says how many replies will come: stop after 1 s of quiet.
            let d = sh.live.deliveries.load(Relaxed);
            if d != last_seen.0 {
                last_seen = (d, Instant::now());
            } else if last_seen.1.elapsed() >= Duration::from_secs(1) {
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            m = ctl.recv() => match m {
                Some(Ctl::Stop) | None => return true,
                _ => {}
            }
        }
    }
    if plan.kind == Kind::Million {
        // The sockets stay up (and fail over when the parent drains a node) until Stop.
        let _ = events.send(Event::Delivered);
        loop {
            match ctl.recv().await {
                Some(Ctl::Stop) | None => return false,
                _ => {}
            }
        }
    }
    false
}

fn set_users(sh: &Shared, users: Vec<(u64, u64)>) {
    let _ = sh.expected_users.set(users.into_iter().collect());
}

/// Chat: everyone in a room expects what every member of the room sent.
fn chat_expected(sh: &Shared) -> Vec<Vec<u64>> {
    let k = sh.plan.room_size as usize;
    sh.chat_sent
        .chunks(k.max(1))
        .map(|room| room.iter().map(|a| a.load(Relaxed)).collect())
        .collect()
}

fn report(sh: &Shared, sockets: u64) -> WorkerReport {
    let t = sh.totals.lock().expect("totals lock");
    let live = sh.live.snapshot();
    WorkerReport {
        sockets,
        connected: live.settled - live.failed,
        failures: sh.failures.snapshot(),
        disconnects: sh.disconnects.snapshot(),
        hist_upgrade: stats::encode_hist(&sh.upgrade.lock().expect("hist")),
        hist_ready: stats::encode_hist(&sh.ready.lock().expect("hist")),
        hist_latency: stats::encode_hist(&sh.latency.merged()),
        hist_reconnect: stats::encode_hist(&sh.reconnect.lock().expect("hist")),
        first_attempt_ns: match sh.first_attempt_ns.load(Relaxed) {
            u64::MAX => 0,
            v => v,
        },
        last_connected_ns: sh.last_connected_ns.load(Relaxed),
        last_delivery_ns: sh.last_delivery_ns.load(Relaxed),
        subscribers: t.subscribers,
        deliveries: t.deliveries,
        unique: t.unique,
        duplicates: t.duplicates,
        foreign: t.foreign,
        expected: t.expected,
        lost: t.lost,
        subscribers_with_loss: t.subscribers_with_loss,
        sent: t.sent,
        sent_ok: t.sent_ok,
        send_errors: sh.send_errors.snapshot(),
        received_raw: t.received_raw,
        bytes_in: t.bytes_in,
        reconnects: live.reconnects,
        recovered: t.recovered,
        recover_failed: t.recover_failed,
        cpu_s: 0.0,
        retries: live.retries,
        hist_latency_notify: stats::encode_hist(&sh.latency_notify.merged()),
        expected_notify: t.expected_notify,
        deliveries_notify: t.expected_notify - t.lost_notify,
        lost_notify: t.lost_notify,
        drained: live.drained,
        failovers: live.failovers,
        failover_failed: live.failover_failed,
        hist_failover: stats::encode_hist(&sh.failover.lock().expect("hist")),
        last_failover_ns: sh.last_failover_ns.load(Relaxed),
    }
}

/// One subscriber's bookkeeping.
struct Sub {
    s: u64,
    /// The node it is (or was last) connected to.
    node: u32,
    channel: usize,
    member: u64,
    tracker: SeqTracker,
    deliveries: u64,
    foreign: u64,
    /// Last publication offset seen and the stream epoch, for `recover`.
    offset: u64,
    epoch: Option<String>,
    recovered: u64,
    recover_failed: u64,
    sent: u64,
    sent_ok: u64,
    /// Counted off `pending` already.
    finished: bool,
}

impl Sub {
    fn new(plan: &Plan, s: u64) -> Sub {
        Sub {
            s,
            node: plan.node_of(s) as u32,
            channel: plan.channel_of(s),
            member: plan.member_of(s),
            tracker: SeqTracker::default(),
            deliveries: 0,
            foreign: 0,
            offset: 0,
            epoch: None,
            recovered: 0,
            recover_failed: 0,
            sent: 0,
            sent_ok: 0,
            finished: false,
        }
    }

    /// Records one publication; `live` = arrived as a push (latency counts), not a replay.
    fn on_publication(
        &mut self,
        sh: &Shared,
        offset: Option<u64>,
        marker: Option<Marker>,
        live: bool,
    ) {
        if let Some(o) = offset {
            self.offset = self.offset.max(o);
        }
        let Some(m) = marker.filter(|m| m.run == sh.plan.run_id) else {
            self.foreign += 1;
            return;
        };
        self.deliveries += 1;
        sh.live.deliveries.fetch_add(1, Relaxed);
        if self.tracker.record(m.src, m.seq) == Seen::OutOfRange {
            self.foreign += 1;
        }
        if live {
            let now = stats::now_ns();
            let hist = if sh.plan.kind == Kind::Million && m.src == NOTIFY_SRC {
                &sh.latency_notify
            } else {
                &sh.latency
            };
            hist.record(self.s, now.saturating_sub(m.ts) / 1000);
            stats::fetch_max(&sh.last_delivery_ns, now);
        } else {
            self.recovered += 1;
        }
    }

    fn expected_total(&self, sh: &Shared, expected: &[Vec<u64>]) -> u64 {
        expected.get(self.channel).map_or(0, |v| v.iter().sum()) + self.expected_notify(sh)
    }

    /// million: notifications published to this socket's user.
    fn expected_notify(&self, sh: &Shared) -> u64 {
        sh.expected_users
            .get()
            .and_then(|m| m.get(&self.s))
            .copied()
            .unwrap_or(0)
    }

    fn has_everything(&self, sh: &Shared) -> bool {
        match sh.expected.get() {
            Some(e) => self.tracker.unique() >= self.expected_total(sh, e),
            None => false,
        }
    }

    fn finish(&mut self, sh: &Shared) {
        if !self.finished {
            self.finished = true;
            sh.pending.fetch_sub(1, Relaxed);
        }
    }

    /// Adds this subscriber's final figures to the worker totals (needs the expected counts).
    fn deposit(&self, sh: &Shared) {
        let (expected, lost) = match sh.expected.get() {
            Some(e) => {
                let per_src = e.get(self.channel).cloned().unwrap_or_default();
                let lost: u64 = per_src
                    .iter()
                    .enumerate()
                    .map(|(src, &n)| self.tracker.missing(src as u64, n))
                    .sum();
                (per_src.iter().sum(), lost)
            }
            None => (0, 0),
        };
        let notify = self.expected_notify(sh);
        let lost_notify = self.tracker.missing(NOTIFY_SRC, notify);
        let (expected, lost) = (expected + notify, lost + lost_notify);
        let mut t = sh.totals.lock().expect("totals lock");
        t.expected_notify += notify;
        t.lost_notify += lost_notify;
        t.subscribers += 1;
        t.deliveries += self.deliveries;
        t.unique += self.tracker.unique();
        t.duplicates += self.tracker.duplicates();
        t.foreign += self.foreign;
        t.expected += expected;
        t.lost += lost;
        t.subscribers_with_loss += (lost > 0) as u64;
        t.sent += self.sent;
        t.sent_ok += self.sent_ok;
        t.recovered += self.recovered;
        t.recover_failed += self.recover_failed;
    }
}

/// Why a socket could not be established or stopped; the key failures are grouped by.
type Reason = String;

/// million: the source number notifications carry (the broadcast is source 0).
pub const NOTIFY_SRC: u64 = 1;

/// A failed attempt, and the delay the node asked for when it shed the upgrade (503 +
/// Retry-After): such an attempt is tried again, not counted as a failure.
struct Refusal {
    reason: Reason,
    retry_after: Option<Duration>,
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Self {
        Refusal {
            reason,
            retry_after: None,
        }
    }
}

impl From<ws::ConnectError> for Refusal {
    fn from(e: ws::ConnectError) -> Self {
        Refusal {
            reason: e.reason(),
            retry_after: e.retry_after(),
        }
    }
}

/// Runs `attempt` under --handshake-timeout; a refusal with Retry-After is retried (at most
/// --retries times, after `retry_delay`) and counted in `live.retries`.
macro_rules! with_retries {
    ($sh:expr, $attempt:expr) => {{
        let mut tries = 0u32;
        loop {
            match timeout($sh.plan.opts.handshake_timeout, $attempt).await {
                Err(_) => break Err::<_, Reason>("handshake_timeout".into()),
                Ok(Ok(v)) => break Ok(v),
                Ok(Err(Refusal {
                    retry_after: Some(d),
                    ..
                })) if tries < $sh.plan.opts.retries => {
                    tries += 1;
                    $sh.live.retries.fetch_add(1, Relaxed);
                    tokio::time::sleep(retry_delay(d, rand::random())).await;
                }
                Ok(Err(r)) => break Err(r.reason),
            }
        }
    }};
}

fn elapsed_us(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

/// Upgrade, authenticate, subscribe (recovering from `sub.offset`/`sub.epoch` when `recover`).
async fn establish(sh: &Shared, sub: &mut Sub, recover: bool) -> Result<(Conn, u64, u64), Refusal> {
    let plan = &sh.plan;
    let s = sub.s;
    let t0 = Instant::now();
    if plan.opts.pusher {
        // Pusher: upgrade on /app/KEY, pusher:connection_established, pusher:subscribe →
        // pusher_internal:subscription_succeeded. No recovery in this protocol.
        let addr = plan.addrs[sub.node as usize];
        let mut conn =
            ws::connect(addr, plan.src_of(s), &plan.url.authority, &plan.url.path).await?;
        let upgrade_us = elapsed_us(t0);
        wait_for(sh, &mut conn, sub, None, "connect").await?;
        let channel = &plan.channels[sub.channel];
        send(&mut conn, &proto::pusher_subscribe(channel), "subscribe").await?;
        wait_for(
            sh,
            &mut conn,
            sub,
            Some(proto::PUSHER_SUBSCRIBE_ID),
            "subscribe",
        )
        .await?;
        return Ok((conn, upgrade_us, elapsed_us(t0)));
    }
    let token = plan.minter.as_ref().map(|m| m.token(&plan.user_of(s)));
    let path = match (&token, plan.opts.token_in_url) {
        (Some(t), true) => plan.url.path_with_query("token", t),
        _ => plan.url.path.clone(),
    };
    let addr = plan.addrs[sub.node as usize];
    let mut conn = ws::connect(addr, plan.src_of(s), &plan.url.authority, &path).await?;
    let upgrade_us = elapsed_us(t0);
    if plan.opts.token_in_url && token.is_some() {
        wait_for(sh, &mut conn, sub, None, "connect").await?;
    } else {
        send(
            &mut conn,
            &proto::connect_cmd(1, token.as_deref()),
            "connect",
        )
        .await?;
        wait_for(sh, &mut conn, sub, Some(1), "connect").await?;
    }
    let channel = &plan.channels[sub.channel];
    let epoch = sub.epoch.clone();
    let rec = match (recover, &epoch) {
        (true, Some(e)) => Some((sub.offset, e.as_str())),
        _ => None,
    };
    send(
        &mut conn,
        &proto::subscribe_cmd(2, channel, rec),
        "subscribe",
    )
    .await?;
    let result = match wait_for(sh, &mut conn, sub, Some(2), "subscribe").await {
        Err(r) if rec.is_some() && r == "subscribe_error_112" => {
            // The position is gone: count it and start over from the present.
            sub.recover_failed += 1;
            send(
                &mut conn,
                &proto::subscribe_cmd(3, channel, None),
                "subscribe",
            )
            .await?;
            wait_for(sh, &mut conn, sub, Some(3), "subscribe").await?
        }
        r => r?,
    };
    let sr = proto::subscribe_result(&result);
    if rec.is_some() && sr.recovered == Some(false) {
        sub.recover_failed += 1;
    }
    for (offset, marker) in sr.publications {
        sub.on_publication(sh, offset, marker, false);
    }
    if sr.epoch.is_some() {
        sub.epoch = sr.epoch;
    }
    if let Some(o) = sr.offset {
        sub.offset = sub.offset.max(o);
    }
    // The personal channel: nothing is published to it, it is there for what it costs the node.
    if let Some(extra) = plan.extra_channel_of(s) {
        send(
            &mut conn,
            &proto::subscribe_cmd(4, &extra, None),
            "subscribe_user",
        )
        .await?;
        wait_for(sh, &mut conn, sub, Some(4), "subscribe_user").await?;
    }
    Ok((conn, upgrade_us, elapsed_us(t0)))
}

async fn send(conn: &mut Conn, text: &str, stage: &str) -> Result<(), Reason> {
    conn.send_text(text.as_bytes())
        .await
        .map_err(|e| format!("{stage}_{}", ws::io_reason(&e)))
}

/// Reads until the reply to `id` (or, with `None`, the `connected` push), recording any
/// publication that arrives meanwhile.
async fn wait_for(
    sh: &Shared,
    conn: &mut Conn,
    sub: &mut Sub,
    id: Option<u64>,
    stage: &str,
) -> Result<serde_json::Value, Reason> {
    loop {
        match conn.recv().await {
            Ok(Message::Text(b)) => match sh.plan.parse(&b) {
                Incoming::Reply { id: rid, outcome } if Some(rid) == id => {
                    return outcome.map_err(|code| format!("{stage}_error_{code}"));
                }
                Incoming::Push(PushKind::Connected) if id.is_none() => {
                    return Ok(serde_json::Value::Null)
                }
                Incoming::Push(PushKind::Ping) => {
                    let _ = conn.send_text(proto::PUSHER_PONG.as_bytes()).await;
                }
                Incoming::Push(PushKind::Error(code)) => {
                    return Err(format!("{stage}_pusher_error_{code}"))
                }
                Incoming::Publication { offset, marker } => {
                    sub.on_publication(sh, offset, marker, true)
                }
                _ => {}
            },
            Ok(Message::Ping(p)) => {
                let _ = conn.send(OP_PONG, &p).await;
            }
            Ok(Message::Close(code)) => {
                return Err(format!(
                    "{stage}_closed_{}",
                    code.map_or("none".into(), |c| c.to_string())
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(format!("{stage}_{}", ws::io_reason(&e))),
        }
    }
}

/// The life of one protocol socket.
async fn protocol_socket(sh: Arc<Shared>, s: u64) {
    let plan = sh.plan.clone();
    let mut phase = sh.phase.clone();
    let mut sub = Sub::new(&plan, s);
    stats::fetch_min(&sh.first_attempt_ns, stats::now_ns());
    // Boxed: an idle socket's task then keeps no room for the handshake's state.
    let est = Box::pin(establish_retrying(&sh, &mut sub, false)).await;
    let mut conn = match est {
        Ok((conn, up, ready)) => {
            stats::record(&mut sh.upgrade.lock().expect("hist"), up);
            stats::record(&mut sh.ready.lock().expect("hist"), ready);
            conn
        }
        Err(reason) => return failed(&sh, reason),
    };
    sh.pending.fetch_add(1, Relaxed);
    sh.live.open.fetch_add(1, Relaxed);
    stats::fetch_max(&sh.last_connected_ns, stats::now_ns());
    sh.live.settled.fetch_add(1, Relaxed);

    let chat = plan.kind == Kind::Chat;
    let churn = plan.kind == Kind::Churn;
    let mut sender_done = !chat;
    let mut next_id: u64 = 10;
    let mut next_send: Option<Instant> = None;
    let mut churn_at: Option<Instant> = None;
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut alive = true;
    let mut failover_due = false;

    loop {
        let cur = *phase.borrow_and_update();
        if cur == Phase::Stop {
            break;
        }
        if cur >= Phase::Drain && sub.has_everything(&sh) {
            sub.finish(&sh);
        }
        // Chat: every member publishes its frames once the run goes.
        if chat && cur >= Phase::Go && !sender_done {
            if sub.sent >= plan.socket_messages {
                sender_done = true;
                sh.senders_done.fetch_add(1, Relaxed);
            } else if next_send.is_none() {
                // Spread members over the interval so rooms do not publish in lockstep.
                let jitter = plan
                    .socket_interval
                    .unwrap_or_default()
                    .mul_f64(rand::random::<f64>());
                next_send = Some(Instant::now() + jitter);
            }
        }
        if churn && cur == Phase::Go && churn_at.is_none() {
            churn_at = Some(Instant::now() + churn_lifetime(&plan));
        }
        let wake = [
            next_send.filter(|_| !sender_done),
            churn_at.filter(|_| cur == Phase::Go),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(w) = wake {
            if timer.deadline() != w.into() {
                timer.as_mut().reset(w.into());
            }
        }
        tokio::select! {
            biased;
            r = phase.changed() => if r.is_err() { break },
            m = conn.recv() => match m {
                Ok(Message::Text(b)) => match plan.parse(&b) {
                    Incoming::Publication { offset, marker } => sub.on_publication(&sh, offset, marker, true),
                    Incoming::Push(PushKind::Ping) => {
                        if let Err(e) = conn.send_text(proto::PUSHER_PONG.as_bytes()).await {
                            alive = false;
                            sh.disconnects.add(ws::io_reason(&e));
                        }
                    }
                    Incoming::Push(PushKind::Error(code)) => sh.send_errors.add(format!("pusher_error_{code}")),
                    Incoming::Reply { outcome, .. } => match outcome {
                        Ok(_) => sub.sent_ok += 1,
                        Err(code) => sh.send_errors.add(format!("publish_error_{code}")),
                    },
                    Incoming::Push(PushKind::Unsubscribed) => sh.disconnects.add("server_unsubscribe"),
                    Incoming::Push(_) => {}
                },
                Ok(Message::Ping(p)) => {
                    if conn.send(OP_PONG, &p).await.is_err() {
                        alive = false;
                        sh.disconnects.add("pong_write_failed");
                    }
                }
                // A draining node: come back on another one (below, once this one is closed).
                Ok(Message::Close(Some(CLOSE_SHUTDOWN))) if plan.kind == Kind::Million => failover_due = true,
                Ok(Message::Close(code)) => {
                    alive = false;
                    sh.disconnects.add(format!("close_{}", code.map_or("none".into(), |c| c.to_string())));
                }
                Ok(_) => {}
                Err(e) => {
                    alive = false;
                    sh.disconnects.add(ws::io_reason(&e));
                }
            },
            _ = &mut timer, if wake.is_some() => {
                let now = Instant::now();
                if let Some(t) = next_send.filter(|t| *t <= now && !sender_done) {
                    let marker = Marker { run: plan.run_id, src: sub.member, seq: sub.sent, ts: stats::now_ns() };
                    let data = proto::marker_data(&marker, plan.pad);
                    let cmd = proto::publish_cmd(next_id, &plan.channels[sub.channel], &data);
                    next_id += 1;
                    // Counted before the write: a frame that may have reached the node is expected.
                    sub.sent += 1;
                    let slot = sub.channel * plan.room_size as usize + sub.member as usize;
                    sh.chat_sent[slot].fetch_add(1, Relaxed);
                    sh.live.sent.fetch_add(1, Relaxed);
                    if let Err(e) = conn.send_text(cmd.as_bytes()).await {
                        alive = false;
                        sh.disconnects.add(ws::io_reason(&e));
                    }
                    next_send = Some(t + plan.socket_interval.unwrap_or_default());
                }
                if churn_at.is_some_and(|t| t <= now) && cur == Phase::Go {
                    churn_at = None;
                    match Box::pin(reconnect(&sh, &mut sub, &mut conn)).await {
                        Ok(()) => {}
                        Err(reason) => {
                            sh.failures.add(format!("reconnect_{reason}"));
                            alive = false;
                            // `reconnect` already took the socket off the open count.
                            sh.live.open.fetch_add(1, Relaxed);
                        }
                    }
                }
            }
        }
        if failover_due {
            failover_due = false;
            // The old descriptor goes before the new one opens: a worker near its descriptor
            // limit fails over hundreds of sockets at once.
            conn.close(1000).await;
            drop(conn);
            // Boxed, like the first handshake.
            match Box::pin(failover(&sh, &mut sub)).await {
                Ok(c) => conn = c,
                Err(reason) => {
                    sh.disconnects.add(format!("failover_{reason}"));
                    return socket_done(&sh, sub, phase, sender_done).await;
                }
            }
        }
        if !alive {
            break;
        }
    }
    if alive {
        conn.close(1000).await;
    }
    sh.live.open.fetch_sub(1, Relaxed);
    drop(conn);
    socket_done(&sh, sub, phase, sender_done).await;
}

/// A protocol socket's end (its connection already closed and off the open count).
async fn socket_done(
    sh: &Shared,
    mut sub: Sub,
    mut phase: watch::Receiver<Phase>,
    sender_done: bool,
) {
    if !sender_done {
        sh.senders_done.fetch_add(1, Relaxed);
    }
    sub.finish(sh);
    // A socket that died early still needs the expected counts to know what it lost.
    while *phase.borrow_and_update() < Phase::Drain {
        if phase.changed().await.is_err() {
            break;
        }
    }
    sub.deposit(sh);
}

/// Exponential lifetimes with mean N / churn-rate give churn-rate reconnects per second overall.
fn churn_lifetime(plan: &Plan) -> Duration {
    let mean = plan.sockets as f64 / plan.opts.churn_rate.max(0.001);
    let u: f64 = rand::thread_rng().gen_range(f64::EPSILON..1.0);
    Duration::from_secs_f64((-u.ln() * mean).min(3600.0))
}

/// Closes the socket and comes back with `recover` from the last offset seen.
async fn reconnect(sh: &Shared, sub: &mut Sub, conn: &mut Conn) -> Result<(), Reason> {
    conn.close(1000).await;
    sh.live.open.fetch_sub(1, Relaxed);
    sh.live.reconnects.fetch_add(1, Relaxed);
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let t0 = Instant::now();
        match establish_retrying(sh, sub, true).await {
            Ok((c, _, _)) => {
                *conn = c;
                stats::record(&mut sh.reconnect.lock().expect("hist"), elapsed_us(t0));
                sh.live.open.fetch_add(1, Relaxed);
                return Ok(());
            }
            Err(r) => last = r,
        }
    }
    Err(last)
}

/// `establish` under --handshake-timeout, retrying sheds (503 + Retry-After).
async fn establish_retrying(
    sh: &Shared,
    sub: &mut Sub,
    recover: bool,
) -> Result<(Conn, u64, u64), Reason> {
    with_retries!(sh, establish(sh, sub, recover))
}

/// million: the node closed the socket with 4010 (draining; the caller closed its side). Connect,
/// authenticate and subscribe on another node, chosen at random so the drained node's sockets
/// spread evenly; a node that refuses is followed by another, at most `FAILOVER_ATTEMPTS`.
async fn failover(sh: &Shared, sub: &mut Sub) -> Result<Conn, Reason> {
    let t0 = Instant::now();
    sh.live.open.fetch_sub(1, Relaxed);
    sh.live.drained.fetch_add(1, Relaxed);
    let nodes = sh.plan.addrs.len() as u64;
    let from = u64::from(sub.node);
    let mut last = Reason::from("no_other_node");
    for _ in 0..FAILOVER_ATTEMPTS {
        if nodes < 2 {
            break;
        }
        sub.node = ((from + 1 + rand::random::<u64>() % (nodes - 1)) % nodes) as u32;
        match establish_retrying(sh, sub, false).await {
            Ok((c, _, _)) => {
                stats::record(&mut sh.failover.lock().expect("hist"), elapsed_us(t0));
                stats::fetch_max(&sh.last_failover_ns, stats::now_ns());
                sh.live.failovers.fetch_add(1, Relaxed);
                sh.live.open.fetch_add(1, Relaxed);
                return Ok(c);
            }
            Err(r) => last = r,
        }
    }
    sh.live.failover_failed.fetch_add(1, Relaxed);
    Err(last)
}

fn failed(sh: &Shared, reason: Reason) {
    sh.failures.add(reason);
    sh.live.failed.fetch_add(1, Relaxed);
    sh.live.settled.fetch_add(1, Relaxed);
}

/// A `--raw` socket: templated frames out, whatever comes back counted.
async fn raw_socket(sh: Arc<Shared>, s: u64) {
    let plan = sh.plan.clone();
    let mut phase = sh.phase.clone();
    stats::fetch_min(&sh.first_attempt_ns, stats::now_ns());
    let mut t0 = Instant::now();
    let connect = with_retries!(sh, async {
        t0 = Instant::now();
        ws::connect(
            plan.addr_of(s),
            plan.src_of(s),
            &plan.url.authority,
            &plan.url.path,
        )
        .await
        .map_err(Refusal::from)
    });
    let mut conn = match connect {
        Ok(c) => c,
        Err(reason) => return failed(&sh, reason),
    };
    let us = elapsed_us(t0);
    stats::record(&mut sh.upgrade.lock().expect("hist"), us);
    stats::record(&mut sh.ready.lock().expect("hist"), us);
    sh.pending.fetch_add(1, Relaxed);
    sh.live.open.fetch_add(1, Relaxed);
    stats::fetch_max(&sh.last_connected_ns, stats::now_ns());
    sh.live.settled.fetch_add(1, Relaxed);

    let sends = plan.kind == Kind::Raw;
    let echo = plan.opts.echo;
    let mut sent: u64 = 0;
    let (mut received, mut bytes_in): (u64, u64) = (0, 0);
    let mut outstanding: VecDeque<Instant> = VecDeque::new();
    let mut sender_done = !sends;
    let mut next_send: Option<Instant> = None;
    let mut finished = false;
    let mut alive = true;
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    loop {
        let cur = *phase.borrow_and_update();
        if cur == Phase::Stop {
            break;
        }
        if sends && cur >= Phase::Go && !sender_done {
            if sent >= plan.socket_messages {
                sender_done = true;
                sh.senders_done.fetch_add(1, Relaxed);
            } else if next_send.is_none() {
                let jitter = plan
                    .socket_interval
                    .unwrap_or_default()
                    .mul_f64(rand::random::<f64>());
                next_send = Some(Instant::now() + jitter);
            }
        }
        let complete = sender_done && (!echo || received >= sent);
        if cur >= Phase::Drain && complete && !finished {
            finished = true;
            sh.pending.fetch_sub(1, Relaxed);
        }
        // Echo without a rate: ping-pong, the next frame goes when the last one came back.
        let may_send =
            !sender_done && (plan.socket_interval.is_some() || !echo || outstanding.is_empty());
        let wake = next_send.filter(|_| may_send);
        if let Some(w) = wake {
            if timer.deadline() != w.into() {
                timer.as_mut().reset(w.into());
            }
        }
        tokio::select! {
            biased;
            r = phase.changed() => if r.is_err() { break },
            _ = &mut timer, if wake.is_some() => {
                let frame = plan.opts.template
                    .replace("{conn}", &s.to_string())
                    .replace("{seq}", &sent.to_string())
                    .replace("{ts}", &stats::now_ns().to_string())
                    .replace("{run}", &plan.run_id.to_string());
                sent += 1;
                sh.live.sent.fetch_add(1, Relaxed);
                if echo {
                    outstanding.push_back(Instant::now());
                }
                if let Err(e) = conn.send_text(frame.as_bytes()).await {
                    alive = false;
                    sh.disconnects.add(ws::io_reason(&e));
                }
                let base = next_send.unwrap_or_else(Instant::now);
                next_send = Some(match plan.socket_interval {
                    Some(i) => base + i,
                    None => Instant::now(),
                });
            }
            m = conn.recv() => match m {
                Ok(Message::Text(b)) | Ok(Message::Binary(b)) => {
                    received += 1;
                    bytes_in += b.len() as u64;
                    sh.live.deliveries.fetch_add(1, Relaxed);
                    stats::fetch_max(&sh.last_delivery_ns, stats::now_ns());
                    if let Some(t) = outstanding.pop_front() {
                        sh.latency.record(s, elapsed_us(t));
                    }
                }
                Ok(Message::Ping(p)) => {
                    let _ = conn.send(OP_PONG, &p).await;
                }
                Ok(Message::Close(code)) => {
                    alive = false;
                    sh.disconnects.add(format!("close_{}", code.map_or("none".into(), |c| c.to_string())));
                }
                Ok(Message::Pong) => {}
                Err(e) => {
                    alive = false;
                    sh.disconnects.add(ws::io_reason(&e));
                }
            },
        }
        if !alive {
            break;
        }
    }
    if alive {
        conn.close(1000).await;
    }
    sh.live.open.fetch_sub(1, Relaxed);
    drop(conn);
    if !sender_done {
        sh.senders_done.fetch_add(1, Relaxed);
    }
    if !finished {
        sh.pending.fetch_sub(1, Relaxed);
    }
    let mut t = sh.totals.lock().expect("totals lock");
    t.subscribers += 1;
    t.sent += sent;
    t.received_raw += received;
    t.deliveries += received;
    t.bytes_in += bytes_in;
    if echo {
        let lost = sent.saturating_sub(received);
        t.expected += sent;
        t.unique += received.min(sent);
        t.lost += lost;
        t.subscribers_with_loss += (lost > 0) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_honours_the_ask_with_jitter_and_bounds() {
        let s = Duration::from_secs;
        assert_eq!(retry_delay(s(1), 0.0), s(1));
        assert_eq!(retry_delay(s(1), 0.5), Duration::from_millis(1500));
        assert_eq!(retry_delay(s(1), 1.0), s(2));
        // Jitter outside 0..1 is clamped; never earlier than asked.
        assert_eq!(retry_delay(s(1), 7.0), s(2));
        assert_eq!(retry_delay(s(1), -1.0), s(1));
        // "Retry-After: 0" or a past date: a short pause, not a hot loop.
        assert_eq!(retry_delay(Duration::ZERO, 0.0), Duration::from_millis(100));
        // Bounded whatever the node says.
        assert_eq!(retry_delay(s(3600), 0.3), s(30));
        assert_eq!(retry_delay(s(20), 1.0), s(30));
    }
}
