//! Issue 11 item 3: the chaos suite. A real 6-node Redis Cluster (`tests/common/redis.rs`), 2–3
//! real ferrocast nodes, steady API publication streams on many channels, and WebSocket clients
//! that recover the documented way (docs/protocol.md §11): each tracks `(offset, epoch)` per
//! channel, resubscribes with `recover` after a reconnect, after an `unsubscribe` push with
//! `resubscribe: true` and after a live offset that doesn't follow; `recovered: false` is the
//! explicit "not recovered" signal, after which the client reloads the channel from `history`.
//!
//! Faults: nodes started before / with / after the cluster, a master SIGKILLed, a master
//! SIGSTOPped then continued, `CLUSTER FAILOVER` by hand, the busy slots resharded with
//! `redis-cli --cluster reshard` during traffic, every Redis node restarted one by one, all of
//! Redis down then back, a ferrocast node SIGKILLed while its clients reconnect to the others.
//!
//! The invariant, per client and channel: every acknowledged publication (API answer 200) is
//! delivered exactly once and in order, or it is lost *and* the client got an explicit signal
//! (`recovered: false`, `truncated`, an `unsubscribe` push with `resubscribe`) between the last
//! publication it had and the next one — never a silent gap, never a duplicate. `/health/ready`
//! is red while Redis is gone and green within 5 s after the cluster is healthy again.
//!
//! All tests here are `#[ignore]`: `make chaos-short` (part of `make test`, debug binary, about a
//! minute) runs `chaos_short`; `make chaos` runs `chaos_full` on release binaries and writes the
//! table to `target/chaos/results.md` (copied into docs/benchmarks.md by hand).

mod common;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis::Cluster;
use common::{bin, config_text, free_port, http, metric_in, temp_path, token};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

// ---- Redis helpers (a SIGSTOPped node never answers: every call has a timeout) -------------------

fn rcli(port: u16, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["3", "redis-cli", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ports of the running nodes that answer (not stopped, not killed).
fn answering(c: &Cluster, stopped: &HashSet<u16>) -> Vec<u16> {
    c.nodes
        .iter()
        .filter(|n| n.is_running() && !stopped.contains(&n.port))
        .map(|n| n.port)
        .collect()
}

/// Every answering node reports `cluster_state:ok`.
fn cluster_ok(c: &Cluster, stopped: &HashSet<u16>) -> bool {
    let ports = answering(c, stopped);
    !ports.is_empty()
        && ports
            .iter()
            .all(|p| rcli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
}

/// `CLUSTER NODES` of an answering node: (id, port, flags, master id, slots).
fn cluster_nodes(
    c: &Cluster,
    stopped: &HashSet<u16>,
) -> Vec<(String, u16, String, String, String)> {
    for p in answering(c, stopped) {
        let text = rcli(p, &["CLUSTER", "NODES"]);
        let rows: Vec<_> = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() < 8 {
                    return None;
                }
                let port = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
                Some((
                    f[0].to_string(),
                    port,
                    f[2].to_string(),
                    f[3].to_string(),
                    f[8..].join(" "),
                ))
            })
            .collect();
        if !rows.is_empty() {
            return rows;
        }
    }
    Vec::new()
}

/// The port of the healthy master serving `slot`.
fn master_of_slot(c: &Cluster, stopped: &HashSet<u16>, slot: u16) -> Option<u16> {
    for (_, port, flags, _, slots) in cluster_nodes(c, stopped) {
        if !flags.contains("master") || flags.contains("fail") {
            continue;
        }
        for range in slots.split_whitespace() {
            let (a, b) = match range.split_once('-') {
                Some((a, b)) => (a.parse::<u16>().ok(), b.parse::<u16>().ok()),
                None => (range.parse().ok(), range.parse().ok()),
            };
            if let (Some(a), Some(b)) = (a, b) {
                if a <= slot && slot <= b {
                    return Some(port);
                }
            }
        }
    }
    None
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A replica has finished its sync (or the node is a master).
fn synced(port: u16) -> bool {
    let info = rcli(port, &["INFO", "replication"]);
    info.contains("role:master") || info.contains("master_link_status:up")
}

fn slot_of(channel: &str) -> u16 {
    fred::util::redis_keyslot(channel.as_bytes())
}

// ---- ferrocast nodes ----------------------------------------------------------------------------

/// A ferrocast node started without waiting for readiness (Redis may not exist yet).
struct Node {
    child: Option<Child>,
    public: u16,
    admin: u16,
    config: PathBuf,
    log: PathBuf,
}

fn node_toml(urls: &[String]) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!(
        r#"
[broker]
kind = "redis-cluster"
urls = [{}]
position_check_interval = "1s"

[namespaces.feed]
publish = false
presence = false
join_leave = false
history_size = 1000
history_ttl = "1h"
"#,
        urls.join(", ")
    )
}

impl Node {
    fn spawn(urls: &[String]) -> Node {
        for _ in 0..3 {
            let (public, admin) = loop {
                let (a, b) = (free_port(), free_port());
                if a != b {
                    break (a, b);
                }
            };
            let config = temp_path("chaos-config", "toml");
            std::fs::write(&config, config_text(public, admin, &node_toml(urls))).unwrap();
            let log = temp_path("chaos-node", "log");
            let f = std::fs::File::create(&log).unwrap();
            let child = Command::new(bin())
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or("info".into()),
                )
                .stdin(Stdio::null())
                .stdout(f.try_clone().unwrap())
                .stderr(f)
                .spawn()
                .expect("spawn ferrocast");
            let mut node = Node {
                child: Some(child),
                public,
                admin,
                config,
                log,
            };
            // Up = the admin listener answers /health/live.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(Ok(Some(_))) = node.child.as_mut().map(|c| c.try_wait()) {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok() {
                    return node;
                }
                assert!(Instant::now() < deadline, "ferrocast did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            assert!(text.contains("in use"), "ferrocast exited: {text}");
        }
        panic!("ferrocast: no free ports");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.config);
        if std::env::var_os("CHAOS_KEEP_LOGS").is_some() {
            let dir = common::repo_path("target/chaos");
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(&self.log, dir.join(format!("node-{}.log", self.public)));
        }
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- ferrocast {} log tail ---", self.public);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

// ---- clients ------------------------------------------------------------------------------------

/// What a client saw on one channel, in order. (Some fields are only read through `Debug`,
/// in the events printed around a failure.)
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Ev {
    /// A live or recovered publication (its `data.n`).
    Deliver(u64),
    /// A publication read back from history after a signal (state reload: no duplicate check).
    Reload(u64),
    /// An explicit signal: `recovered: false` (or `truncated`), or an `unsubscribe` push with
    /// `resubscribe: true`.
    Signal(&'static str),
    /// A live publication dropped as already had (offset ≤ the reply's, §11.3): (offset, n).
    Ignored(u64, u64),
    /// A subscribe reply: (epoch, offset, recovered).
    Reply(String, u64, bool),
}

#[derive(Default)]
struct Stats {
    /// Clients subscribed to all their channels right now.
    subscribed: AtomicUsize,
    /// Deliveries and signals so far (the settle phase waits for it to stand still).
    events: AtomicU64,
    reconnects: AtomicU64,
    /// Resubscribes the client started itself (a live offset that did not follow).
    client_resubscribes: AtomicU64,
    not_recovered: AtomicU64,
    resubscribe_pushes: AtomicU64,
    /// Error replies to subscribe/history (108 while Redis is gone), retried.
    command_errors: AtomicU64,
}

struct ClientOut {
    logs: HashMap<String, Vec<Ev>>,
    /// The position of the first subscribe reply per channel: publications at or before it
    /// (same epoch), or acknowledged before it (another epoch), are not the client's to get.
    first: HashMap<String, (String, u64, Instant)>,
    anomalies: Vec<String>,
}

#[derive(PartialEq)]
enum SubState {
    Pending,
    /// Subscribed; `fresh` until the first live publication after the reply.
    Active {
        fresh: bool,
    },
    /// Waiting to retry a failed subscribe.
    Retry(Instant),
}

struct Chan {
    epoch: Option<String>,
    offset: u64,
    state: SubState,
    max_n: u64,
}

enum Pending {
    Sub(String),
    History(String, u32),
    Unsub,
}

struct ClientSpec {
    id: usize,
    home: usize,
    channels: Vec<String>,
    first_delay: Duration,
}

async fn run_client(
    spec: ClientSpec,
    ports: Arc<Vec<u16>>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
) -> ClientOut {
    let mut out = ClientOut {
        logs: spec
            .channels
            .iter()
            .map(|c| (c.clone(), Vec::new()))
            .collect(),
        first: HashMap::new(),
        anomalies: Vec::new(),
    };
    let mut chans: HashMap<String, Chan> = spec
        .channels
        .iter()
        .map(|c| {
            (
                c.clone(),
                Chan {
                    epoch: None,
                    offset: 0,
                    state: SubState::Pending,
                    max_n: 0,
                },
            )
        })
        .collect();
    let tok = token(&format!("u{}", spec.id), 24 * 3600, &[]);
    let mut node = spec.home % ports.len();
    tokio::time::sleep(spec.first_delay).await;
    let mut next_id: u64 = 1;
    let mut first_connect = true;
    while !stop.load(Ordering::Relaxed) {
        if !first_connect {
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let url = format!("ws://127.0.0.1:{}/ws?token={tok}", ports[node]);
        let ws = match tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        )
        .await
        {
            Ok(Ok((ws, _))) => ws,
            _ => {
                first_connect = false;
                node = (node + 1) % ports.len();
                let jitter = (spec.id as u64 * 7919) % 250;
                tokio::time::sleep(Duration::from_millis(50 + jitter)).await;
                continue;
            }
        };
        first_connect = false;
        let (mut tx, mut rx) = ws.split();
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut counted = false;
        for ch in chans.values_mut() {
            ch.state = SubState::Retry(Instant::now());
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut broken = false;
        while !broken && !stop.load(Ordering::Relaxed) {
            // Subscribes due (first, after a reconnect, or a retry after an error).
            let mut outgoing: Vec<Value> = Vec::new();
            for (name, ch) in chans.iter_mut() {
                if let SubState::Retry(at) = ch.state {
                    if at <= Instant::now() {
                        let id = next_id;
                        next_id += 1;
                        let mut sub = json!({"channel": name});
                        if let Some(e) = &ch.epoch {
                            sub["recover"] = json!({"offset": ch.offset, "epoch": e});
                        }
                        outgoing.push(json!({"id": id, "subscribe": sub}));
                        pending.insert(id, Pending::Sub(name.clone()));
                        ch.state = SubState::Pending;
                    }
                }
            }
            for f in outgoing {
                if tx.send(Message::Text(f.to_string())).await.is_err() {
                    broken = true;
                }
            }
            let all = chans
                .values()
                .all(|c| matches!(c.state, SubState::Active { .. }));
            if all != counted {
                if all {
                    stats.subscribed.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.subscribed.fetch_sub(1, Ordering::Relaxed);
                }
                counted = all;
            }
            let msg = tokio::select! {
                m = rx.next() => m,
                _ = tick.tick() => continue,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    broken = true;
                    continue;
                }
                Some(Ok(_)) => continue,
            };
            let v: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(_) => {
                    out.anomalies.push(format!("non-JSON: {text}"));
                    continue;
                }
            };
            let mut replies: Vec<Value> = Vec::new();
            if let Some(id) = v.get("id").and_then(Value::as_u64) {
                match pending.remove(&id) {
                    Some(Pending::Sub(name)) => {
                        let ch = chans.get_mut(&name).unwrap();
                        let log = out.logs.get_mut(&name).unwrap();
                        if v.get("error").is_some() {
                            stats.command_errors.fetch_add(1, Ordering::Relaxed);
                            ch.state = SubState::Retry(Instant::now() + Duration::from_millis(300));
                            continue;
                        }
                        let r = &v["result"];
                        let epoch = r["epoch"].as_str().unwrap_or_default().to_string();
                        let offset = r["offset"].as_u64().unwrap_or(0);
                        log.push(Ev::Reply(
                            epoch.clone(),
                            offset,
                            r["recovered"] == json!(true),
                        ));
                        if ch.epoch.is_some() {
                            if r["recovered"] == json!(true) {
                                let mut o = ch.offset;
                                for p in r["publications"].as_array().into_iter().flatten() {
                                    let po = p["offset"].as_u64().unwrap_or(0);
                                    if po != o + 1 {
                                        out.anomalies.push(format!(
                                            "{name}: recovered offset {po} after {o}"
                                        ));
                                    }
                                    o = po;
                                    let n = p["data"]["n"].as_u64().unwrap_or(0);
                                    ch.max_n = ch.max_n.max(n);
                                    log.push(Ev::Deliver(n));
                                    stats.events.fetch_add(1, Ordering::Relaxed);
                                }
                            } else {
                                let kind = if r["truncated"] == json!(true) {
                                    "truncated"
                                } else {
                                    "not_recovered"
                                };
                                log.push(Ev::Signal(kind));
                                stats.not_recovered.fetch_add(1, Ordering::Relaxed);
                                stats.events.fetch_add(1, Ordering::Relaxed);
                                // Reload the channel from history.
                                let hid = next_id;
                                next_id += 1;
                                replies.push(json!({"id": hid, "history": {"channel": name}}));
                                pending.insert(hid, Pending::History(name.clone(), 0));
                            }
                        } else {
                            out.first
                                .insert(name.clone(), (epoch.clone(), offset, Instant::now()));
                        }
                        ch.epoch = Some(epoch);
                        ch.offset = offset;
                        ch.state = SubState::Active { fresh: true };
                    }
                    Some(Pending::History(name, tries)) => {
                        let ch = chans.get_mut(&name).unwrap();
                        let log = out.logs.get_mut(&name).unwrap();
                        if v.get("error").is_some() {
                            stats.command_errors.fetch_add(1, Ordering::Relaxed);
                            if tries < 50 {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                let hid = next_id;
                                next_id += 1;
                                replies.push(json!({"id": hid, "history": {"channel": name}}));
                                pending.insert(hid, Pending::History(name.clone(), tries + 1));
                            } else {
                                out.anomalies
                                    .push(format!("{name}: history kept failing: {v}"));
                            }
                        } else {
                            for p in v["result"]["publications"].as_array().into_iter().flatten() {
                                let n = p["data"]["n"].as_u64().unwrap_or(0);
                                if n > ch.max_n {
                                    ch.max_n = n;
                                    log.push(Ev::Reload(n));
                                }
                            }
                        }
                    }
                    Some(Pending::Unsub) | None => {}
                }
            } else if let Some(name) = v["channel"].as_str() {
                let Some(ch) = chans.get_mut(name) else {
                    continue;
                };
                let log = out.logs.get_mut(name).unwrap();
                if let Some(p) = v.get("pub") {
                    let SubState::Active { fresh } = ch.state else {
                        continue; // not subscribed (yet / any more)
                    };
                    let o = p["offset"].as_u64().unwrap_or(0);
                    if o == ch.offset + 1 {
                        let n = p["data"]["n"].as_u64().unwrap_or(0);
                        ch.max_n = ch.max_n.max(n);
                        log.push(Ev::Deliver(n));
                        stats.events.fetch_add(1, Ordering::Relaxed);
                        ch.offset = o;
                        ch.state = SubState::Active { fresh: false };
                    } else if o <= ch.offset && fresh {
                        // Already in the reply (§11.3): ignore.
                        log.push(Ev::Ignored(o, p["data"]["n"].as_u64().unwrap_or(0)));
                    } else {
                        // A stream restart or a gap (§11.3): resubscribe with recover.
                        stats.client_resubscribes.fetch_add(1, Ordering::Relaxed);
                        let (uid, sid) = (next_id, next_id + 1);
                        next_id += 2;
                        replies.push(json!({"id": uid, "unsubscribe": {"channel": name}}));
                        pending.insert(uid, Pending::Unsub);
                        replies.push(json!({"id": sid, "subscribe": {"channel": name,
                            "recover": {"offset": ch.offset, "epoch": ch.epoch}}}));
                        pending.insert(sid, Pending::Sub(name.to_string()));
                        ch.state = SubState::Pending;
                    }
                } else if let Some(u) = v.get("unsubscribe") {
                    if u["resubscribe"] == json!(true) {
                        log.push(Ev::Signal("resubscribe"));
                        stats.resubscribe_pushes.fetch_add(1, Ordering::Relaxed);
                        stats.events.fetch_add(1, Ordering::Relaxed);
                        let sid = next_id;
                        next_id += 1;
                        replies.push(json!({"id": sid, "subscribe": {"channel": name,
                            "recover": {"offset": ch.offset, "epoch": ch.epoch}}}));
                        pending.insert(sid, Pending::Sub(name.to_string()));
                        ch.state = SubState::Pending;
                    } else {
                        out.anomalies.push(format!("unsubscribed: {v}"));
                    }
                }
            }
            for f in replies {
                if tx.send(Message::Text(f.to_string())).await.is_err() {
                    broken = true;
                }
            }
        }
        if counted {
            stats.subscribed.fetch_sub(1, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) {
            let _ = tx.send(Message::Close(None)).await;
            break;
        }
        // Reconnect elsewhere at once (a little jitter, as a real client's backoff), spread
        // over the other nodes.
        let n = ports.len();
        node = if n > 1 {
            (node + 1 + spec.id % (n - 1)) % n
        } else {
            0
        };
        let jitter = (spec.id as u64 * 7919) % 250;
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
    out
}

// ---- publishers ---------------------------------------------------------------------------------

#[derive(Default)]
struct PubOut {
    /// (n, epoch, offset, when acknowledged)
    acked: Vec<(u64, String, u64, Instant)>,
    /// When a publish was not acknowledged (5xx, 108, no answer).
    failed: Vec<Instant>,
}

async fn run_publisher(
    channel: String,
    live: Arc<Mutex<Vec<u16>>>,
    stop: Arc<AtomicBool>,
    every: Duration,
) -> PubOut {
    let http = http();
    let mut out = PubOut::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        let port = {
            let l = live.lock().unwrap();
            turn += 1;
            l[turn % l.len()]
        };
        let r = http
            .post(format!("http://127.0.0.1:{port}/api/publish"))
            .header("Authorization", format!("apikey {}", common::API_KEY))
            .timeout(Duration::from_secs(5))
            .json(&json!({"channel": channel, "data": {"n": n}}))
            .send()
            .await;
        let ok = match r {
            Ok(resp) if resp.status().as_u16() == 200 => resp.json::<Value>().await.ok(),
            _ => None,
        };
        match ok {
            Some(b) => out.acked.push((
                n,
                b["epoch"].as_str().unwrap_or_default().to_string(),
                b["offset"].as_u64().unwrap_or(0),
                Instant::now(),
            )),
            None => out.failed.push(Instant::now()),
        }
    }
    out
}

// ---- readiness and broker_up --------------------------------------------------------------------

struct Probe {
    /// (when, node index, ready)
    ready: Vec<(Instant, usize, bool)>,
    /// (when, node index, ferrocast_broker_up), once a second.
    broker_up: Vec<(Instant, usize, f64)>,
}

async fn run_probe(admins: Vec<u16>, stop: Arc<AtomicBool>) -> Probe {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let mut p = Probe {
        ready: Vec::new(),
        broker_up: Vec::new(),
    };
    let mut last_metrics = Instant::now() - Duration::from_secs(2);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let sample_metrics = now.duration_since(last_metrics) >= Duration::from_secs(1);
        if sample_metrics {
            last_metrics = now;
        }
        for (i, port) in admins.iter().enumerate() {
            let r = http
                .get(format!("http://127.0.0.1:{port}/health/ready"))
                .send()
                .await;
            match r {
                Ok(resp) => p.ready.push((now, i, resp.status().as_u16() == 200)),
                Err(_) => continue, // the node is gone
            }
            if sample_metrics {
                if let Ok(resp) = http
                    .get(format!("http://127.0.0.1:{port}/metrics"))
                    .send()
                    .await
                {
                    let text = resp.text().await.unwrap_or_default();
                    p.broker_up
                        .push((now, i, metric_in(&text, "ferrocast_broker_up")));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p
}

// ---- scenarios ----------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// ferrocast nodes up `before_secs` before Redis exists.
    StartBefore,
    /// ferrocast nodes and the Redis processes start together; the cluster forms meanwhile.
    StartWith,
    /// The cluster first (every other scenario starts so); no fault.
    StartAfter,
    MasterKill,
    MasterStop,
    ManualFailover,
    Reshard,
    RollingRestart,
    AllDown,
    NodeKill,
}

#[derive(Clone)]
struct Plan {
    nodes: usize,
    clients: usize,
    channels: usize,
    per_client: usize,
    every: Duration,
    stop_secs: u64,
    down_secs: u64,
    before_secs: u64,
    /// Initial connects per second.
    ramp: f64,
}

struct Row {
    name: String,
    fault: Fault,
    plan: Plan,
    /// Fault started → the last channel publishes again.
    publish_outage: Duration,
    /// The cluster healthy again (after the fault's end) → every live node ready.
    ready_after_healthy: Option<Duration>,
    /// Longest red stretch of any node (s).
    red: Duration,
    red_seen: bool,
    /// Fault → every client subscribed to all its channels again.
    resubscribed: Option<Duration>,
    acked: u64,
    failed: u64,
    expected: u64,
    delivered: u64,
    reloaded: u64,
    lost_signalled: u64,
    silent: u64,
    duplicates: u64,
    out_of_order: u64,
    not_recovered: u64,
    resubscribe_pushes: u64,
    client_resubscribes: u64,
    reconnects: u64,
    examples: Vec<String>,
    anomalies: Vec<String>,
    broker_up: Vec<(f64, usize, f64)>,
    wall: Duration,
}

/// Channels `feed:<i>-<k>`: the first half in slots 0..1000 (the slots the reshard moves, on the
/// first master), the rest spread over the other two masters.
fn channel_names(n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut k = 0u64;
    for i in 0..n {
        loop {
            k += 1;
            let name = format!("feed:{i}-{k}");
            let slot = slot_of(&name);
            let ok = if i < n / 2 {
                slot < 1000
            } else if i % 2 == 0 {
                (5461..10923).contains(&slot)
            } else {
                slot >= 10923
            };
            if ok {
                out.push(name);
                break;
            }
        }
    }
    out
}

type Shared = Arc<Mutex<(Cluster, HashSet<u16>)>>;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

async fn run_scenario(name: &str, fault: Fault, plan: &Plan) -> Row {
    let wall = Instant::now();
    let channels = channel_names(plan.channels);
    let mut cluster = Cluster::allocate();
    let urls = cluster.urls();
    let mut nodes: Vec<Node> = Vec::new();
    match fault {
        Fault::StartBefore => {
            for _ in 0..plan.nodes {
                nodes.push(Node::spawn(&urls));
            }
        }
        Fault::StartWith => {
            let u = urls.clone();
            let n = plan.nodes;
            let spawn = tokio::task::spawn_blocking(move || {
                (0..n).map(|_| Node::spawn(&u)).collect::<Vec<_>>()
            });
            cluster = blocking(move || {
                cluster.launch();
                cluster
            })
            .await;
            nodes = spawn.await.unwrap();
        }
        _ => {
            cluster = blocking(move || {
                cluster.launch();
                cluster
            })
            .await;
            for _ in 0..plan.nodes {
                nodes.push(Node::spawn(&urls));
            }
        }
    }
    let shared: Shared = Arc::new(Mutex::new((cluster, HashSet::new())));
    let ports: Arc<Vec<u16>> = Arc::new(nodes.iter().map(|n| n.public).collect());
    let live = Arc::new(Mutex::new((*ports).clone()));
    let stop_clients = Arc::new(AtomicBool::new(false));
    let stop_pubs = Arc::new(AtomicBool::new(false));
    let stop_probe = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let probe = tokio::spawn(run_probe(
        nodes.iter().map(|n| n.admin).collect(),
        stop_probe.clone(),
    ));

    // Clients: each on `per_client` channels, spread evenly.
    let mut clients = Vec::new();
    for id in 0..plan.clients {
        let chs: Vec<String> = (0..plan.per_client)
            .map(|j| channels[(id * plan.per_client + j) % channels.len()].clone())
            .collect();
        let spec = ClientSpec {
            id,
            home: id % plan.nodes,
            channels: chs,
            first_delay: Duration::from_secs_f64(id as f64 / plan.ramp),
        };
        clients.push(tokio::spawn(run_client(
            spec,
            ports.clone(),
            stop_clients.clone(),
            stats.clone(),
        )));
    }
    let start_publishers = |stop: Arc<AtomicBool>| {
        channels
            .iter()
            .map(|c| {
                tokio::spawn(run_publisher(
                    c.clone(),
                    live.clone(),
                    stop.clone(),
                    plan.every,
                ))
            })
            .collect::<Vec<_>>()
    };

    let mut t0 = Instant::now();
    let mut healthy_at: Option<Instant> = None;
    let publishers;
    if fault == Fault::StartBefore {
        // Publishing and subscribing all fail until the cluster exists.
        publishers = start_publishers(stop_pubs.clone());
        tokio::time::sleep(Duration::from_secs(plan.before_secs)).await;
        let s = shared.clone();
        blocking(move || s.lock().unwrap().0.launch()).await;
        healthy_at = Some(Instant::now());
        wait_subscribed(&stats, plan.clients, Duration::from_secs(60)).await;
    } else {
        wait_subscribed(&stats, plan.clients, Duration::from_secs(60)).await;
        if fault == Fault::StartWith {
            healthy_at = Some(wall);
        }
        publishers = start_publishers(stop_pubs.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
        t0 = Instant::now();
        let s = shared.clone();
        let p = plan.clone();
        let live2 = live.clone();
        match fault {
            Fault::StartWith | Fault::StartAfter | Fault::StartBefore => {}
            Fault::NodeKill => {
                live2.lock().unwrap().remove(0);
                nodes[0].kill();
            }
            _ => {
                healthy_at = Some(blocking(move || inject(fault, &p, &s)).await);
            }
        }
    }
    let resubscribed = if fault == Fault::NodeKill {
        wait_subscribed(&stats, plan.clients, Duration::from_secs(120)).await;
        Some(t0.elapsed())
    } else {
        None
    };
    if healthy_at.is_none() {
        healthy_at = Some(t0);
    }
    // Traffic after the fault, then quiet down.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_pubs.store(true, Ordering::Relaxed);
    let mut pub_outs = Vec::new();
    for p in publishers {
        pub_outs.push(p.await.unwrap());
    }
    // Settle: every client subscribed and nothing new for 1.5 s (15 s at most).
    let settle = Instant::now();
    let mut last = stats.events.load(Ordering::Relaxed);
    let mut still = Instant::now();
    while settle.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = stats.events.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_millis(1500)
            && stats.subscribed.load(Ordering::Relaxed) == plan.clients
        {
            break;
        }
    }
    stop_clients.store(true, Ordering::Relaxed);
    let mut outs = Vec::new();
    for c in clients {
        outs.push(c.await.unwrap());
    }
    stop_probe.store(true, Ordering::Relaxed);
    let probe = probe.await.unwrap();
    drop(nodes);
    drop(shared); // kills every Redis

    // ---- the verdict ----
    let mut row = Row {
        name: name.to_string(),
        fault,
        plan: plan.clone(),
        publish_outage: Duration::ZERO,
        ready_after_healthy: None,
        red: Duration::ZERO,
        red_seen: false,
        resubscribed,
        acked: 0,
        failed: 0,
        expected: 0,
        delivered: 0,
        reloaded: 0,
        lost_signalled: 0,
        silent: 0,
        duplicates: 0,
        out_of_order: 0,
        not_recovered: stats.not_recovered.load(Ordering::Relaxed),
        resubscribe_pushes: stats.resubscribe_pushes.load(Ordering::Relaxed),
        client_resubscribes: stats.client_resubscribes.load(Ordering::Relaxed),
        reconnects: stats.reconnects.load(Ordering::Relaxed),
        examples: Vec::new(),
        anomalies: Vec::new(),
        broker_up: probe
            .broker_up
            .iter()
            .map(|(t, i, v)| (t.duration_since(wall).as_secs_f64(), *i, *v))
            .collect(),
        wall: Duration::ZERO,
    };
    let acked_by_channel: HashMap<&String, &PubOut> =
        channels.iter().zip(pub_outs.iter()).collect();
    for p in &pub_outs {
        row.acked += p.acked.len() as u64;
        row.failed += p.failed.len() as u64;
        // The channel's outage: from t0 to the first ack after its last failure past t0.
        if let Some(last_fail) = p.failed.iter().filter(|t| **t >= t0).max() {
            let back = p
                .acked
                .iter()
                .map(|a| a.3)
                .find(|t| t > last_fail)
                .unwrap_or(*last_fail);
            row.publish_outage = row.publish_outage.max(back.duration_since(t0));
        }
    }
    for c in &outs {
        row.anomalies.extend(c.anomalies.iter().cloned());
        for (ch, evs) in &c.logs {
            let p = acked_by_channel[ch];
            let Some((e0, o0, t_first)) = c.first.get(ch) else {
                row.anomalies.push(format!("{ch}: never subscribed"));
                continue;
            };
            let acked: Vec<u64> = p
                .acked
                .iter()
                .filter(|(_, e, o, t)| if e == e0 { o > o0 } else { t > t_first })
                .map(|a| a.0)
                .collect();
            let acked_set: HashSet<u64> = acked.iter().copied().collect();
            row.expected += acked.len() as u64;
            let mut seen: HashSet<u64> = HashSet::new();
            let mut pos: HashMap<u64, usize> = HashMap::new();
            let mut reload: HashSet<u64> = HashSet::new();
            let mut signals: Vec<usize> = Vec::new();
            let mut last_acked = 0u64;
            // Every delivery position in order of n, to find a missing one's neighbours.
            let mut got: Vec<(u64, usize)> = Vec::new();
            for (i, ev) in evs.iter().enumerate() {
                match ev {
                    Ev::Deliver(n) => {
                        if !seen.insert(*n) {
                            row.duplicates += 1;
                            if row.examples.len() < 10 {
                                row.examples.push(format!("{ch}: n={n} delivered twice"));
                            }
                        }
                        if acked_set.contains(n) {
                            if *n < last_acked {
                                row.out_of_order += 1;
                            }
                            last_acked = last_acked.max(*n);
                        }
                        pos.insert(*n, i);
                        got.push((*n, i));
                    }
                    Ev::Reload(n) => {
                        reload.insert(*n);
                        got.push((*n, i));
                    }
                    Ev::Signal(_) => signals.push(i),
                    Ev::Ignored(..) | Ev::Reply(..) => {}
                }
            }
            got.sort_unstable();
            for n in acked {
                if seen.contains(&n) {
                    row.delivered += 1;
                } else if reload.contains(&n) {
                    row.reloaded += 1;
                } else {
                    // The last thing the client had before n, and the first after it.
                    let idx = got.partition_point(|(m, _)| *m < n);
                    let before = if idx > 0 { Some(got[idx - 1].1) } else { None };
                    let after = got.get(idx).map(|g| g.1);
                    let signalled = signals
                        .iter()
                        .any(|s| before.is_none_or(|b| *s > b) && after.is_none_or(|a| *s < a));
                    if signalled {
                        row.lost_signalled += 1;
                    } else {
                        row.silent += 1;
                        if row.examples.len() < 10 {
                            let a = p.acked.iter().find(|a| a.0 == n).unwrap();
                            row.examples.push(format!(
                                "{ch}: acknowledged n={n} ({} {}) missing without a signal (events {:?})",
                                a.1, a.2,
                                &evs[before.unwrap_or(0).saturating_sub(2)
                                    ..(after.unwrap_or(evs.len()) + 3).min(evs.len())]
                            ));
                        }
                    }
                }
            }
        }
    }
    // Readiness: red stretches, and green after the cluster was healthy again.
    let healthy = healthy_at.unwrap();
    let n_nodes = plan.nodes;
    let mut all_green_at: Option<Instant> = None;
    for i in 0..n_nodes {
        let series: Vec<&(Instant, usize, bool)> =
            probe.ready.iter().filter(|r| r.1 == i).collect();
        let mut red_from: Option<Instant> = None;
        for (t, _, ok) in &series {
            match (ok, red_from) {
                (false, None) => red_from = Some(*t),
                (true, Some(f)) => {
                    row.red = row.red.max(t.duration_since(f));
                    red_from = None;
                }
                _ => {}
            }
            if !ok && *t >= t0 {
                row.red_seen = true;
            }
        }
        if fault == Fault::StartBefore && series.iter().any(|r| !r.2) {
            row.red_seen = true;
        }
        if let Some(f) = red_from {
            row.red = row.red.max(series.last().unwrap().0.duration_since(f));
        }
        if fault == Fault::NodeKill && i == 0 {
            continue;
        }
        // First sample after `healthy` from which the node stays green.
        let after: Vec<&&(Instant, usize, bool)> =
            series.iter().filter(|r| r.0 >= healthy).collect();
        let mut green: Option<Instant> = None;
        for r in &after {
            if r.2 {
                green.get_or_insert(r.0);
            } else {
                green = None;
            }
        }
        match (green, all_green_at) {
            (Some(g), Some(a)) if g > a => all_green_at = Some(g),
            (Some(g), None) => all_green_at = Some(g),
            (None, _) => {
                row.anomalies
                    .push(format!("node {i}: not ready at the end"));
            }
            _ => {}
        }
    }
    row.ready_after_healthy = all_green_at.map(|g| g.saturating_duration_since(healthy));
    row.wall = wall.elapsed();
    row
}

async fn wait_subscribed(stats: &Stats, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while stats.subscribed.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} clients subscribed within {timeout:?}",
            stats.subscribed.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a Redis fault; returns when the cluster is healthy again (every answering node ok).
fn inject(fault: Fault, plan: &Plan, s: &Shared) -> Instant {
    let long = Duration::from_secs(60);
    let mut g = s.lock().unwrap();
    let (c, stopped) = &mut *g;
    let busy_master = master_of_slot(c, stopped, 0).expect("a master for slot 0");
    match fault {
        Fault::MasterKill => {
            c.node_mut(busy_master).kill();
            wait_until("failover after SIGKILL", long, || {
                master_of_slot(c, stopped, 0).is_some_and(|p| p != busy_master)
                    && cluster_ok(c, stopped)
            });
        }
        Fault::MasterStop => {
            c.node_mut(busy_master).signal(libc::SIGSTOP);
            stopped.insert(busy_master);
            std::thread::sleep(Duration::from_secs(plan.stop_secs));
            c.node_mut(busy_master).signal(libc::SIGCONT);
            stopped.remove(&busy_master);
            wait_until("cluster ok after SIGCONT", long, || {
                cluster_ok(c, stopped) && synced(busy_master)
            });
        }
        Fault::ManualFailover => {
            let nodes = cluster_nodes(c, stopped);
            let master_id = nodes.iter().find(|n| n.1 == busy_master).unwrap().0.clone();
            let replica = nodes
                .iter()
                .find(|n| n.2.contains("slave") && n.3 == master_id)
                .expect("a replica of the busy master")
                .1;
            let r = rcli(replica, &["CLUSTER", "FAILOVER"]);
            assert!(r.contains("OK"), "CLUSTER FAILOVER: {r}");
            wait_until("manual failover", long, || {
                master_of_slot(c, stopped, 0) == Some(replica) && cluster_ok(c, stopped)
            });
        }
        Fault::Reshard => {
            let nodes = cluster_nodes(c, stopped);
            let from = nodes.iter().find(|n| n.1 == busy_master).unwrap().0.clone();
            let to = nodes
                .iter()
                .find(|n| n.2.contains("master") && n.1 != busy_master)
                .unwrap()
                .0
                .clone();
            let out = Command::new("redis-cli")
                .args(["--cluster", "reshard", &format!("127.0.0.1:{busy_master}")])
                .args(["--cluster-from", &from, "--cluster-to", &to])
                .args(["--cluster-slots", "1000", "--cluster-yes"])
                .output()
                .expect("redis-cli --cluster reshard");
            assert!(
                out.status.success(),
                "reshard failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            wait_until("slots moved", long, || {
                master_of_slot(c, stopped, 0).is_some_and(|p| p != busy_master)
                    && cluster_ok(c, stopped)
            });
        }
        Fault::RollingRestart => {
            let ports: Vec<u16> = c.nodes.iter().map(|n| n.port).collect();
            for port in ports {
                let nodes = cluster_nodes(c, stopped);
                let was_master = nodes.iter().any(|n| n.1 == port && n.2.contains("master"));
                c.node_mut(port).kill();
                if was_master {
                    // Its replica takes over before it comes back (else it returns empty as
                    // the master of its slots).
                    wait_until("failover of a restarted master", long, || {
                        cluster_nodes(c, stopped)
                            .iter()
                            .any(|n| n.1 == port && n.2.contains("fail") && !n.2.contains("fail?"))
                            && cluster_ok(c, stopped)
                    });
                }
                c.node_mut(port).restart_keeping_identity();
                wait_until("restarted node rejoins and syncs", long, || {
                    synced(port) && cluster_ok(c, stopped)
                });
            }
        }
        Fault::AllDown => {
            for n in &mut c.nodes {
                n.kill();
            }
            std::thread::sleep(Duration::from_secs(plan.down_secs));
            for n in &mut c.nodes {
                n.restart_keeping_identity();
            }
            wait_until("cluster back after all down", long, || {
                cluster_ok(c, stopped) && c.nodes.iter().all(|n| synced(n.port))
            });
        }
        _ => unreachable!(),
    }
    Instant::now()
}

// ---- the report ---------------------------------------------------------------------------------

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| scenario | nodes × clients × channels/client | publish outage (s) | ready red (s, longest) | ready after Redis healthy (s) | clients resubscribed (s) | acknowledged (not ack.) | expected deliveries | delivered live/recovered | from history after signal | lost, signalled | silent gaps | duplicates | out of order | not recovered / resubscribe pushes / client resubscribes |\n",
    );
    s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} × {} × {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} |",
            r.name,
            r.plan.nodes,
            r.plan.clients,
            r.plan.per_client,
            secs(r.publish_outage),
            if r.red_seen || r.red > Duration::ZERO { secs(r.red) } else { "never".into() },
            r.ready_after_healthy.map(secs).unwrap_or("—".into()),
            r.resubscribed.map(secs).unwrap_or("—".into()),
            r.acked,
            r.failed,
            r.expected,
            r.delivered,
            r.reloaded,
            r.lost_signalled,
            r.silent,
            r.duplicates,
            r.out_of_order,
            r.not_recovered,
            r.resubscribe_pushes,
            r.client_resubscribes,
        );
    }
    s
}

/// `promtool test rules` on the real `ferrocast_broker_up` series (one sample per node every
/// 5 s, as a scrape would take them): at the end of each node's longest run of zeros and at the
/// last sample, FerrocastBrokerDown must be firing for exactly the nodes whose series had been 0
/// for its `for:` (1m) by then. Ok(summary) or Err(why).
fn alert_check(row: &Row) -> Result<String, String> {
    if Command::new("promtool").arg("--version").output().is_err() {
        return Ok("promtool not installed: alert check skipped".into());
    }
    let rules = common::repo_path("grafana/alerts.yml");
    let mut series = String::new();
    let mut per_node: Vec<(String, Vec<f64>)> = Vec::new();
    for node in 0..row.plan.nodes {
        let samples: Vec<f64> = row
            .broker_up
            .iter()
            .filter(|s| s.1 == node)
            .step_by(5)
            .map(|s| s.2)
            .collect();
        if samples.is_empty() {
            continue;
        }
        let vals: Vec<String> = samples.iter().map(|v| format!("{v}")).collect();
        let inst = format!("n{node}");
        let _ = writeln!(
            series,
            "      - series: 'ferrocast_broker_up{{job=\"ferrocast\",instance=\"{inst}\"}}'\n        values: '{}'",
            vals.join(" ")
        );
        per_node.push((inst, samples));
    }
    // Zero since which sample, at sample i (None: not 0 at i).
    let zero_since = |s: &[f64], i: usize| -> Option<usize> {
        if s.get(i).copied() != Some(0.0) {
            return None;
        }
        let mut j = i;
        while j > 0 && s[j - 1] == 0.0 {
            j -= 1;
        }
        Some(j)
    };
    let mut evals: Vec<usize> = Vec::new();
    let mut out = String::new();
    for (inst, s) in &per_node {
        let (mut best, mut best_end) = (0usize, 0usize);
        for i in 0..s.len() {
            if let Some(j) = zero_since(s, i) {
                if i + 1 - j > best {
                    best = i + 1 - j;
                    best_end = i;
                }
            }
        }
        if best > 0 {
            evals.push(best_end);
            let down_s = (best - 1) * 5;
            let _ = writeln!(
                out,
                "node {inst}: broker_up 0 for {down_s} s (scraped every 5 s): FerrocastBrokerDown {}",
                if down_s >= 60 { "fires" } else { "pending only (for: 1m)" }
            );
        }
        evals.push(s.len() - 1);
    }
    if out.is_empty() {
        return Ok(format!("{}: broker_up never 0", row.name));
    }
    evals.sort_unstable();
    evals.dedup();
    let mut tests = String::new();
    for i in evals {
        let mut alerts = String::new();
        for (inst, s) in &per_node {
            if zero_since(s, i).is_some_and(|j| (i - j) * 5 >= 60) {
                let _ = write!(
                    alerts,
                    "\n          - exp_labels: {{severity: critical, job: ferrocast, instance: {inst}}}\n            exp_annotations:\n              summary: \"ferrocast node {inst} cannot reach its broker\"\n              description: \"ferrocast_broker_up has been 0 on {inst} for more than 1 minute.\"\n              runbook: \"docs/operations.md#ferrocastbrokerdown\""
                );
            }
        }
        if alerts.is_empty() {
            alerts = " []".into();
        }
        let _ = writeln!(
            tests,
            "      - eval_time: {}s\n        alertname: FerrocastBrokerDown\n        exp_alerts:{alerts}",
            i * 5
        );
    }
    let file = format!(
        "rule_files:\n  - {}\nevaluation_interval: 5s\ntests:\n  - interval: 5s\n    input_series:\n{series}    alert_rule_test:\n{tests}",
        rules.display()
    );
    let dir = common::repo_path("target/chaos");
    std::fs::create_dir_all(&dir).unwrap();
    let slug: String = row
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path = dir.join(format!("alerts-{slug}.yml"));
    std::fs::write(&path, file).unwrap();
    let r = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    if !r.status.success() {
        return Err(format!(
            "promtool test rules {}: {}{}",
            path.display(),
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        ));
    }
    Ok(format!(
        "{out}promtool test rules {}: SUCCESS",
        path.display()
    ))
}

fn verdict(rows: &[Row], title: &str) {
    let t = table(rows);
    let mut report = format!("{title}\n\n{t}\n");
    let mut failures = Vec::new();
    for r in rows {
        let _ = writeln!(
            report,
            "{}: wall {} s, reconnects {}, publishes failed {}",
            r.name,
            secs(r.wall),
            r.reconnects,
            r.failed
        );
        for e in &r.examples {
            let _ = writeln!(report, "  {e}");
        }
        for a in r.anomalies.iter().take(10) {
            let _ = writeln!(report, "  anomaly: {a}");
        }
        if r.silent > 0 || r.duplicates > 0 || r.out_of_order > 0 {
            failures.push(format!(
                "{}: {} silent gaps, {} duplicates, {} out of order",
                r.name, r.silent, r.duplicates, r.out_of_order
            ));
        }
        if !r.anomalies.is_empty() {
            failures.push(format!("{}: {} anomalies", r.name, r.anomalies.len()));
        }
        match r.ready_after_healthy {
            Some(d) if d <= Duration::from_secs(5) => {}
            other => failures.push(format!(
                "{}: ready {other:?} after the cluster was healthy (≤ 5 s)",
                r.name
            )),
        }
        if matches!(r.fault, Fault::AllDown | Fault::StartBefore) {
            if !r.red_seen {
                failures.push(format!("{}: /health/ready never went red", r.name));
            }
            match alert_check(r) {
                Ok(a) => {
                    let _ = writeln!(report, "{a}");
                }
                Err(e) => {
                    let _ = writeln!(report, "alert check FAILED: {e}");
                    failures.push(format!("{}: alert check failed", r.name));
                }
            }
        }
    }
    let dir = common::repo_path("target/chaos");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("results.md"), &report).unwrap();
    println!("{report}");
    assert!(
        failures.is_empty(),
        "chaos invariants broken:\n{}",
        failures.join("\n")
    );
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid, initialized struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn selected(name: &str) -> bool {
    match std::env::var("CHAOS_ONLY") {
        Ok(only) if !only.is_empty() => only.split(',').any(|o| name.contains(o.trim())),
        _ => true,
    }
}

/// The short form, in `make test` (`make chaos-short`): master SIGKILL, master SIGSTOP for 6 s,
/// all of Redis down for 5 s; 2 nodes, 60 clients on 12 channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn chaos_short() {
    raise_nofile();
    let plan = Plan {
        nodes: 2,
        clients: 60,
        channels: 12,
        per_client: 3,
        every: Duration::from_millis(100),
        stop_secs: 6,
        down_secs: 5,
        before_secs: 3,
        ramp: 500.0,
    };
    let mut rows = Vec::new();
    for (name, fault) in [
        ("master SIGKILL", Fault::MasterKill),
        ("master SIGSTOP 6 s", Fault::MasterStop),
        ("all Redis down 5 s", Fault::AllDown),
    ] {
        if selected(name) {
            rows.push(run_scenario(name, fault, &plan).await);
        }
    }
    verdict(&rows, "chaos (short)");
}

/// The full suite (`make chaos`, release binaries): every scenario of issue 11 item 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn chaos_full() {
    raise_nofile();
    let plan = Plan {
        nodes: 3,
        clients: 300,
        channels: 24,
        per_client: 4,
        every: Duration::from_millis(100),
        stop_secs: 15,
        down_secs: 30,
        before_secs: 70,
        ramp: 1000.0,
    };
    let big = Plan {
        clients: 10_000,
        per_client: 1,
        every: Duration::from_millis(250),
        ramp: 2000.0,
        ..plan.clone()
    };
    let mut rows = Vec::new();
    for (name, fault, p) in [
        ("nodes before the cluster (70 s)", Fault::StartBefore, &plan),
        ("nodes with the cluster", Fault::StartWith, &plan),
        ("nodes after the cluster (steady)", Fault::StartAfter, &plan),
        ("master SIGKILL", Fault::MasterKill, &plan),
        ("master SIGSTOP 15 s", Fault::MasterStop, &plan),
        ("CLUSTER FAILOVER", Fault::ManualFailover, &plan),
        ("reshard busy slots", Fault::Reshard, &plan),
        ("rolling restart of all 6", Fault::RollingRestart, &plan),
        ("all Redis down 30 s", Fault::AllDown, &plan),
        ("ferrocast node SIGKILL, 10k clients", Fault::NodeKill, &big),
    ] {
        if selected(name) {
            rows.push(run_scenario(name, fault, p).await);
        }
    }
    verdict(&rows, "chaos (full)");
}
